// irmb_inference: one whole iRMB forward (inference, BatchNorms folded) in one call --
// LayerNorm over channels (optional), qk GEMM + window attention (optional), then the
// fused expansion / depthwise / projection body (expand_dwconv_act.cpp) with the residual, or
// (squeeze-excite: the stem block) the body up to the depthwise pass, SE, and the projection.
// EMOv2's hybrid attention block (attn_pre = false): the qk and expansion GEMMs, the attention
// over the expanded v (padded values act(b_exp)), then the body without its expansion.
// irmb_chain: many blocks in one call, with their weights prepared once by the caller. No
// Python between the steps.
//
// A block's arguments cross from Python in three flat lists, the layout of BlockArgs below
// (one block: irmb_inference; block after block: irmb_chain). The one Python function that
// builds them is emo_kernels/backends/cpu/'s _block_lists; unpack_block here is the one reader.
#include "common.h"
#include "gemm.h"

namespace EMO_CPU_NS {

// One block's arguments. In the lists, block i's entries start at i * kTensors (tensors, each
// may be None), i * kInts, i * kFloats, in the order of the fields below.
struct BlockArgs {
  // tensors
  OptT ln_weight, ln_bias;          // LayerNorm over channels (LN2d), or None
  OptT w_qk, b_qk;                  // (2C, C[, 1, 1]) qk conv: attention when given
  OptT w_exp, b_exp;                // (Cmid, C[, 1, 1]) expansion, or None (identity)
  at::Tensor w_dw;                  // (Cmid, 1, k, k), BatchNorm folded
  OptT b_dw;                        // (Cmid)
  at::Tensor w_proj;                // (Cout, Cmid[, 1, 1])
  OptT se_w1, se_b1, se_w2, se_b2;  // squeeze-excite (reduce, expand), or None
  OptT pw_qk, pw_exp, pw_dw, pw_proj;  // prepared weights (pack_weight; w_dw as (k*k, Cmid))
  // ints
  int64_t head_dim, window_size, act, stride;
  bool skip;
  int64_t se_act;
  int64_t partition;  // window_attention.cpp's code: 0 remote, 1 close, 2 hybrid
  bool attn_pre;      // attention before the expansion (EMO v1) or after it (EMOv2)
  // floats
  double eps, scale;
};
constexpr int64_t kTensors = 17, kInts = 8, kFloats = 2;

static BlockArgs unpack_block(const std::vector<OptT>& t, at::IntArrayRef n,
                              at::ArrayRef<double> f, int64_t i) {
  TORCH_CHECK(static_cast<int64_t>(t.size()) >= (i + 1) * kTensors &&
                  static_cast<int64_t>(n.size()) >= (i + 1) * kInts &&
                  static_cast<int64_t>(f.size()) >= (i + 1) * kFloats,
              "irmb: block ", i, " is missing from the argument lists (", kTensors, " tensors, ",
              kInts, " ints, ", kFloats, " floats per block)");
  const OptT* a = t.data() + i * kTensors;
  const int64_t* m = n.data() + i * kInts;
  const double* x = f.data() + i * kFloats;
  TORCH_CHECK(has(a[6]) && has(a[8]), "irmb: w_dw and w_proj are required");
  return BlockArgs{a[0], a[1], a[2], a[3], a[4], a[5], *a[6], a[7], *a[8], a[9], a[10], a[11],
                   a[12], a[13], a[14], a[15], a[16], m[0], m[1], m[2], m[3], m[4] != 0, m[5],
                   m[6], m[7] != 0, x[0], x[1]};
}

namespace {

// LayerNorm over the channels of every pixel of a channels_last (B, C, H, W) tensor: per
// pixel, mean and variance (two passes over its C contiguous values, in vectors), then
// (x - mean) * rstd * w + b. Reads x once, writes y once; rows split over the threads when
// there are enough of them to pay for a parallel region.
at::Tensor layer_norm_nhwc(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                           double eps) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), M = B * H * W;
  auto out = new_empty({B, H, W, C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "emo_layer_norm", [&] {
    using T = scalar_t;
    using V = Vectorized<T>;
    constexpr int64_t VS = V::size();
    const T* xp = x.data_ptr<T>();
    const T* wp = w.data_ptr<T>();
    const T* bp = b.defined() ? b.data_ptr<T>() : nullptr;
    T* op = out.data_ptr<T>();
    auto rows = [&](int64_t r0, int64_t r1) {  // no tensor ops: no grad/inference mode needed
      for (int64_t r = r0; r < r1; ++r) {
        const T* xr = xp + r * C;
        T* yr = op + r * C;
        V s(T(0));
        for (int64_t c = 0; c < C; c += VS) s = s + V::loadu(xr + c, std::min<int64_t>(VS, C - c));
        const T mean = at::vec::vec_reduce_all<T>([](V& a, V& b) { return a + b; }, s) / C;
        V q(T(0));
        for (int64_t c = 0; c < C; c += VS) {
          const int64_t cnt = std::min<int64_t>(VS, C - c);
          const V d = V::loadu(xr + c, cnt) - V(mean);
          q = q + V::set(V(T(0)), d * d, cnt);  // lanes past C stay 0
        }
        const T var = at::vec::vec_reduce_all<T>([](V& a, V& b) { return a + b; }, q) / C;
        const V rstd(T(1) / std::sqrt(var + static_cast<T>(eps))), mv(mean);
        for (int64_t c = 0; c < C; c += VS) {
          const int64_t cnt = std::min<int64_t>(VS, C - c);
          V v = (V::loadu(xr + c, cnt) - mv) * rstd * V::loadu(wp + c, cnt);
          if (bp) v = v + V::loadu(bp + c, cnt);
          v.store(yr + c, cnt);
        }
      }
    };
    at::parallel_for(0, M, 256, rows);
  });
  return out.permute({0, 3, 1, 2});
}

// act(y W^T + b) for a channels_last (B, K, H, W) y and a (N, K[, 1, 1]) weight w (packed:
// pw, or packed now), as a channels_last (B, N, H, W) tensor, by the GEMM (few pixels, batch 1:
// the output columns split over the threads, else the rows). Reads y once, writes N per pixel.
at::Tensor pointwise_nhwc(const at::Tensor& y, const at::Tensor& w, const OptT& pw,
                          const OptT& b, int64_t act) {
  const int64_t B = y.size(0), K = y.size(1), H = y.size(2), W = y.size(3);
  const int64_t M = B * H * W, N = w.size(0);
  TORCH_CHECK(w.numel() == N * K, "a 1x1 weight must be (N, K[, 1, 1]) with K = ", K);
  const auto y2 = nhwc_view(y).reshape({M, K}).contiguous();
  const auto pk = packed_or_pack(w, pw);
  const bool bias = has(b);
  const auto bc = bias ? b->contiguous() : at::Tensor();
  at::Tensor out = new_empty({M, N}, y2.options());
  const int64_t nthreads = at::get_num_threads();
  const bool cols = M < 512 * nthreads;
  AT_DISPATCH_FLOATING_TYPES(y2.scalar_type(), "emo_pointwise", [&] {
    using T = scalar_t;
    using V = Vectorized<T>;
    const T* bp = bias ? bc.data_ptr<T>() : nullptr;
    T* o = out.data_ptr<T>();
    auto epi = [&](int64_t i, int64_t n, V v, int64_t cnt) {
      bias_act<T>(v, bp, n, cnt, act).store(o + i * N + n, cnt);
    };
    run_parts(nthreads, [&](int64_t t) {
      if (cols) {
        auto [n0, n1] = split_range(0, N, nthreads, t, V::size());
        if (n0 < n1) emo_gemm::gemm<T>(y2.data_ptr<T>(), K, pk.data_ptr<T>(), K, 0, M, n0, n1, epi);
      } else {
        auto [m0, m1] = split_range(0, M, nthreads, t);
        if (m0 < m1) emo_gemm::gemm<T>(y2.data_ptr<T>(), K, pk.data_ptr<T>(), K, m0, m1, 0, N, epi);
      }
    });
  });
  return out.view({B, H, W, N}).permute({0, 3, 1, 2});
}

// act(b) for a bias vector b: the value of a zero-padded pixel after act(W x + b).
at::Tensor bias_activation(const at::Tensor& b, int64_t act) {
  const auto bc = b.contiguous();
  const int64_t n = bc.numel();
  auto out = new_empty({n}, bc.options());
  AT_DISPATCH_FLOATING_TYPES(bc.scalar_type(), "emo_bias_act", [&] {
    using T = scalar_t;
    using V = Vectorized<T>;
    const T* bp = bc.data_ptr<T>();
    T* o = out.data_ptr<T>();
    for (int64_t i = 0; i < n; i += V::size()) {
      const int64_t cnt = std::min<int64_t>(V::size(), n - i);
      bias_act<T>(V(T(0)), bp, i, cnt, act).store(o + i, cnt);
    }
  });
  return out;
}

// The attention of a block on its (normed) input y: qk = y W_qk^T + b_qk, q and k channel
// slices of it (no copy), keys of padded pixels b_qk[C:]. attn_pre (EMO v1): the values are y;
// else (EMOv2) v = act(y W_exp^T + b_exp), padded values act(b_exp), and the caller's fused
// body has no expansion left to do.
at::Tensor block_attention(const BlockArgs& a, const at::Tensor& y) {
  const int64_t C = y.size(1);
  TORCH_CHECK(a.w_qk->numel() == 2 * C * C, "w_qk must be (2C, C, 1, 1)");
  const auto qk = pointwise_nhwc(y, *a.w_qk, a.pw_qk, a.b_qk, ACT_NONE);
  OptT kpad, vpad;
  if (has(a.b_qk)) kpad = a.b_qk->narrow(0, C, C);
  at::Tensor v = y;
  if (!a.attn_pre && has(a.w_exp)) {
    v = pointwise_nhwc(y, *a.w_exp, a.pw_exp, a.b_exp, a.act);
    if (has(a.b_exp)) vpad = bias_activation(*a.b_exp, a.act);
  }
  return window_attention(qk.narrow(1, 0, C), qk.narrow(1, C, C), v, kpad, a.head_dim,
                          a.window_size, a.scale, vpad, a.partition);
}

at::Tensor irmb_block(const at::Tensor& x_in, const BlockArgs& a, int64_t budget,
                      int64_t split) {
  TORCH_CHECK(x_in.device().is_cpu(), "emo_kernels cpu: expected CPU tensors");
  const Prepared pre{a.pw_exp.value_or(at::Tensor()), a.pw_dw.value_or(at::Tensor()),
                     a.pw_proj.value_or(at::Tensor())};
  TORCH_CHECK(x_in.dim() == 4, "x must be (B, C, H, W)");
  const int64_t C = x_in.size(1);
  auto x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor y = x;
  if (has(a.ln_weight)) {  // LN2d: LayerNorm over the channels of each pixel
    TORCH_CHECK(a.ln_weight->numel() == C && (!has(a.ln_bias) || a.ln_bias->numel() == C),
                "ln_weight / ln_bias must have C elements");
    y = layer_norm_nhwc(x, a.ln_weight->contiguous(),
                        has(a.ln_bias) ? a.ln_bias->contiguous() : at::Tensor(), a.eps);
  }
  OptT w_exp = a.w_exp, b_exp = a.b_exp;
  int64_t act = a.act;
  at::Tensor pw_exp = pre.exp;
  if (has(a.w_qk)) {
    y = block_attention(a, y);
    if (!a.attn_pre) {  // the expansion is done: the body runs the depthwise pass on y
      w_exp = b_exp = c10::nullopt;
      act = ACT_NONE;
      pw_exp = at::Tensor();
    }
  }
  const Prepared body{pw_exp, pre.dw, pre.proj};
  OptT res;
  if (a.skip) res = x;
  if (!has(a.se_w1))
    return expand_dwconv_act_proj(y, w_exp, b_exp, a.w_dw, a.b_dw, a.w_proj, res, act, a.stride,
                                  a.skip, budget, split, nullptr, body);
  // squeeze-excite between the depthwise pass and the projection (no skip: checked in Python),
  // per image inside the fused body: its channel scale is folded into the projection weights
  const int64_t Cm = a.w_dw.size(0);
  SEArgs se{a.se_w1->reshape({a.se_w1->size(0), Cm}).contiguous(), a.se_b1->contiguous(),
            a.se_w2->reshape({Cm, a.se_w1->size(0)}).contiguous(), a.se_b2->contiguous(),
            a.se_act};
  return expand_dwconv_act_proj(y, w_exp, b_exp, a.w_dw, a.b_dw, a.w_proj, c10::nullopt, act,
                                a.stride, false, budget, split, &se, body);
}

}  // namespace

