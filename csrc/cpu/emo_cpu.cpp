// CPU backend of emo_kernels (inference only): NHWC kernels for EMO's iRMB hot path.
//
//   expand_dwconv_act: v = act(x @ W^T + b)  (one MKL/oneDNN GEMM on the NHWC view, then an
//                      in-place vectorized activation), then one pass that computes the
//                      depthwise k x k conv + bias + SiLU (+ v) per output row, vectorized over
//                      channels, writing z once.
//   window_attention:  EMO's strided-window attention read straight from q/k/v of any strides
//                      (NHWC channel slices of the qk conv output need no copy), one task per
//                      (image, window, head), output written once in NHWC.
// Outputs are (B, C, H, W) tensors in channels_last memory format.
//
// Vector width comes from the build: setup.py / emo_kernels/_cpu.py compile this file with
// CPU_CAPABILITY=AVX512, AVX2 or DEFAULT (see isa()); the Python side refuses to run a build
// whose ISA the present CPU lacks.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#define EMO_STR2(x) #x
#define EMO_STR(x) EMO_STR2(x)

namespace {

using at::vec::Vectorized;

enum Act : int64_t { ACT_NONE = 0, ACT_SILU = 1, ACT_GELU = 2 };

// exp: float uses ATen's inline polynomial exp_u20 (max ~20 ulp, ~2e-6 relative: well inside
// the float32 tolerance, and no call into Sleef); double keeps the 1-ulp Sleef exp.
template <typename T>
inline Vectorized<T> vexp(const Vectorized<T>& x) { return x.exp(); }
template <>
inline Vectorized<float> vexp(const Vectorized<float>& x) { return x.exp_u20(); }

// erf: float uses the Abramowitz-Stegun 7.1.26 form (abs error 1.5e-7, the same formula as
// ATen's vectorized erf) with vexp; double keeps ATen's erf.
template <typename T>
inline Vectorized<T> verf(const Vectorized<T>& x) { return x.erf(); }
template <>
inline Vectorized<float> verf(const Vectorized<float>& x) {
  using V = Vectorized<float>;
  const V one(1.f), p(0.3275911f), p1(0.254829592f), p2(-0.284496736f), p3(1.421413741f),
      p4(-1.453152027f), p5(1.061405429f);
  const V a = x.abs();
  const V t = one / at::vec::fmadd(p, a, one);
  V r = at::vec::fmadd(p5, t, p4);
  r = at::vec::fmadd(r, t, p3);
  r = at::vec::fmadd(r, t, p2);
  r = at::vec::fmadd(r, t, p1);
  const V e = vexp((x * x).neg());
  const V y = one - r * t * e;
  return V::blendv(y, y.neg(), x < V(0.f));
}

template <typename T>
inline Vectorized<T> vsilu(const Vectorized<T>& x) {
  const Vectorized<T> one(T(1));
  return x / (one + vexp(x.neg()));
}

template <typename T>
inline Vectorized<T> vgelu(const Vectorized<T>& x) {
  const Vectorized<T> half(T(0.5)), one(T(1)), rsqrt2(T(M_SQRT1_2));
  return x * half * (one + verf(x * rsqrt2));
}

template <typename T>
inline T ssilu(T x) { return x / (T(1) + std::exp(-x)); }
template <typename T>
inline T sgelu(T x) { return x * T(0.5) * (T(1) + std::erf(x * T(M_SQRT1_2))); }

// In place over a (rows, C) buffer: p = act(p + bias), in parallel over rows.
template <typename T>
void bias_act_inplace(T* p, int64_t rows, int64_t C, const T* bias, int64_t act) {
  if (act == ACT_NONE && bias == nullptr) return;
  using V = Vectorized<T>;
  constexpr int64_t VS = V::size();
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / C), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      T* row = p + r * C;
      for (int64_t c = 0; c < C; c += VS) {
        const int64_t cnt = std::min<int64_t>(VS, C - c);
        V x = V::loadu(row + c, cnt);
        if (bias) x = x + V::loadu(bias + c, cnt);
        if (act == ACT_SILU) x = vsilu(x);
        else if (act == ACT_GELU) x = vgelu(x);
        x.store(row + c, cnt);
      }
    }
  });
}

