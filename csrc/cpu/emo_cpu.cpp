// CPU backend of emo_kernels (inference only): NHWC kernels for EMO's iRMB hot path.
//
//   expand_dwconv_act_proj: the non-attention iRMB body -- expansion GEMM + bias + act, the
//                      depthwise k x k conv + bias + SiLU (+ skip), the projection GEMM (+
//                      residual) -- chunk by chunk (whole images or bands of rows) so that the
//                      expanded tensor stays in cache; two parallel phases per chunk.
//   window_attention:  EMO's strided-window attention read straight from q/k/v of any strides
//                      (NHWC channel slices of the qk conv output need no copy), one task per
//                      (image, window, head), output written once in NHWC.
//   irmb_inference / irmb_chain: LayerNorm + qk GEMM + attention + the body, one block or a
//                      chain of blocks per call (no Python between the steps).
// Outputs are (B, C, H, W) tensors in channels_last memory format.
//
// The 1x1 convolutions are GEMMs by gemm.h's kernel on packed weights (packed per call, or
// once per chain by the caller: irmb_chain's prepared weights), bias / activation / residual
// applied in its epilogue.
//
// Vector width comes from the build: setup.py / emo_kernels/_cpu.py compile this file with
// CPU_CAPABILITY=AVX512, AVX2 or DEFAULT (see isa()); the Python side refuses to run a build
// whose ISA the present CPU lacks.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <tuple>
#include <cmath>
#include <limits>
#include <vector>

#include "gemm.h"

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

// 1 / d: float uses the hardware reciprocal estimate plus one Newton step (relative error
// ~1e-7, a tenth of the float32 tolerance) instead of a division, the slowest instruction of
// the activations; d must be finite and nonzero. double (and the DEFAULT build) divide.
template <typename T>
inline Vectorized<T> vrecip(const Vectorized<T>& d) { return Vectorized<T>(T(1)) / d; }
#if defined(CPU_CAPABILITY_AVX512)
template <>
inline Vectorized<float> vrecip(const Vectorized<float>& d) {
  const __m512 r = _mm512_rcp14_ps(d);
  return _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.f)));
}
#elif defined(CPU_CAPABILITY_AVX2)
template <>
inline Vectorized<float> vrecip(const Vectorized<float>& d) {
  const __m256 r = _mm256_rcp_ps(d);
  return _mm256_mul_ps(r, _mm256_fnmadd_ps(d, r, _mm256_set1_ps(2.f)));
}
#endif

// erf: float uses Abramowitz-Stegun 7.1.28, erf(a) = 1 - (1 + a1 a + ... + a6 a^6)^-16 for
// a = |x| (absolute error <= 3e-7, no exp: one reciprocal and four squarings), sign restored;
// double keeps ATen's erf.
template <typename T>
inline Vectorized<T> verf(const Vectorized<T>& x) { return x.erf(); }
template <>
inline Vectorized<float> verf(const Vectorized<float>& x) {
  using V = Vectorized<float>;
  const V one(1.f);
  const V a = at::vec::minimum(x.abs(), V(1e4f));  // erf(1e4) = 1; keeps the polynomial finite
  V p = at::vec::fmadd(V(0.0000430638f), a, V(0.0002765672f));
  p = at::vec::fmadd(p, a, V(0.0001520143f));
  p = at::vec::fmadd(p, a, V(0.0092705272f));
  p = at::vec::fmadd(p, a, V(0.0422820123f));
  p = at::vec::fmadd(p, a, V(0.0705230784f));
  p = at::vec::fmadd(p, a, one);
  V r = vrecip(p);  // r^16 underflows to 0 for large a: erf = 1
  r = r * r;
  r = r * r;
  r = r * r;
  r = r * r;
  const V y = one - r;
  return V::blendv(y, y.neg(), x < V(0.f));
}