at::Tensor irmb_inference(const at::Tensor& x, const std::vector<OptT>& tensors,
                          at::IntArrayRef ints, at::ArrayRef<double> floats, int64_t budget,
                          int64_t split) {
  return irmb_block(x, unpack_block(tensors, ints, floats, 0), budget, split);
}

// The blocks one after the other; returns the outputs of the blocks listed in `outputs`
// (indices, increasing).
std::vector<at::Tensor> irmb_chain(const at::Tensor& x, const std::vector<OptT>& tensors,
                                   at::IntArrayRef ints, at::ArrayRef<double> floats,
                                   at::IntArrayRef outputs, int64_t budget, int64_t split) {
  const int64_t nblocks = static_cast<int64_t>(tensors.size()) / kTensors;
  TORCH_CHECK(static_cast<int64_t>(tensors.size()) == nblocks * kTensors &&
                  static_cast<int64_t>(ints.size()) == nblocks * kInts &&
                  static_cast<int64_t>(floats.size()) == nblocks * kFloats,
              "irmb_chain: the argument lists must hold whole blocks");
  std::vector<at::Tensor> outs;
  at::Tensor y = x;
  size_t next = 0;
  for (int64_t i = 0; i < nblocks; ++i) {
    y = irmb_block(y, unpack_block(tensors, ints, floats, i), budget, split);
    if (next < outputs.size() && outputs[next] == i) {
      outs.push_back(y);
      ++next;
    }
  }
  TORCH_CHECK(next == outputs.size(), "irmb_chain: output indices must be increasing block indices");
  return outs;
}

}  // namespace EMO_CPU_NS