// ---- depthwise conv + bias + SiLU (+ skip) on NHWC ---------------------------------------
// One output row (b, oh): row pointers for the K input rows (a zero row outside the map),
// interior columns with a fully unrolled K x K body, edge columns with bounds checks.
template <typename T, int K>
void dw_row(const T* const* rows, const T* w /* (K*K, C) */, const T* bias, const T* vskip,
            T* out, int64_t W, int64_t Wo, int64_t C, int64_t stride, int64_t pad) {
  using V = Vectorized<T>;
  constexpr int64_t VS = V::size();
  // interior: ow with ow*stride - pad >= 0 and ow*stride - pad + K - 1 <= W - 1
  int64_t lo = (pad + stride - 1) / stride;
  int64_t hi = (W - K + pad) >= 0 ? (W - K + pad) / stride + 1 : 0;  // exclusive
  lo = std::min(lo, Wo);
  hi = std::max(std::min(hi, Wo), lo);
  for (int64_t c = 0; c < C; c += VS) {
    const int64_t cnt = std::min<int64_t>(VS, C - c);
    V wv[K * K];
    for (int t = 0; t < K * K; ++t) wv[t] = V::loadu(w + t * C + c, cnt);
    const V bv = bias ? V::loadu(bias + c, cnt) : V(T(0));
    auto finish = [&](V acc, int64_t ow) {
      V d = vsilu(acc);
      if (vskip) d = d + V::loadu(vskip + ow * C + c, cnt);
      d.store(out + ow * C + c, cnt);
    };
    auto edge = [&](int64_t ow) {
      V acc = bv;
      const int64_t iw0 = ow * stride - pad;
      for (int kh = 0; kh < K; ++kh)
        for (int kw = 0; kw < K; ++kw) {
          const int64_t iw = iw0 + kw;
          if (iw < 0 || iw >= W) continue;
          acc = at::vec::fmadd(V::loadu(rows[kh] + iw * C + c, cnt), wv[kh * K + kw], acc);
        }
      finish(acc, ow);
    };
    for (int64_t ow = 0; ow < lo; ++ow) edge(ow);
    int64_t ow = lo;
    const int64_t sc = stride * C;
    for (; ow + 4 <= hi; ow += 4) {  // 4 output pixels at once: independent FMA chains
      V a0 = bv, a1 = bv, a2 = bv, a3 = bv;
      const int64_t iw0 = ow * stride - pad;
#pragma GCC unroll 8
      for (int kh = 0; kh < K; ++kh) {
        const T* r = rows[kh] + iw0 * C + c;
#pragma GCC unroll 8
        for (int kw = 0; kw < K; ++kw) {
          const V wk = wv[kh * K + kw];
          const T* rr = r + kw * C;
          a0 = at::vec::fmadd(V::loadu(rr, cnt), wk, a0);
          a1 = at::vec::fmadd(V::loadu(rr + sc, cnt), wk, a1);
          a2 = at::vec::fmadd(V::loadu(rr + 2 * sc, cnt), wk, a2);
          a3 = at::vec::fmadd(V::loadu(rr + 3 * sc, cnt), wk, a3);
        }
      }
      finish(a0, ow);
      finish(a1, ow + 1);
      finish(a2, ow + 2);
      finish(a3, ow + 3);
    }
    for (; ow < hi; ++ow) {
      V acc = bv;
      const int64_t iw0 = ow * stride - pad;
#pragma GCC unroll 8
      for (int kh = 0; kh < K; ++kh) {
        const T* r = rows[kh] + iw0 * C + c;
#pragma GCC unroll 8
        for (int kw = 0; kw < K; ++kw)
          acc = at::vec::fmadd(V::loadu(r + kw * C, cnt), wv[kh * K + kw], acc);
      }
      finish(acc, ow);
    }
    for (int64_t ow = hi; ow < Wo; ++ow) edge(ow);
  }
}