// silu(x) = x sigmoid(x), with e = exp(-|x|) in (0, 1]: sigmoid(x) = 1 / (1 + e) for x >= 0
// and e / (1 + e) for x < 0. The denominator stays in [1, 2] (vrecip's domain) for every x, and
// far into the negative tail the result is x e^x, rounding to -0 like torch's silu (exp
// underflows). NaN propagates, and silu(-inf) = -inf * 0 = NaN as in torch; silu(inf) = inf.
template <typename T>
inline Vectorized<T> vsilu(const Vectorized<T>& x) {
  using V = Vectorized<T>;
  const V e = vexp(x.abs().neg());
  const V r = vrecip(V(T(1)) + e);
  return x * V::blendv(r, e * r, x < V(T(0)));
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

// dst[i*C + c] = src[i*C + c] for n pixels and channels [c0, c1): an input row copied into the
// zero-padded depthwise input buffer (identity expansion: the stem block).
template <typename T>
void copy_row(const T* src, T* dst, int64_t n, int64_t C, int64_t c0, int64_t c1) {
  for (int64_t i = 0; i < n; ++i) std::copy(src + i * C + c0, src + i * C + c1, dst + i * C + c0);
}

// ---- depthwise conv + bias + SiLU (+ skip) on a zero-padded NHWC buffer ---------------------
// NB adjacent output pixels of one row, one channel vector [c, c + cnt): per kernel row, the
// (NB - 1) * S + K input vectors they share are loaded once and each used up to K times, the K
// weights once: NB * K FMAs per (NB - 1) * S + 2K loads, so the loop is FMA-bound, not
// load-bound. `rows` are the K input rows of the padded buffer (column 0 is input column
// -pad): every tap is in bounds, no edge cases.
template <typename T, int K, int S, int NB>
inline void dw_block(const T* const* rows, const T* w, int64_t C, int64_t c, int64_t cnt,
                     const Vectorized<T>& bv, const T* vskip, T* out, int64_t ow) {
  using V = Vectorized<T>;
  constexpr int NI = (NB - 1) * S + K;
  V acc[NB];
#pragma GCC unroll 8
  for (int i = 0; i < NB; ++i) acc[i] = bv;
#pragma GCC unroll 7
  for (int kh = 0; kh < K; ++kh) {
    const T* r = rows[kh] + ow * S * C + c;
    V in[NI];
#pragma GCC unroll 32
    for (int j = 0; j < NI; ++j) in[j] = V::loadu(r + j * C, cnt);
#pragma GCC unroll 7
    for (int kw = 0; kw < K; ++kw) {
      const V wk = V::loadu(w + (kh * K + kw) * C + c, cnt);
#pragma GCC unroll 8
      for (int i = 0; i < NB; ++i) acc[i] = at::vec::fmadd(in[i * S + kw], wk, acc[i]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < NB; ++i) {
    V d = vsilu(acc[i]);
    if (vskip) d = d + V::loadu(vskip + (ow + i) * C + c, cnt);
    d.store(out + (ow + i) * C + c, cnt);
  }
}

// One output row, channels [c0, c1), in blocks of 8, 4, 2, 1 pixels. vskip: the unpadded
// input row of the skip (stride 1), or null.
template <typename T, int K, int S>
void dw_row(const T* const* rows, const T* w /* (K*K, C) */, const T* bias, const T* vskip,
            T* out, int64_t Wo, int64_t C, int64_t c0, int64_t c1) {
  using V = Vectorized<T>;
  constexpr int64_t VS = V::size();
  for (int64_t c = c0; c < c1; c += VS) {
    const int64_t cnt = std::min<int64_t>(VS, c1 - c);
    const V bv = bias ? V::loadu(bias + c, cnt) : V(T(0));
    int64_t ow = 0;
    if (Wo % 8 != 0 && Wo % 7 == 0) {  // 7, 14, 28: EMO's stage 3-4 widths at 224
      for (; ow < Wo; ow += 7) dw_block<T, K, S, 7>(rows, w, C, c, cnt, bv, vskip, out, ow);
      continue;
    }
    for (; ow + 8 <= Wo; ow += 8) dw_block<T, K, S, 8>(rows, w, C, c, cnt, bv, vskip, out, ow);
    if (ow + 4 <= Wo) { dw_block<T, K, S, 4>(rows, w, C, c, cnt, bv, vskip, out, ow); ow += 4; }
    if (ow + 2 <= Wo) { dw_block<T, K, S, 2>(rows, w, C, c, cnt, bv, vskip, out, ow); ow += 2; }
    if (ow < Wo) dw_block<T, K, S, 1>(rows, w, C, c, cnt, bv, vskip, out, ow);
  }
}

template <typename T>
void dw_row_dispatch(int64_t K, const T* const* rows, const T* w, const T* bias, const T* vskip,
                     T* out, int64_t Wo, int64_t C, int64_t c0, int64_t c1, int64_t stride) {
#define EMO_DW_CASE(k)                                                                   \
  case k:                                                                                \
    return stride == 1 ? dw_row<T, k, 1>(rows, w, bias, vskip, out, Wo, C, c0, c1)       \
                       : dw_row<T, k, 2>(rows, w, bias, vskip, out, Wo, C, c0, c1);
  switch (K) {
    EMO_DW_CASE(1)
    EMO_DW_CASE(3)
    EMO_DW_CASE(5)
    EMO_DW_CASE(7)
    default: TORCH_CHECK(false, "emo_kernels._C_cpu: depthwise kernel size must be 1, 3, 5 or 7");
  }
#undef EMO_DW_CASE
}

at::Tensor nhwc_view(const at::Tensor& t) {  // (B, C, H, W) channels_last -> (B, H, W, C) view
  return t.permute({0, 2, 3, 1});
}

// Scratch buffer `slot` of the calling OS thread, kept between calls (grow-only): a fresh
// multi-MB allocation per call costs page faults on every call (glibc hands large blocks back
// to the kernel). Returns its first numel elements (contents undefined), reallocating it when
// too small. thread_local, so never shared: the calls run without the GIL, and concurrent calls
// from several Python threads (or their OpenMP workers) are on distinct OS threads; a thread
// uses a slot for one chunk at a time.
at::Tensor workspace(int slot, int64_t numel, const at::TensorOptions& opts) {
  thread_local at::Tensor cache[2];
  at::Tensor& t = cache[slot];
  if (!t.defined() || t.scalar_type() != opts.dtype().toScalarType() || t.numel() < numel) {
    c10::InferenceMode normal(false);  // a normal tensor: writable in and out of InferenceMode
    t = at::empty({std::max<int64_t>(numel, 1)}, opts);
  }
  return t.narrow(0, 0, numel);
}

// [lo, hi) split into n near-equal parts; part i, aligned to `align` (except the end)
inline std::pair<int64_t, int64_t> split_range(int64_t lo, int64_t hi, int64_t n, int64_t i,
                                               int64_t align = 1) {
  const int64_t units = (hi - lo + align - 1) / align;
  const int64_t a = lo + units * i / n * align, b = lo + units * (i + 1) / n * align;
  return {std::min(a, hi), std::min(b, hi)};
}

// f(0), ..., f(n - 1) over the threads (at::parallel_for's static split), inline when n <= 1.
// Workers run with the caller's InferenceMode and with grad mode off: both are thread-local,
// and a worker must not record autograd for its ops.
template <typename F>
void run_parts(int64_t n, const F& f) {
  if (n <= 1) {
    for (int64_t t = 0; t < n; ++t) f(t);
    return;
  }
  const bool inference = c10::InferenceMode::is_enabled();
  at::parallel_for(0, n, 1, [&](int64_t t0, int64_t t1) {
    c10::InferenceMode guard(inference);
    at::NoGradGuard no_grad;
    for (int64_t t = t0; t < t1; ++t) f(t);
  });
}

// act(a + bias[n, n + cnt)) on one vector of GEMM accumulators (bias may be null): the
// epilogue of the expansion and qk GEMMs.
template <typename T>
inline Vectorized<T> bias_act(Vectorized<T> a, const T* bias, int64_t n, int64_t cnt,
                              int64_t act) {
  if (bias) a = a + Vectorized<T>::loadu(bias + n, cnt);
  if (act == ACT_SILU) return vsilu(a);
  if (act == ACT_GELU) return vgelu(a);
  return a;
}

// ---- the packed-weight GEMM (gemm.h) ---------------------------------------------------------
// A conv weight (N, K[, 1, 1]) packed into column panels: (num_panels, K, panel_width).
at::Tensor pack_weight(const at::Tensor& w) {
  TORCH_CHECK(w.device().is_cpu() && w.dim() >= 2, "pack_weight: a CPU weight (N, K[, 1, 1])");
  TORCH_CHECK(w.scalar_type() == at::kFloat || w.scalar_type() == at::kDouble,
              "emo_kernels._C_cpu: float32 or float64 only");
  const int64_t N = w.size(0), K = w.numel() / std::max<int64_t>(N, 1);
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "emo_pack_weight", [&] {
    using T = scalar_t;
    c10::InferenceMode normal(false);  // usable outside InferenceMode too
    out = at::empty({emo_gemm::num_panels<T>(N), K, emo_gemm::panel_width<T>()}, w.options());
    const auto wc = w.reshape({N, K}).contiguous();
    emo_gemm::pack<T>(wc.data_ptr<T>(), N, K, out.data_ptr<T>());
  });
  return out;
}

// The packed form of w: `packed` if given (checked against w's shape), else packed now.
at::Tensor packed_or_pack(const at::Tensor& w, const c10::optional<at::Tensor>& packed) {
  const int64_t N = w.size(0), K = w.numel() / std::max<int64_t>(N, 1);
  if (!(packed.has_value() && packed->defined())) return pack_weight(w);
  const auto& p = *packed;
  TORCH_CHECK(p.scalar_type() == w.scalar_type() && p.dim() == 3 && p.size(1) == K &&
                  p.size(0) * p.size(2) >= N && (p.size(0) - 1) * p.size(2) < N &&
                  p.is_contiguous(),
              "a packed weight must come from pack_weight of the same weight");
  return p;
}

// How expand_dwconv_act_proj cuts B images of Ho output rows into chunks of about `budget`
// bytes: {nb, no} = nb whole images per chunk (no == Ho), or bands of `no` output rows of one
// image (nb == 1; K - s halo rows of `in_row` bytes recomputed per band). in_row: bytes of one
// buffer row of v (+ GEMM scratch), out_row: of one z row; pure arithmetic, reads nothing.
// in_row > 0 (channels > 0, checked by the caller) keeps every division defined.
std::pair<int64_t, int64_t> plan_chunks(int64_t B, int64_t Ho, int64_t K, int64_t s,
                                        int64_t in_row, int64_t out_row, int64_t budget,
                                        bool whole_images) {
  TORCH_INTERNAL_ASSERT(in_row > 0 && out_row >= 0 && Ho > 0);
  const int64_t img_bytes = ((Ho - 1) * s + K) * in_row + Ho * out_row;
  if (img_bytes <= budget || whole_images)
    return {std::max<int64_t>(1, std::min<int64_t>(B, budget / img_bytes)), Ho};
  int64_t no = std::max<int64_t>(1, (budget - (K - s) * in_row) / (s * in_row + out_row));
  no = std::min(no, Ho);
  return {1, (Ho + (Ho + no - 1) / no - 1) / ((Ho + no - 1) / no)};  // equal bands
}

// Weights of the fused body prepared ahead (irmb_chain): packed GEMM weights and the depthwise
// weights as (K*K, C); undefined ones are prepared per call.
struct Prepared {
  at::Tensor exp, dw, proj;
};

// Squeeze-excite between the depthwise pass and the projection (the stem block):
// s = sigmoid(w2 act(w1 mean_hw(z) + b1) + b2), out = z (w_proj * s)^T.
struct SEArgs {
  at::Tensor w1, b1, w2, b2;  // (R, Cm), (R), (Cm, R), (Cm), contiguous
  int64_t act;
};

// The whole non-attention iRMB body:
//   v = act(x W^T + b)   (or v = x: no expansion)      the expansion GEMM + bias + activation
//   z = silu(dwconv(v) + b_dw) (+ v if skip)           the depthwise pass
//   out = z Wp^T (+ residual)   (or out = z: no proj)  the projection GEMM
// The work is cut into chunks -- several whole images, or a band of output rows of one image
// (with its K - stride halo rows recomputed) -- of about `budget` bytes of v (zero-padded) and
// z, so that v and z are produced and consumed in cache and never go to DRAM. A chunk runs as
// two parallel phases over all threads: (1) expansion GEMM + activation into the padded
// buffer, split over input rows (or over channels when the chunk has few pixels: batch 1 at
// 7x7), (2) depthwise + projection split over output rows (or depthwise over channels, then
// the projection over output channels). Bytes per image: read x (and the residual), write
// out; v and z stay in the chunk buffers. split: 0 auto, 1 always rows, 2 always channels
// (tests).
at::Tensor expand_dwconv_act_proj(const at::Tensor& x_in, const c10::optional<at::Tensor>& w_exp,
                                  const c10::optional<at::Tensor>& b_exp, const at::Tensor& w_dw,
                                  const c10::optional<at::Tensor>& b_dw,
                                  const c10::optional<at::Tensor>& w_proj,
                                  const c10::optional<at::Tensor>& residual, int64_t act,
                                  int64_t stride, bool skip, int64_t budget, int64_t split,
                                  const SEArgs* se = nullptr, const Prepared& pre = Prepared()) {
  TORCH_CHECK(x_in.device().is_cpu(), "emo_kernels._C_cpu: expected CPU tensors");
  TORCH_CHECK(x_in.dim() == 4, "x must be (B, C, H, W)");
  TORCH_CHECK(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble,
              "emo_kernels._C_cpu: float32 or float64 only");
  TORCH_CHECK(stride == 1 || stride == 2, "stride must be 1 or 2");
  TORCH_CHECK(!skip || stride == 1, "skip needs stride 1");
  const int64_t B = x_in.size(0), Cin = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  const int64_t K = w_dw.size(-1);
  const int64_t s = stride;
  const int64_t pad = (K - s + 1) / 2;  // ceil((k - stride) / 2)
  const int64_t Ho = (H + 2 * pad - K) / s + 1, Wo = (W + 2 * pad - K) / s + 1;
  const int64_t Wp = W + 2 * pad;  // padded buffer width: covers every tap of every output
  const auto opts = x_in.options();
  auto x2 = nhwc_view(x_in.contiguous(at::MemoryFormat::ChannelsLast)).reshape({B * H * W, Cin});
  const bool expand = w_exp.has_value() && w_exp->defined();
  TORCH_CHECK(expand || act == ACT_NONE, "identity expansion needs act='none'");
  const int64_t C = expand ? w_exp->size(0) : Cin;
  TORCH_CHECK(w_dw.numel() == C * K * K, "w_dw must be (Cmid, 1, k, k)");
  TORCH_CHECK(!expand || w_exp->numel() == C * Cin, "w_exp must be (Cmid, Cin, 1, 1)");
  const at::Tensor pexp = expand ? packed_or_pack(*w_exp, pre.exp) : at::Tensor();
  at::Tensor be = expand && b_exp.has_value() && b_exp->defined() ? b_exp->contiguous()
                                                                  : at::Tensor();
  at::Tensor wd = pre.dw;  // (K*K, C)
  if (wd.defined()) {
    TORCH_CHECK(wd.scalar_type() == w_dw.scalar_type() && wd.is_contiguous() &&
                    wd.dim() == 2 && wd.size(0) == K * K && wd.size(1) == C,
                "a prepared depthwise weight must be w_dw as (k*k, Cmid)");
  } else {
    wd = w_dw.reshape({C, K * K}).t().contiguous();
  }
  at::Tensor bd = b_dw.has_value() && b_dw->defined() ? b_dw->contiguous() : at::Tensor();
  const bool proj = w_proj.has_value() && w_proj->defined();
  const int64_t Cout = proj ? w_proj->size(0) : C;
  TORCH_CHECK(!proj || w_proj->numel() == Cout * C, "w_proj must be (Cout, Cmid, 1, 1)");
  // zero channels or an empty image would size chunks of 0 bytes (a division by zero)
  TORCH_CHECK(Cin > 0 && C > 0 && Cout > 0, "emo_kernels._C_cpu: channel counts must be "
              "positive (got Cin=", Cin, ", Cmid=", C, ", Cout=", Cout, ")");
  TORCH_CHECK(H > 0 && W > 0, "emo_kernels._C_cpu: x must have H, W > 0 (got ", H, "x", W, ")");
  const at::Tensor pproj = proj ? packed_or_pack(*w_proj, pre.proj) : at::Tensor();
  at::Tensor res2;
  if (proj && residual.has_value() && residual->defined()) {
    TORCH_CHECK(residual->size(0) == B && residual->size(1) == Cout && residual->size(2) == Ho &&
                    residual->size(3) == Wo, "residual must be (B, Cout, Ho, Wo)");
    res2 = nhwc_view(residual->contiguous(at::MemoryFormat::ChannelsLast))
               .reshape({B * Ho * Wo, Cout});
  }
  auto out = at::empty({B, Ho, Wo, Cout}, opts);
  auto out2 = out.view({B * Ho * Wo, Cout});

  // ---- chunking: (b0, nb images, output rows [o0, o0 + no)) ----
  const int64_t esz = x_in.element_size();
  // the budget counts a GEMM-output-sized row per input row beside the padded v row (the
  // scratch of the MKL version this kernel replaced): the smaller chunks leave room in L2 for
  // x, the output and the weights. Measured on the whole chain at EMO-1M batch 16: 1.05x the
  // MKL version's speed this way, 0.81-0.88x when only v was counted.
  const int64_t in_row = (Wp + (expand ? W : 0)) * C * esz;
  const int64_t out_row = proj ? Wo * C * esz : 0;           // z row
  TORCH_CHECK(!se || (proj && !skip), "squeeze-excite needs the projection and no skip");
  // SE needs whole images (its mean is over the image)
  int64_t nb, no;  // not a structured binding: the lambdas below capture them
  std::tie(nb, no) = plan_chunks(B, Ho, K, s, in_row, out_row, budget, se != nullptr);
  const int64_t vrows = (no - 1) * s + K;  // buffer rows per image of a chunk
  const int64_t nthreads = at::get_num_threads();

  const int64_t nchunks_o = (Ho + no - 1) / no, nchunks = (B + nb - 1) / nb * nchunks_o;
  // Enough chunks for every thread: each thread runs whole chunks alone (no barriers, and
  // its GEMMs see all the chunk's pixels); else one chunk at a time with every thread.
  const bool par_chunks = nthreads > 1 && nchunks >= nthreads;

  AT_DISPATCH_FLOATING_TYPES(x_in.scalar_type(), "emo_expand_dw_proj", [&] {
    using T = scalar_t;
    const T* xp = x2.data_ptr<T>();
    const T* bep = be.defined() ? be.data_ptr<T>() : nullptr;
    const T* wdp = wd.data_ptr<T>();
    const T* bdp = bd.defined() ? bd.data_ptr<T>() : nullptr;
    T* op = out2.data_ptr<T>();
    // one chunk (images [b0, b0 + nb) or one image's output rows [o0, o0 + no)), its phases
    // split over nth threads; the buffers are the calling thread's
    auto process = [&](int64_t b0, int64_t o0, int64_t nth) {
        auto vbuf = workspace(0, nb * vrows * Wp * C, opts);
        at::Tensor zbuf = proj ? workspace(1, nb * no * Wo * C, opts).view({nb * no * Wo, C})
                               : at::Tensor();
        T* vb = vbuf.data_ptr<T>();
        const int64_t nbc = std::min(nb, B - b0);
        const int64_t noc = std::min(no, Ho - o0);
        if (pad > 0) {  // the left/right pad columns of the buffer rows (never written)
          for (int64_t r = 0; r < nbc * vrows; ++r) {
            std::fill(vb + r * Wp * C, vb + (r * Wp + pad) * C, T(0));
            std::fill(vb + (r * Wp + pad + W) * C, vb + (r + 1) * Wp * C, T(0));
          }
        }
        const int64_t v_lo = o0 * s - pad;                   // virtual row of buffer row 0
        const int64_t v_hi = (o0 + noc - 1) * s - pad + K;   // exclusive
        const int64_t r_lo = std::max<int64_t>(0, v_lo), r_hi = std::min(H, v_hi);
        const int64_t nr = r_hi - r_lo;  // real input rows per image (contiguous in x)
        // buffer rows outside the image are zero (top/bottom padding)
        for (int64_t b = 0; b < nbc; ++b)
          for (int64_t j = 0; j < v_hi - v_lo; ++j)
            if (j + v_lo < 0 || j + v_lo >= H) {
              T* row = vb + ((b * vrows + j) * Wp + pad) * C;
              std::fill(row, row + W * C, T(0));
            }
        // ---- phase 1: v rows (expansion GEMM + bias + act) into the padded buffer ----
        const int64_t G1 = nbc * nr;  // input rows of the chunk
        // first x pixel of chunk input row g (image b0 + g / nr, row r_lo + g % nr). One image's
        // nr rows are contiguous in x; consecutive images only when nr == H (k = 1 with stride 2
        // and even H reads H - 1 rows of each image): x is read in runs of `run` rows.
        auto xpix = [&](int64_t g) { return ((b0 + g / nr) * H + r_lo + g % nr) * W; };
        const int64_t run = nr == H ? G1 : nr;
        const bool cols1 = split == 2 || (split == 0 && nth > 1 && G1 * W < 96 * nth);
        const int64_t nt1 = cols1 ? nth : std::min(G1, nth);
        // destination of chunk pixel i (image row g = i / W of the chunk, column i % W) in the
        // padded buffer: the GEMM epilogue writes act(acc + bias) there
        std::vector<T*> vrow(expand ? G1 * W : 0);
        for (int64_t i = 0; i < static_cast<int64_t>(vrow.size()); ++i) {
          const int64_t g = i / W, b = g / nr, r = r_lo + g % nr;
          vrow[i] = vb + ((b * vrows + (r - v_lo)) * Wp + pad + i % W) * C;
        }
        auto phase1 = [&](int64_t t) {
          int64_t g0 = 0, g1 = G1, c0 = 0, c1 = C;
          if (cols1) std::tie(c0, c1) = split_range(0, C, nt1, t, Vectorized<T>::size());
          else std::tie(g0, g1) = split_range(0, G1, nt1, t);
          if (g0 >= g1 || c0 >= c1) return;
          if (expand) {
            using V = Vectorized<T>;
            for (int64_t g = g0; g < g1;) {  // rows [g, e) of the run starting at row r0
              const int64_t r0 = g - g % run, e = std::min(g1, r0 + run);
              T* const* dst = vrow.data() + r0 * W;
              auto epi = [&](int64_t i, int64_t n, V a, int64_t cnt) {
                bias_act<T>(a, bep, n, cnt, act).store(dst[i] + n, cnt);
              };
              emo_gemm::gemm<T>(xp + xpix(r0) * Cin, Cin, pexp.data_ptr<T>(), Cin, (g - r0) * W,
                                (e - r0) * W, c0, c1, epi);
              g = e;
            }
            return;
          }
          for (int64_t g = g0; g < g1; ++g) {
            const int64_t b = g / nr, r = r_lo + g % nr;
            T* dst = vb + ((b * vrows + (r - v_lo)) * Wp + pad) * C;
            copy_row<T>(xp + xpix(g) * Cin, dst, W, C, c0, c1);
          }
        };
        // ---- phase 2: depthwise (+ skip) and projection (+ residual) ----
        const int64_t G2 = nbc * noc;
        const int64_t y0 = (b0 * Ho + o0) * Wo;  // first output pixel
        const bool cols2 = split == 2 || (split == 0 && nth > 1 && G2 * Wo < 96 * nth);
        T* zb = proj ? zbuf.data_ptr<T>() : op + y0 * C;
        auto dw_rows = [&](int64_t g0, int64_t g1, int64_t c0, int64_t c1) {
          const T* rows[7];
          for (int64_t g = g0; g < g1; ++g) {
            const int64_t b = g / noc, oh = o0 + g % noc;
            const T* base = vb + (b * vrows + (oh - o0) * s) * Wp * C;
            for (int64_t kh = 0; kh < K; ++kh) rows[kh] = base + kh * Wp * C;
            const T* vskip = skip ? rows[pad] + pad * C : nullptr;
            dw_row_dispatch<T>(K, rows, wdp, bdp, vskip, zb + g * Wo * C, Wo, C, c0, c1, s);
          }
        };
        // out rows [g0, g1) of the chunk (Wo pixels each), columns [n0, n1): z Wp^T (+ residual),
        // the residual added in the GEMM epilogue; wp: the packed (maybe SE-scaled) weights
        auto proj_rows = [&](int64_t g0, int64_t g1, int64_t n0, int64_t n1, const T* wp) {
          using V = Vectorized<T>;
          T* o = op + y0 * Cout;
          const T* rp = res2.defined() ? res2.data_ptr<T>() + y0 * Cout : nullptr;
          auto epi = [&](int64_t i, int64_t n, V a, int64_t cnt) {
            if (rp) a = a + V::loadu(rp + i * Cout + n, cnt);
            a.store(o + i * Cout + n, cnt);
          };
          emo_gemm::gemm<T>(zb, C, wp, C, g0 * Wo, g1 * Wo, n0, n1, epi);
        };
        run_parts(nt1, phase1);
        if (se) {  // depthwise over rows into z, then per image: SE scale, projection over rows
          const int64_t nt2 = std::min(G2, nth);
          run_parts(nt2, [&](int64_t t) {
            auto [g0, g1] = split_range(0, G2, nt2, t);
            if (g0 < g1) dw_rows(g0, g1, 0, C);
          });
          const int64_t R = se->w1.size(0), HW = Ho * Wo;
          for (int64_t b = 0; b < nbc; ++b) {
            const T* zi = zb + b * HW * C;
            std::vector<double> mean(C, 0.0), hid(R);
            std::vector<T> racc(C);  // one row's channel sums, vectorized; rows summed in double
            for (int64_t oh = 0; oh < Ho; ++oh) {
              const T* zr = zi + oh * Wo * C;
              for (int64_t c = 0; c < C; c += Vectorized<T>::size()) {
                const int64_t cnt = std::min<int64_t>(Vectorized<T>::size(), C - c);
                Vectorized<T> a(T(0));
                for (int64_t ow = 0; ow < Wo; ++ow) a = a + Vectorized<T>::loadu(zr + ow * C + c, cnt);
                a.store(racc.data() + c, cnt);
              }
              for (int64_t c = 0; c < C; ++c) mean[c] += racc[c];
            }
            const T* w1 = se->w1.data_ptr<T>();
            const T* b1 = se->b1.data_ptr<T>();
            const T* w2 = se->w2.data_ptr<T>();
            const T* b2 = se->b2.data_ptr<T>();
            for (int64_t r = 0; r < R; ++r) {
              double h = b1[r];
              for (int64_t c = 0; c < C; ++c) h += w1[r * C + c] * (mean[c] / HW);
              hid[r] = se->act == ACT_SILU ? ssilu(h) : se->act == ACT_GELU ? sgelu(h) : h;
            }
            // the packed projection weights with row k (input channel k) scaled by s[k]
            const int64_t NP = emo_gemm::panel_width<T>(), P = emo_gemm::num_panels<T>(Cout);
            std::vector<T> wsc(P * C * NP);
            const T* pp = pproj.data_ptr<T>();
            for (int64_t c = 0; c < C; ++c) {
              double a = b2[c];
              for (int64_t r = 0; r < R; ++r) a += w2[c * R + r] * hid[r];
              const T sc = static_cast<T>(1.0 / (1.0 + std::exp(-a)));
              for (int64_t q = 0; q < P; ++q)
                for (int64_t j = 0; j < NP; ++j)
                  wsc[(q * C + c) * NP + j] = pp[(q * C + c) * NP + j] * sc;
            }
            const int64_t nt3 = std::min(noc, nth);
            run_parts(nt3, [&](int64_t t) {
              auto [r0, r1] = split_range(0, noc, nt3, t);
              if (r0 < r1) proj_rows(b * noc + r0, b * noc + r1, 0, Cout, wsc.data());
            });
          }
        } else if (!cols2) {
          const int64_t nt2 = std::min(G2, nth);
          run_parts(nt2, [&](int64_t t) {
            auto [g0, g1] = split_range(0, G2, nt2, t);
            if (g0 >= g1) return;
            dw_rows(g0, g1, 0, C);
            if (proj) proj_rows(g0, g1, 0, Cout, pproj.data_ptr<T>());
          });
        } else {
          run_parts(nth, [&](int64_t t) {
            auto [c0, c1] = split_range(0, C, nth, t, Vectorized<T>::size());
            if (c0 < c1) dw_rows(0, G2, c0, c1);
          });
          if (proj)
            run_parts(nth, [&](int64_t t) {
              auto [n0, n1] = split_range(0, Cout, nth, t, Vectorized<T>::size());
              if (n0 < n1) proj_rows(0, G2, n0, n1, pproj.data_ptr<T>());
            });
        }
    };
    if (par_chunks) {
      run_parts(nchunks, [&](int64_t c) { process(c / nchunks_o * nb, c % nchunks_o * no, 1); });
    } else {
      for (int64_t c = 0; c < nchunks; ++c) process(c / nchunks_o * nb, c % nchunks_o * no, nthreads);
    }
  });
  return out.permute({0, 3, 1, 2});
}

at::Tensor expand_dwconv_act(const at::Tensor& x, const c10::optional<at::Tensor>& w_exp,
                             const c10::optional<at::Tensor>& b_exp, const at::Tensor& w_dw,
                             const c10::optional<at::Tensor>& b_dw, int64_t act, int64_t stride,
                             bool skip, int64_t budget, int64_t split) {
  return expand_dwconv_act_proj(x, w_exp, b_exp, w_dw, b_dw, c10::nullopt, c10::nullopt, act,
                                stride, skip, budget, split);
}

// ---- window attention --------------------------------------------------------------------
// S[q][0:Lp) = Q[q] . Kt for NQ queries: per group of 4 key vectors, NQ x 4 accumulators
// over the d channels (Kt: d x Lp, Lp a multiple of 4 vectors).
template <typename T, int NQ>
inline void attn_scores(const T* Q, const T* Kt, T* S, int64_t d, int64_t Lp) {
  using V = Vectorized<T>;
  constexpr int64_t VS = V::size();
  for (int64_t j = 0; j < Lp; j += 4 * VS) {
    V acc[NQ][4];
    for (int q = 0; q < NQ; ++q)
      for (int i = 0; i < 4; ++i) acc[q][i] = V(T(0));
    for (int64_t c = 0; c < d; ++c) {
      const T* kr = Kt + c * Lp + j;
      const V k0 = V::loadu(kr), k1 = V::loadu(kr + VS), k2 = V::loadu(kr + 2 * VS),
              k3 = V::loadu(kr + 3 * VS);
#pragma GCC unroll 4
      for (int q = 0; q < NQ; ++q) {
        const V qv(Q[q * d + c]);
        acc[q][0] = at::vec::fmadd(qv, k0, acc[q][0]);
        acc[q][1] = at::vec::fmadd(qv, k1, acc[q][1]);
        acc[q][2] = at::vec::fmadd(qv, k2, acc[q][2]);
        acc[q][3] = at::vec::fmadd(qv, k3, acc[q][3]);
      }
    }
    for (int q = 0; q < NQ; ++q)
      for (int i = 0; i < 4; ++i) acc[q][i].store(S + q * Lp + j + i * VS);
  }
}

// out[pix[q]][c0 : c0 + d) = sum_j P[q][j] Vb[j] for NQ queries (P: normalised softmax rows;
// pix < 0: a padded query, cropped away), 2 channel vectors at a time: NQ x 2 accumulators over
// the L keys. Reads P (NQ rows of Lp) and Vb (L x dp), writes NQ x d outputs.
template <typename T, int NQ>
inline void attn_pv(const T* P, const T* Vb, const int64_t* pix, T* out,
                    int64_t img, int64_t C, int64_t c0, int64_t L, int64_t Lp, int64_t d,
                    int64_t dp) {
  using V = Vectorized<T>;
  constexpr int64_t VS = V::size();
  for (int64_t c = 0; c < dp; c += 2 * VS) {
    const bool two = c + VS < dp;
    V acc[NQ][2];
    for (int q = 0; q < NQ; ++q) acc[q][0] = acc[q][1] = V(T(0));
    for (int64_t j = 0; j < L; ++j) {
      const V v0 = V::loadu(Vb + j * dp + c);
      const V v1 = two ? V::loadu(Vb + j * dp + c + VS) : V(T(0));
#pragma GCC unroll 4
      for (int q = 0; q < NQ; ++q) {
        const V p(P[q * Lp + j]);
        acc[q][0] = at::vec::fmadd(p, v0, acc[q][0]);
        acc[q][1] = at::vec::fmadd(p, v1, acc[q][1]);
      }
    }
    for (int q = 0; q < NQ; ++q) {
      if (pix[q] < 0) continue;
      T* o = out + (img + pix[q]) * C + c0;
      acc[q][0].store(o + c, std::min<int64_t>(VS, d - c));
      if (two) acc[q][1].store(o + c + VS, std::min<int64_t>(VS, d - c - VS));
    }
  }
}

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
  // keys padded to a multiple of 4 vectors (the score blocks), channels to whole vectors
  const int64_t Lp = (L + 4 * VS - 1) / (4 * VS) * (4 * VS), dp = (d + VS - 1) / VS * VS;
  const bool unit = qs[1] == 1 && ks[1] == 1 && vs[1] == 1;
  at::parallel_for(0, B * n1 * n2 * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> Qb(L * d), Kt(d * Lp), Vb(L * dp), S(L * Lp);
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
            if (unit) {  // channels contiguous (NHWC): vector copies for q and v
              for (int64_t c = 0; c < d; c += VS) {
                const int64_t cnt = std::min<int64_t>(VS, d - c);
                (V::loadu(qp + c, cnt) * V(scale)).store(Qb.data() + t * d + c, cnt);
                V::loadu(vp + c, cnt).store(Vb.data() + t * dp + c, cnt);
              }
              for (int64_t c = 0; c < d; ++c) Kt[c * Lp + t] = kp[c];
            } else {
              for (int64_t c = 0; c < d; ++c) {
                Qb[t * d + c] = qp[c * qs[1]] * scale;
                Kt[c * Lp + t] = kp[c * ks[1]];
                Vb[t * dp + c] = vp[c * vs[1]];
              }
            }
          } else {
            pix[t] = -1;
            for (int64_t c = 0; c < d; ++c) Kt[c * Lp + t] = kpad ? kpad[c0 + c] : T(0);
          }
        }
      // scores S = Q K^T for blocks of 4 queries x 4 key vectors (16 independent FMA chains)
      int64_t t0 = 0;
      for (; t0 + 4 <= L; t0 += 4) attn_scores<T, 4>(Qb.data() + t0 * d, Kt.data(), S.data() + t0 * Lp, d, Lp);
      for (; t0 < L; ++t0) attn_scores<T, 1>(Qb.data() + t0 * d, Kt.data(), S.data() + t0 * Lp, d, Lp);
      // softmax of each row over the L real keys (lanes past L are -inf, then exactly 0)
      const T ninf = -std::numeric_limits<T>::infinity();
      for (int64_t t = 0; t < L; ++t) {
        T* st = S.data() + t * Lp;
        for (int64_t j = L; j < Lp; ++j) st[j] = ninf;
        V mv = V::loadu(st);
        for (int64_t j = VS; j < Lp; j += VS) mv = at::vec::maximum(mv, V::loadu(st + j));
        const V mxv(at::vec::vec_reduce_all<T>(
            [](V& a, V& b) { return at::vec::maximum(a, b); }, mv));
        V sv(T(0));
        for (int64_t j = 0; j < Lp; j += VS) {
          V e = vexp(V::loadu(st + j) - mxv);
          if (j + VS > L) e = V::blendv(e, V(T(0)), V::loadu(st + j) == V(ninf));
          e.store(st + j);
          sv = sv + e;
        }
        // normalise the row before P V (as torch's softmax-then-matmul does): dividing the
        // weighted sum afterwards overflows when sum_j e_j v_j leaves the range of T although
        // the average does not (v ~ 3e38 in float)
        const V r(T(1) / at::vec::vec_reduce_all<T>([](V& a, V& b) { return a + b; }, sv));
        for (int64_t j = 0; j < Lp; j += VS) (V::loadu(st + j) * r).store(st + j);
      }
      // O = P V for blocks of 4 queries x 2 channel vectors, written to NHWC
      for (t0 = 0; t0 + 4 <= L; t0 += 4)
        attn_pv<T, 4>(S.data() + t0 * Lp, Vb.data(), pix.data() + t0, out, b * H * W, C, c0,
                      L, Lp, d, dp);
      for (; t0 < L; ++t0)
        attn_pv<T, 1>(S.data() + t0 * Lp, Vb.data(), pix.data() + t0, out, b * H * W, C, c0,
                      L, Lp, d, dp);
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
  TORCH_CHECK(window_size > 0, "window_size must be positive");
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

// LayerNorm over the channels of every pixel of a channels_last (B, C, H, W) tensor: per
// pixel, mean and variance (two passes over its C contiguous values, in vectors), then
// (x - mean) * rstd * w + b. Reads x once, writes y once; rows split over the threads when
// there are enough of them to pay for a parallel region.
at::Tensor layer_norm_nhwc(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                           double eps) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), M = B * H * W;
  auto out = at::empty({B, H, W, C}, x.options());
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

