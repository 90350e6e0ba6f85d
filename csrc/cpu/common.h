// Shared pieces of the CPU backend (csrc/cpu/*.cpp): vector math and activations, the
// depthwise geometry, per-thread workspaces, NaN poisoning (tests), thread splitting, and the
// declarations the op files share. Inference only, NHWC.
//
// Every file is compiled once per ISA variant (AVX512, AVX2, DEFAULT: emo_kernels/_build.py):
// at::vec's width follows CPU_CAPABILITY, and EMO_CPU_NS (e.g. emo_kernels_cpu_avx2) names
// both the C++ namespace of this variant's code and the torch.library namespace of its ops, so
// that several variants can live in one process (emo_kernels/_ext.py loads the best one the CPU
// supports; tests load the others) without sharing a symbol.
#pragma once
#include "../geometry.h"

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#ifndef EMO_CPU_NS
#error "compile with -DEMO_CPU_NS=emo_kernels_cpu_<isa> (emo_kernels/_build.py)"
#endif
#define EMO_STR2(x) #x
#define EMO_STR(x) EMO_STR2(x)

namespace EMO_CPU_NS {

using at::vec::Vectorized;
using OptT = c10::optional<at::Tensor>;

inline bool has(const OptT& t) { return t.has_value() && t->defined(); }


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

// ---- depthwise geometry: the one formula of the padding and output size ----------------------
// k x k depthwise conv with stride s and padding ceil((k - s) / 2) on an H x W map: Ho x Wo
// outputs; the zero-padded input buffer rows are Wp = W + 2 pad wide (every tap in bounds).
struct DwGeometry {
  int64_t K, s, pad, Ho, Wo, Wp;
};
inline DwGeometry dw_geometry(int64_t H, int64_t W, int64_t K, int64_t s) {
  const int64_t pad = emo::dw_padding(K, s);
  return {K, s, pad, emo::dw_out_size(H, K, s), emo::dw_out_size(W, K, s), W + 2 * pad};
}

inline at::Tensor nhwc_view(const at::Tensor& t) {  // (B, C, H, W) channels_last -> (B, H, W, C)
  return t.permute({0, 2, 3, 1});
}

// ---- NaN poisoning (tests: emo_kernels.testing.poison_cpu_outputs) ---------------------------
// While on, every output and every scratch buffer (workspace(), per-call buffers) is filled with
// NaN before the kernels write it: a value read before it is written shows up as NaN. Off by
// default (no cost but one relaxed atomic load per buffer).
bool poisoning();
void set_poison(bool on);
template <typename T>
inline T scratch_fill() {  // initial value of a per-call scratch vector
  return poisoning() ? std::numeric_limits<T>::quiet_NaN() : T(0);
}
// at::empty, NaN-filled while poisoning
at::Tensor new_empty(at::IntArrayRef sizes, const at::TensorOptions& opts);

// Scratch buffer `slot` (0 or 1) of the calling OS thread, kept between calls (grow-only): a
// fresh multi-MB allocation per call costs page faults on every call (glibc hands large blocks
// back to the kernel). Returns its first numel elements (contents undefined: NaN while
// poisoning), reallocating it when too small. thread_local, so never shared: concurrent calls
// from several Python threads (or their OpenMP workers) are on distinct OS threads; a thread
// uses a slot for one chunk at a time.
at::Tensor workspace(int slot, int64_t numel, const at::TensorOptions& opts);

// ---- thread splitting ------------------------------------------------------------------------
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
// epilogue of the expansion and qk GEMMs (and of linear).
template <typename T>
inline Vectorized<T> bias_act(Vectorized<T> a, const T* bias, int64_t n, int64_t cnt,
                              int64_t act) {
  if (bias) a = a + Vectorized<T>::loadu(bias + n, cnt);
  if (act == ACT_SILU) return vsilu(a);
  if (act == ACT_GELU) return vgelu(a);
  return a;
}

inline void check_float(const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu(), "emo_kernels cpu: expected CPU tensors");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
              "emo_kernels cpu: float32 or float64 only");
}

// ---- what the op files share (linear.cpp, expand_dwconv_act.cpp, window_attention.cpp) --------
// A conv weight (N, K[, 1, 1]) packed into gemm.h's column panels: (num_panels, K, panel_width).
at::Tensor pack_weight(const at::Tensor& w);
// The packed form of w: `packed` if given (checked against w's shape), else packed now.
at::Tensor packed_or_pack(const at::Tensor& w, const OptT& packed);
at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const OptT& packed, const OptT& bias,
                  int64_t act);

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

// expand_dwconv_act.cpp: the fused non-attention body (see there), with the optional
// projection (+ residual) and squeeze-excite
at::Tensor expand_dwconv_act_proj(const at::Tensor& x, const OptT& w_exp, const OptT& b_exp,
                                  const at::Tensor& w_dw, const OptT& b_dw, const OptT& w_proj,
                                  const OptT& residual, int64_t act, int64_t stride, bool skip,
                                  int64_t budget, int64_t split, const SEArgs* se = nullptr,
                                  const Prepared& pre = Prepared());
at::Tensor expand_dwconv_act(const at::Tensor& x, const OptT& w_exp, const OptT& b_exp,
                             const at::Tensor& w_dw, const OptT& b_dw, int64_t act,
                             int64_t stride, bool skip, int64_t budget, int64_t split);
at::Tensor window_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const OptT& k_pad, int64_t head_dim, int64_t window_size,
                            double scale, const OptT& v_pad = c10::nullopt,
                            int64_t partition = 0);
// irmb_inference.cpp: one block / a chain of blocks, arguments in the flat lists of BlockArgs
at::Tensor irmb_inference(const at::Tensor& x, const std::vector<OptT>& tensors,
                          at::IntArrayRef ints, at::ArrayRef<double> floats, int64_t budget,
                          int64_t split);
std::vector<at::Tensor> irmb_chain(const at::Tensor& x, const std::vector<OptT>& tensors,
                                   at::IntArrayRef ints, at::ArrayRef<double> floats,
                                   at::IntArrayRef outputs, int64_t budget, int64_t split);

}  // namespace EMO_CPU_NS