template <typename T, int K>
void dwconv_silu(const T* v, const T* w, const T* bias, T* out, int64_t B, int64_t H, int64_t W,
                 int64_t C, int64_t Ho, int64_t Wo, int64_t stride, int64_t pad, bool skip) {
  std::vector<T> zero(W * C, T(0));
  const T* zrow = zero.data();
  at::parallel_for(0, B * Ho, 1, [&](int64_t begin, int64_t end) {
    const T* rows[K];
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / Ho, oh = r % Ho;
      const T* img = v + b * H * W * C;
      for (int kh = 0; kh < K; ++kh) {
        const int64_t ih = oh * stride - pad + kh;
        rows[kh] = (ih >= 0 && ih < H) ? img + ih * W * C : zrow;
      }
      const T* vskip = skip ? img + oh * W * C : nullptr;
      dw_row<T, K>(rows, w, bias, vskip, out + r * Wo * C, W, Wo, C, stride, pad);
    }
  });
}

template <typename T>
void dwconv_dispatch(int64_t K, const T* v, const T* w, const T* bias, T* out, int64_t B,
                     int64_t H, int64_t W, int64_t C, int64_t Ho, int64_t Wo, int64_t stride,
                     int64_t pad, bool skip) {
  switch (K) {
    case 1: return dwconv_silu<T, 1>(v, w, bias, out, B, H, W, C, Ho, Wo, stride, pad, skip);
    case 3: return dwconv_silu<T, 3>(v, w, bias, out, B, H, W, C, Ho, Wo, stride, pad, skip);
    case 5: return dwconv_silu<T, 5>(v, w, bias, out, B, H, W, C, Ho, Wo, stride, pad, skip);
    case 7: return dwconv_silu<T, 7>(v, w, bias, out, B, H, W, C, Ho, Wo, stride, pad, skip);
    default: TORCH_CHECK(false, "emo_kernels._C_cpu: depthwise kernel size must be 1, 3, 5 or 7");
  }
}

at::Tensor nhwc_view(const at::Tensor& t) {  // (B, C, H, W) channels_last -> (B, H, W, C) view
  return t.permute({0, 2, 3, 1});
}