// One whole iRMB forward (inference, BatchNorms folded): LayerNorm over channels (optional),
// qk GEMM + strided-window attention (optional), then the fused expansion / depthwise /
// projection body with the residual, or (squeeze-excite: the stem block) the body up to the
// depthwise pass, SE, and the projection. One call per block: no Python between the steps.
// pw_*: the weights prepared ahead (as in irmb_chain's tuples), or None: prepared here.
at::Tensor irmb_inference(const at::Tensor& x_in, const c10::optional<at::Tensor>& ln_w,
                          const c10::optional<at::Tensor>& ln_b, double eps,
                          const c10::optional<at::Tensor>& w_qk,
                          const c10::optional<at::Tensor>& b_qk, int64_t head_dim,
                          int64_t window_size, double scale,
                          const c10::optional<at::Tensor>& w_exp,
                          const c10::optional<at::Tensor>& b_exp, const at::Tensor& w_dw,
                          const c10::optional<at::Tensor>& b_dw, const at::Tensor& w_proj,
                          int64_t act, int64_t stride, bool skip,
                          const c10::optional<at::Tensor>& se_w1,
                          const c10::optional<at::Tensor>& se_b1,
                          const c10::optional<at::Tensor>& se_w2,
                          const c10::optional<at::Tensor>& se_b2, int64_t se_act, int64_t budget,
                          int64_t split, const c10::optional<at::Tensor>& pw_qk,
                          const c10::optional<at::Tensor>& pw_exp,
                          const c10::optional<at::Tensor>& pw_dw,
                          const c10::optional<at::Tensor>& pw_proj) {
  TORCH_CHECK(x_in.device().is_cpu(), "emo_kernels._C_cpu: expected CPU tensors");
  const Prepared pre{pw_exp.value_or(at::Tensor()), pw_dw.value_or(at::Tensor()),
                     pw_proj.value_or(at::Tensor())};
  TORCH_CHECK(x_in.dim() == 4, "x must be (B, C, H, W)");
  const int64_t B = x_in.size(0), C = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  auto x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor y = x;
  if (ln_w.has_value() && ln_w->defined()) {  // LN2d: LayerNorm over the channels of each pixel
    TORCH_CHECK(ln_w->numel() == C && (!ln_b.has_value() || !ln_b->defined() || ln_b->numel() == C),
                "ln_weight / ln_bias must have C elements");
    y = layer_norm_nhwc(x, ln_w->contiguous(),
                        ln_b.has_value() && ln_b->defined() ? ln_b->contiguous() : at::Tensor(), eps);
  }
  if (w_qk.has_value() && w_qk->defined()) {
    TORCH_CHECK(w_qk->numel() == 2 * C * C, "w_qk must be (2C, C, 1, 1)");
    const int64_t M = B * H * W, N = 2 * C;
    const auto y2 = nhwc_view(y).reshape({M, C}).contiguous();
    const auto pqk = packed_or_pack(*w_qk, pw_qk);
    const bool bias = b_qk.has_value() && b_qk->defined();
    const auto bq = bias ? b_qk->contiguous() : at::Tensor();
    at::Tensor qk = at::empty({M, N}, y2.options());
    const int64_t nthreads = at::get_num_threads();
    // few pixels (batch 1): split the output columns over the threads, else the rows
    const bool cols = M < 512 * nthreads;
    AT_DISPATCH_FLOATING_TYPES(y2.scalar_type(), "emo_qk", [&] {
      using T = scalar_t;
      using V = Vectorized<T>;
      const T* bp = bias ? bq.data_ptr<T>() : nullptr;
      T* o = qk.data_ptr<T>();
      auto epi = [&](int64_t i, int64_t n, V a, int64_t cnt) {
        bias_act<T>(a, bp, n, cnt, ACT_NONE).store(o + i * N + n, cnt);
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
    c10::optional<at::Tensor> kpad;
    if (b_qk.has_value() && b_qk->defined()) kpad = b_qk->narrow(0, C, C);
    y = window_attention(qk4.narrow(1, 0, C), qk4.narrow(1, C, C), y, kpad, head_dim,
                         window_size, scale);
  }
  c10::optional<at::Tensor> res;
  if (skip) res = x;
  if (!(se_w1.has_value() && se_w1->defined()))
    return expand_dwconv_act_proj(y, w_exp, b_exp, w_dw, b_dw, w_proj, res, act, stride, skip,
                                  budget, split, nullptr, pre);
  // squeeze-excite between the depthwise pass and the projection (no skip: checked in Python),
  // per image inside the fused body: its channel scale is folded into the projection weights
  const int64_t Cm = w_dw.size(0);
  SEArgs se{se_w1->reshape({se_w1->size(0), Cm}).contiguous(), se_b1->contiguous(),
            se_w2->reshape({Cm, se_w1->size(0)}).contiguous(), se_b2->contiguous(), se_act};
  return expand_dwconv_act_proj(y, w_exp, b_exp, w_dw, b_dw, w_proj, c10::nullopt, act, stride,
                                false, budget, split, &se, pre);
}

// A chain of irmb_inference calls (one per block, each block's arguments as a tuple in the
// order of irmb_inference's after x up to se_act, then the prepared weights: w_qk and w_exp
// packed by pack_weight, w_dw as (k*k, Cmid), w_proj packed; each may be None), in one call:
// returns the outputs of the blocks listed in `outputs` (indices, increasing). No Python
// between blocks, no weight repacking per call.
using OptT = c10::optional<at::Tensor>;
using BlockArgs = std::tuple<OptT, OptT, double, OptT, OptT, int64_t, int64_t, double, OptT, OptT,
                             at::Tensor, OptT, at::Tensor, int64_t, int64_t, bool, OptT, OptT, OptT,
                             OptT, int64_t, OptT, OptT, OptT, OptT>;

std::vector<at::Tensor> irmb_chain(const at::Tensor& x, const std::vector<BlockArgs>& blocks,
                                   const std::vector<int64_t>& outputs, int64_t budget,
                                   int64_t split) {
  std::vector<at::Tensor> outs;
  at::Tensor y = x;
  size_t next = 0;
  for (size_t i = 0; i < blocks.size(); ++i) {
    const auto& a = blocks[i];
    y = irmb_inference(y, std::get<0>(a), std::get<1>(a), std::get<2>(a), std::get<3>(a),
                       std::get<4>(a), std::get<5>(a), std::get<6>(a), std::get<7>(a),
                       std::get<8>(a), std::get<9>(a), std::get<10>(a), std::get<11>(a),
                       std::get<12>(a), std::get<13>(a), std::get<14>(a), std::get<15>(a),
                       std::get<16>(a), std::get<17>(a), std::get<18>(a), std::get<19>(a),
                       std::get<20>(a), budget, split, std::get<21>(a), std::get<22>(a),
                       std::get<23>(a), std::get<24>(a));
    if (next < outputs.size() && outputs[next] == static_cast<int64_t>(i)) {
      outs.push_back(y);
      ++next;
    }
  }
  TORCH_CHECK(next == outputs.size(), "irmb_chain: output indices must be increasing block indices");
  return outs;
}

// act(x W^T + bias) for x (M, K): the GEMM kernel on its own (for the tests).
at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& packed,
                  const c10::optional<at::Tensor>& bias, int64_t act) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2, "linear: x must be a CPU (M, K) tensor");
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), "linear: x and w must share a dtype");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  TORCH_CHECK(w.numel() == N * K, "linear: w must be (N, K)");
  const auto wp = packed_or_pack(w, packed);
  const auto xc = x.contiguous();
  auto out = at::empty({M, N}, x.options());
  at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "emo_linear", [&] {
    using T = scalar_t;
    using V = Vectorized<T>;
    T* o = out.data_ptr<T>();
    const T* bp = b.defined() ? b.data_ptr<T>() : nullptr;
    auto epi = [&](int64_t m, int64_t n, V acc, int64_t cnt) {
      bias_act<T>(acc, bp, n, cnt, act).store(o + m * N + n, cnt);
    };
    emo_gemm::gemm<T>(xc.data_ptr<T>(), K, wp.data_ptr<T>(), K, 0, M, 0, N, epi);
  });
  return out;
}

