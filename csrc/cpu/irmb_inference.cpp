// irmb_inference: one whole iRMB forward (inference, BatchNorms folded) in one call --
// LayerNorm over channels (optional), qk GEMM + strided-window attention (optional), then the
// fused expansion / depthwise / projection body (expand_dwconv_act.cpp) with the residual, or
// (squeeze-excite: the stem block) the body up to the depthwise pass, SE, and the projection.
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
  // floats
  double eps, scale;
};
constexpr int64_t kTensors = 17, kInts = 6, kFloats = 2;

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
                   x[0], x[1]};
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

// qk = y W_qk^T + b_qk by the GEMM (few pixels, batch 1: the output columns split over the
// threads, else the rows), then the window attention of q and k (channel slices of qk, no
// copy) on v = y.
at::Tensor qk_attention(const BlockArgs& a, const at::Tensor& y) {
  const int64_t B = y.size(0), C = y.size(1), H = y.size(2), W = y.size(3);
  TORCH_CHECK(a.w_qk->numel() == 2 * C * C, "w_qk must be (2C, C, 1, 1)");
  const int64_t M = B * H * W, N = 2 * C;
  const auto y2 = nhwc_view(y).reshape({M, C}).contiguous();
  const auto pqk = packed_or_pack(*a.w_qk, a.pw_qk);
  const bool bias = has(a.b_qk);
  const auto bq = bias ? a.b_qk->contiguous() : at::Tensor();
  at::Tensor qk = new_empty({M, N}, y2.options());
  const int64_t nthreads = at::get_num_threads();
  const bool cols = M < 512 * nthreads;
  AT_DISPATCH_FLOATING_TYPES(y2.scalar_type(), "emo_qk", [&] {
    using T = scalar_t;
    using V = Vectorized<T>;
    const T* bp = bias ? bq.data_ptr<T>() : nullptr;
    T* o = qk.data_ptr<T>();
    auto epi = [&](int64_t i, int64_t n, V v, int64_t cnt) {
      bias_act<T>(v, bp, n, cnt, ACT_NONE).store(o + i * N + n, cnt);
    };
    run_parts(nthreads, [&](int64_t t) {
      if (cols) {
        auto [n0, n1] = split_range(0, N, nthreads, t, V::size());
        if (n0 < n1) emo_gemm::gemm<T>(y2.data_ptr<T>(), C, pqk.data_ptr<T>(), C, 0, M, n0, n1, epi);
      } else {
        auto [m0, m1] = split_range(0, M, nthreads, t);
        if (m0 < m1) emo_gemm::gemm<T>(y2.data_ptr<T>(), C, pqk.data_ptr<T>(), C, m0, m1, 0, N, epi);
      }
    });
  });
  auto qk4 = qk.view({B, H, W, 2 * C}).permute({0, 3, 1, 2});
  OptT kpad;
  if (bias) kpad = a.b_qk->narrow(0, C, C);
  return window_attention(qk4.narrow(1, 0, C), qk4.narrow(1, C, C), y, kpad, a.head_dim,
                          a.window_size, a.scale);
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
  if (has(a.w_qk)) y = qk_attention(a, y);
  OptT res;
  if (a.skip) res = x;
  if (!has(a.se_w1))
    return expand_dwconv_act_proj(y, a.w_exp, a.b_exp, a.w_dw, a.b_dw, a.w_proj, res, a.act,
                                  a.stride, a.skip, budget, split, nullptr, pre);
  // squeeze-excite between the depthwise pass and the projection (no skip: checked in Python),
  // per image inside the fused body: its channel scale is folded into the projection weights
  const int64_t Cm = a.w_dw.size(0);
  SEArgs se{a.se_w1->reshape({a.se_w1->size(0), Cm}).contiguous(), a.se_b1->contiguous(),
            a.se_w2->reshape({Cm, a.se_w1->size(0)}).contiguous(), a.se_b2->contiguous(),
            a.se_act};
  return expand_dwconv_act_proj(y, a.w_exp, a.b_exp, a.w_dw, a.b_dw, a.w_proj, c10::nullopt,
                                a.act, a.stride, false, budget, split, &se, pre);
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