// The whole non-attention iRMB body for images [b0, b1): v = act(x W^T + b) into a buffer
// that stays in cache, the depthwise pass, then (optionally) out = residual + z Wp^T.
// Images are processed in chunks of about `budget` bytes of v + z, so that at large batch v and
// z never go to DRAM; chunks run in parallel when there are enough of them, otherwise every
// step is parallel inside the chunk.
at::Tensor expand_dwconv_act_proj(const at::Tensor& x_in, const c10::optional<at::Tensor>& w_exp,
                                  const c10::optional<at::Tensor>& b_exp, const at::Tensor& w_dw,
                                  const c10::optional<at::Tensor>& b_dw,
                                  const c10::optional<at::Tensor>& w_proj,
                                  const c10::optional<at::Tensor>& residual, int64_t act,
                                  int64_t stride, bool skip, int64_t budget) {
  TORCH_CHECK(x_in.device().is_cpu(), "emo_kernels._C_cpu: expected CPU tensors");
  TORCH_CHECK(x_in.dim() == 4, "x must be (B, C, H, W)");
  TORCH_CHECK(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble,
              "emo_kernels._C_cpu: float32 or float64 only");
  TORCH_CHECK(stride == 1 || stride == 2, "stride must be 1 or 2");
  TORCH_CHECK(!skip || stride == 1, "skip needs stride 1");
  const int64_t B = x_in.size(0), Cin = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  const int64_t K = w_dw.size(-1);
  const int64_t pad = (K - stride + 1) / 2;  // ceil((k - stride) / 2)
  const int64_t Ho = (H + 2 * pad - K) / stride + 1, Wo = (W + 2 * pad - K) / stride + 1;
  const auto opts = x_in.options();
  auto x = nhwc_view(x_in.contiguous(at::MemoryFormat::ChannelsLast));  // (B, H, W, Cin)
  auto x2 = x.reshape({B * H * W, Cin});
  const bool expand = w_exp.has_value() && w_exp->defined();
  TORCH_CHECK(expand || act == ACT_NONE, "identity expansion needs act='none'");
  const int64_t C = expand ? w_exp->size(0) : Cin;
  TORCH_CHECK(w_dw.numel() == C * K * K, "w_dw must be (Cmid, 1, k, k)");
  at::Tensor wt = expand ? w_exp->reshape({C, Cin}).t() : at::Tensor();
  at::Tensor be = expand && b_exp.has_value() && b_exp->defined() ? b_exp->contiguous()
                                                                  : at::Tensor();
  auto wd = w_dw.reshape({C, K * K}).t().contiguous();  // (K*K, C)
  at::Tensor bd = b_dw.has_value() && b_dw->defined() ? b_dw->contiguous() : at::Tensor();
  const bool proj = w_proj.has_value() && w_proj->defined();
  const int64_t Cout = proj ? w_proj->size(0) : C;
  at::Tensor wpt = proj ? w_proj->reshape({Cout, C}).t() : at::Tensor();
  at::Tensor res2;
  if (proj && residual.has_value() && residual->defined()) {
    TORCH_CHECK(residual->size(0) == B && residual->size(1) == Cout && residual->size(2) == Ho &&
                    residual->size(3) == Wo, "residual must be (B, Cout, Ho, Wo)");
    res2 = nhwc_view(residual->contiguous(at::MemoryFormat::ChannelsLast))
               .reshape({B * Ho * Wo, Cout});
  }
  auto out = at::empty({B, Ho, Wo, Cout}, opts);
  auto out2 = out.view({B * Ho * Wo, Cout});

  const int64_t esz = x_in.element_size();
  const int64_t per_img = esz * (H * W * C + (proj ? Ho * Wo * C : 0));
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(B, budget / std::max<int64_t>(per_img, 1)));
  const int64_t nchunks = (B + chunk - 1) / chunk;

  const bool inference = c10::InferenceMode::is_enabled();  // worker threads must agree
  auto body = [&](int64_t c0) {
    c10::InferenceMode guard(inference);
    const int64_t b0 = c0 * chunk, b1 = std::min(B, b0 + chunk), nb = b1 - b0;
    at::Tensor v2;
    if (expand) {
      v2 = at::empty({nb * H * W, C}, opts);
      at::mm_out(v2, x2.narrow(0, b0 * H * W, nb * H * W), wt);
    } else {
      v2 = x2.narrow(0, b0 * H * W, nb * H * W);
    }
    at::Tensor z2 = proj ? at::empty({nb * Ho * Wo, C}, opts) : out2.narrow(0, b0 * Ho * Wo, nb * Ho * Wo);
    AT_DISPATCH_FLOATING_TYPES(x_in.scalar_type(), "emo_expand_dw", [&] {
      if (expand)
        bias_act_inplace<scalar_t>(v2.data_ptr<scalar_t>(), nb * H * W, C,
                                   be.defined() ? be.data_ptr<scalar_t>() : nullptr, act);
      dwconv_dispatch<scalar_t>(K, v2.data_ptr<scalar_t>(), wd.data_ptr<scalar_t>(),
                                bd.defined() ? bd.data_ptr<scalar_t>() : nullptr,
                                z2.data_ptr<scalar_t>(), nb, H, W, C, Ho, Wo, stride, pad, skip);
    });
    if (proj) {
      auto o = out2.narrow(0, b0 * Ho * Wo, nb * Ho * Wo);
      if (res2.defined())
        at::addmm_out(o, res2.narrow(0, b0 * Ho * Wo, nb * Ho * Wo), z2, wpt);
      else
        at::mm_out(o, z2, wpt);
    }
  };
  if (nchunks >= at::get_num_threads() && nchunks > 1) {
    at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) body(c);
    });
  } else {
    for (int64_t c = 0; c < nchunks; ++c) body(c);
  }
  return out.permute({0, 3, 1, 2});
}

at::Tensor expand_dwconv_act(const at::Tensor& x, const c10::optional<at::Tensor>& w_exp,
                             const c10::optional<at::Tensor>& b_exp, const at::Tensor& w_dw,
                             const c10::optional<at::Tensor>& b_dw, int64_t act, int64_t stride,
                             bool skip) {
  return expand_dwconv_act_proj(x, w_exp, b_exp, w_dw, b_dw, c10::nullopt, c10::nullopt, act,
                                stride, skip, int64_t(1) << 20);
}