std::string isa() { return EMO_STR(CPU_CAPABILITY); }

}  // namespace

// Every compute function releases the GIL while it runs (`nogil`): pybind11 converts the
// arguments to C++ (at::Tensor, tuples, vectors) before, and the result back to Python after,
// with the GIL held; in between no Python object is touched. Concurrent calls from several
// Python threads share nothing mutable: scratch buffers are per OS thread (workspace()), every
// other buffer per call.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.doc() = "emo_kernels CPU backend (inference only, NHWC)";
  m.def("expand_dwconv_act", &expand_dwconv_act, "expand 1x1 + act + depthwise + SiLU (+skip)",
        py::arg("x"), py::arg("w_exp"), py::arg("b_exp"), py::arg("w_dw"), py::arg("b_dw"),
        py::arg("act"), py::arg("stride"), py::arg("skip"), py::arg("budget"), py::arg("split"),
        nogil);
  m.def("expand_dwconv_act_proj",
        [](const at::Tensor& x, const c10::optional<at::Tensor>& w_exp,
           const c10::optional<at::Tensor>& b_exp, const at::Tensor& w_dw,
           const c10::optional<at::Tensor>& b_dw, const c10::optional<at::Tensor>& w_proj,
           const c10::optional<at::Tensor>& residual, int64_t act, int64_t stride, bool skip,
           int64_t budget, int64_t split) {
          return expand_dwconv_act_proj(x, w_exp, b_exp, w_dw, b_dw, w_proj, residual, act,
                                        stride, skip, budget, split);
        },
        "expand_dwconv_act followed by the 1x1 projection (+ residual), chunked over images",
        py::arg("x"), py::arg("w_exp"), py::arg("b_exp"), py::arg("w_dw"), py::arg("b_dw"),
        py::arg("w_proj"), py::arg("residual"), py::arg("act"), py::arg("stride"),
        py::arg("skip"), py::arg("budget"), py::arg("split"), nogil);
  m.def("window_attention", &window_attention, "EMO strided-window attention", py::arg("q"),
        py::arg("k"), py::arg("v"), py::arg("k_pad"), py::arg("head_dim"),
        py::arg("window_size"), py::arg("scale"), nogil);
  m.def("irmb_inference", &irmb_inference, "one whole iRMB forward (inference)", py::arg("x"),
        py::arg("ln_weight"), py::arg("ln_bias"), py::arg("eps"), py::arg("w_qk"),
        py::arg("b_qk"), py::arg("head_dim"), py::arg("window_size"), py::arg("scale"),
        py::arg("w_exp"), py::arg("b_exp"), py::arg("w_dw"), py::arg("b_dw"), py::arg("w_proj"),
        py::arg("act"), py::arg("stride"), py::arg("skip"), py::arg("se_w1"), py::arg("se_b1"),
        py::arg("se_w2"), py::arg("se_b2"), py::arg("se_act"), py::arg("budget"),
        py::arg("split"), py::arg("pw_qk") = py::none(), py::arg("pw_exp") = py::none(),
        py::arg("pw_dw") = py::none(), py::arg("pw_proj") = py::none(), nogil);
  m.def("irmb_chain", &irmb_chain, "irmb_inference over a chain of blocks", py::arg("x"),
        py::arg("blocks"), py::arg("outputs"), py::arg("budget"), py::arg("split"), nogil);
  m.def("pack_weight", &pack_weight, "a conv weight (N, K[, 1, 1]) packed for the GEMM kernel",
        py::arg("w"), nogil);
  m.def("linear", &linear, "act(x w^T + bias) by the packed-weight GEMM kernel", py::arg("x"),
        py::arg("w"), py::arg("packed"), py::arg("bias"), py::arg("act"), nogil);
  m.def("isa", &isa, "the CPU_CAPABILITY this file was compiled for");
}