// ---- window attention --------------------------------------------------------------------
template <typename T>
void window_attention_kernel(const T* q, const T* k, const T* v, const T* kpad, T* out,
                             const int64_t* qs, const int64_t* ks, const int64_t* vs,  // B,C,H,W strides
                             int64_t B, int64_t C, int64_t H, int64_t W, int64_t d, int64_t ws,
                             T scale) {
  using V = Vectorized<T>;
  constexpr int64_t VS = V::size();
  const int64_t heads = C / d;
  const int64_t Hp = (H + ws - 1) / ws * ws, Wp = (W + ws - 1) / ws * ws;
  const int64_t n1 = Hp / ws, n2 = Wp / ws, L = ws * ws;
  const int64_t Lp = (L + VS - 1) / VS * VS, dp = (d + VS - 1) / VS * VS;
  at::parallel_for(0, B * n1 * n2 * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> Qb(L * d), Kt(d * Lp), Vb(L * dp), S(Lp), O(dp);
    std::vector<int64_t> pix(L);  // h * W + w, or -1 for a padded token
    for (int64_t task = begin; task < end; ++task) {
      const int64_t h = task % heads;
      const int64_t win = task / heads;
      const int64_t b = win / (n1 * n2), a1 = (win / n2) % n1, a2 = win % n2;
      const int64_t c0 = h * d;
      std::fill(Kt.begin(), Kt.end(), T(0));
      std::fill(Vb.begin(), Vb.end(), T(0));
      for (int64_t i = 0; i < ws; ++i)
        for (int64_t j = 0; j < ws; ++j) {
          const int64_t t = i * ws + j, y = i * n1 + a1, x = j * n2 + a2;
          if (y < H && x < W) {
            pix[t] = y * W + x;
            const T* qp = q + b * qs[0] + c0 * qs[1] + y * qs[2] + x * qs[3];
            const T* kp = k + b * ks[0] + c0 * ks[1] + y * ks[2] + x * ks[3];
            const T* vp = v + b * vs[0] + c0 * vs[1] + y * vs[2] + x * vs[3];
            for (int64_t c = 0; c < d; ++c) {
              Qb[t * d + c] = qp[c * qs[1]] * scale;
              Kt[c * Lp + t] = kp[c * ks[1]];
              Vb[t * dp + c] = vp[c * vs[1]];
            }
          } else {
            pix[t] = -1;
            for (int64_t c = 0; c < d; ++c) Kt[c * Lp + t] = kpad ? kpad[c0 + c] : T(0);
          }
        }
      for (int64_t t = 0; t < L; ++t) {
        if (pix[t] < 0) continue;  // padded query: cropped away
        // scores over keys, vectorized over the key index (4 independent accumulators when
        // the padded window is 4 vectors: float, ws = 7)
        const T* qt = Qb.data() + t * d;
        if (Lp == 4 * VS) {
          V a0(T(0)), a1(T(0)), a2(T(0)), a3(T(0));
          for (int64_t c = 0; c < d; ++c) {
            const V qv(qt[c]);
            const T* kr = Kt.data() + c * Lp;
            a0 = at::vec::fmadd(qv, V::loadu(kr), a0);
            a1 = at::vec::fmadd(qv, V::loadu(kr + VS), a1);
            a2 = at::vec::fmadd(qv, V::loadu(kr + 2 * VS), a2);
            a3 = at::vec::fmadd(qv, V::loadu(kr + 3 * VS), a3);
          }
          a0.store(S.data());
          a1.store(S.data() + VS);
          a2.store(S.data() + 2 * VS);
          a3.store(S.data() + 3 * VS);
        } else {
          for (int64_t j = 0; j < Lp; j += VS) {
            V acc(T(0));
            for (int64_t c = 0; c < d; ++c)
              acc = at::vec::fmadd(V(qt[c]), V::loadu(Kt.data() + c * Lp + j), acc);
            acc.store(S.data() + j);
          }
        }
        T sum;
        {  // softmax over the L real keys, vectorized: lanes past L are -inf, exp gives 0
          const T ninf = -std::numeric_limits<T>::infinity();
          for (int64_t j = L; j < Lp; ++j) S[j] = ninf;
          V mv = V::loadu(S.data());
          for (int64_t j = VS; j < Lp; j += VS) mv = at::vec::maximum(mv, V::loadu(S.data() + j));
          const T mx = at::vec::vec_reduce_all<T>(
              [](V& a, V& b) { return at::vec::maximum(a, b); }, mv);
          const V mxv(mx);
          V sv(T(0));
          for (int64_t j = 0; j < Lp; j += VS) {
            V e = vexp(V::loadu(S.data() + j) - mxv);
            if (j + VS > L) {  // explicit zero past L (exp(-inf) may not be exactly 0)
              e = V::blendv(e, V(T(0)), V::loadu(S.data() + j) == V(ninf));
            }
            e.store(S.data() + j);
            sv = sv + e;
          }
          sum = at::vec::vec_reduce_all<T>([](V& a, V& b) { return a + b; }, sv);
        }
        const T inv = T(1) / sum;
        for (int64_t c = 0; c < dp; c += VS) {  // O = P V, 4 independent accumulators
          V a0(T(0)), a1(T(0)), a2(T(0)), a3(T(0));
          const T* vb = Vb.data() + c;
          int64_t j = 0;
          for (; j + 4 <= L; j += 4) {
            a0 = at::vec::fmadd(V(S[j]), V::loadu(vb + j * dp), a0);
            a1 = at::vec::fmadd(V(S[j + 1]), V::loadu(vb + (j + 1) * dp), a1);
            a2 = at::vec::fmadd(V(S[j + 2]), V::loadu(vb + (j + 2) * dp), a2);
            a3 = at::vec::fmadd(V(S[j + 3]), V::loadu(vb + (j + 3) * dp), a3);
          }
          for (; j < L; ++j) a0 = at::vec::fmadd(V(S[j]), V::loadu(vb + j * dp), a0);
          (((a0 + a1) + (a2 + a3)) * V(inv)).store(O.data() + c);
        }
        T* op = out + (b * H * W + pix[t]) * C + c0;  // NHWC output
        std::copy(O.data(), O.data() + d, op);
      }
    }
  });
}

at::Tensor window_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const c10::optional<at::Tensor>& k_pad, int64_t head_dim,
                            int64_t window_size, double scale) {
  TORCH_CHECK(q.device().is_cpu(), "emo_kernels._C_cpu: expected CPU tensors");
  TORCH_CHECK(q.dim() == 4 && k.sizes() == q.sizes() && v.sizes() == q.sizes(),
              "q, k, v must be (B, C, H, W) of one shape");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "q, k, v must share a dtype");
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble,
              "emo_kernels._C_cpu: float32 or float64 only");
  const int64_t B = q.size(0), C = q.size(1), H = q.size(2), W = q.size(3);
  TORCH_CHECK(head_dim > 0 && C % head_dim == 0, "head_dim must divide C");
  at::Tensor kp;
  if (k_pad.has_value() && k_pad->defined()) kp = k_pad->contiguous();
  auto out = at::empty({B, H, W, C}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "emo_window_attention", [&] {
    window_attention_kernel<scalar_t>(
        q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
        kp.defined() ? kp.data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(),
        q.strides().data(), k.strides().data(), v.strides().data(), B, C, H, W, head_dim,
        window_size, static_cast<scalar_t>(scale));
  });
  return out.permute({0, 3, 1, 2});
}

std::string isa() { return EMO_STR(CPU_CAPABILITY); }

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "emo_kernels CPU backend (inference only, NHWC)";
  m.def("expand_dwconv_act", &expand_dwconv_act, "expand 1x1 + act + depthwise + SiLU (+skip)",
        py::arg("x"), py::arg("w_exp"), py::arg("b_exp"), py::arg("w_dw"), py::arg("b_dw"),
        py::arg("act"), py::arg("stride"), py::arg("skip"));
  m.def("expand_dwconv_act_proj", &expand_dwconv_act_proj,
        "expand_dwconv_act followed by the 1x1 projection (+ residual), chunked over images",
        py::arg("x"), py::arg("w_exp"), py::arg("b_exp"), py::arg("w_dw"), py::arg("b_dw"),
        py::arg("w_proj"), py::arg("residual"), py::arg("act"), py::arg("stride"),
        py::arg("skip"), py::arg("budget"));
  m.def("window_attention", &window_attention, "EMO strided-window attention", py::arg("q"),
        py::arg("k"), py::arg("v"), py::arg("k_pad"), py::arg("head_dim"),
        py::arg("window_size"), py::arg("scale"));
  m.def("isa", &isa, "the CPU_CAPABILITY this file was compiled for");
}
