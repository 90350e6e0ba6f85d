// Small-GEMM kernel of the CPU backend: C = A W^T for the iRMB's 1x1 convolutions (A: rows of
// NHWC pixels, W: a conv weight (N, K)), with the weights packed once into column panels and
// the bias / activation / residual applied by the caller's epilogue on the accumulators.
//
// Why not at::mm (MKL): the iRMB's GEMMs are small (batch 1: M = 49..3136 pixels per thread,
// K and N = 24..1280 channels), so MKL packs the weight operand on every call (~20% of its
// time in these shapes, measured with perf) and the result needs a second pass for bias and
// activation. Here the packed weights are made once per model (irmb_chain) and the epilogue
// runs on registers, so each GEMM reads A once per panel and writes its output once.
//
// Register blocking: kMR rows x kNV vectors of accumulators (AVX-512: 12 x 2 zmm = 24 of 32
// registers; AVX2: 6 x 2 of 16), the A element broadcast, the kNV panel vectors loaded once
// per k and used kMR times.
#pragma once
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>

// inside the variant's namespace (EMO_CPU_NS, common.h): each ISA's instantiations stay apart
namespace EMO_CPU_NS {
namespace emo_gemm {

using at::vec::Vectorized;

#if defined(CPU_CAPABILITY_AVX512)
constexpr int kMR = 12;
#elif defined(CPU_CAPABILITY_AVX2)
constexpr int kMR = 6;
#else
constexpr int kMR = 4;
#endif
constexpr int kNV = 2;

// columns per panel
template <typename T>
constexpr int64_t panel_width() { return kNV * Vectorized<T>::size(); }

template <typename T>
constexpr int64_t num_panels(int64_t N) { return (N + panel_width<T>() - 1) / panel_width<T>(); }

// w: (N, K) row-major -> out: (num_panels(N), K, NP); out[p][k][j] = w[p * NP + j][k], zero
// for columns past N (so that the kernel loads whole vectors without masks).
template <typename T>
void pack(const T* w, int64_t N, int64_t K, T* out) {
  constexpr int64_t NP = panel_width<T>();
  for (int64_t p = 0; p < num_panels<T>(N); ++p)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < NP; ++j) {
        const int64_t n = p * NP + j;
        out[(p * K + k) * NP + j] = n < N ? w[n * K + k] : T(0);
      }
}

// MR rows x NV vectors: acc = A[0:MR, :] Bp[:, 0:NV*VS], then epi(i, n, acc, cnt) for every
// row i < MR and vector (the last one holds `last` valid columns).
template <typename T, int MR, int NV, typename Epi>
inline void micro(const T* A, int64_t lda, const T* Bp, int64_t K, int64_t m0, int64_t n,
                  int64_t last, const Epi& epi) {
  using V = Vectorized<T>;
  constexpr int64_t VS = V::size(), NP = panel_width<T>();
  V acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 2
    for (int j = 0; j < NV; ++j) acc[i][j] = V(T(0));
  for (int64_t k = 0; k < K; ++k) {
    V b[NV];
#pragma GCC unroll 2
    for (int j = 0; j < NV; ++j) b[j] = V::loadu(Bp + k * NP + j * VS);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const V a(A[i * lda + k]);
#pragma GCC unroll 2
      for (int j = 0; j < NV; ++j) acc[i][j] = at::vec::fmadd(a, b[j], acc[i][j]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 2
    for (int j = 0; j < NV; ++j) epi(m0 + i, n + j * VS, acc[i][j], j == NV - 1 ? last : VS);
}

template <typename T, int NV, int MR, typename Epi>
inline void micro_rows(int mr, const T* A, int64_t lda, const T* Bp, int64_t K, int64_t m0,
                       int64_t n, int64_t last, const Epi& epi) {
  if constexpr (MR > 0) {
    if (mr == MR) return micro<T, MR, NV>(A, lda, Bp, K, m0, n, last, epi);
    micro_rows<T, NV, MR - 1>(mr, A, lda, Bp, K, m0, n, last, epi);
  }
}

// Rows [m0, m1) x columns [n0, n1) of A W^T, W packed by pack() (N columns, K deep); A row m
// at A + m * lda. n0 must be a multiple of the vector size. Each result vector goes through
// epi(m, n, acc, cnt): columns [n, n + cnt) of row m (cnt < VS only at n1). Panels outer, rows
// inner: a panel (K * NP elements, <= 160 KB for EMO) stays in L2 while all rows pass by.
template <typename T, typename Epi>
void gemm(const T* A, int64_t lda, const T* Wp, int64_t K, int64_t m0, int64_t m1, int64_t n0,
          int64_t n1, const Epi& epi) {
  constexpr int64_t VS = Vectorized<T>::size(), NP = panel_width<T>();
  const int64_t nblk = (m1 - m0 + kMR - 1) / kMR;
  for (int64_t n = n0; n < n1;) {
    const int64_t p = n / NP, off = n % NP;  // off: a whole number of vectors
    const int64_t width = std::min(NP - off, n1 - n);
    const int64_t nv = (width + VS - 1) / VS, last = width - (nv - 1) * VS;
    const T* B = Wp + p * K * NP + off;
    for (int64_t blk = 0; blk < nblk; ++blk) {  // near-equal row blocks: no 1-row tail block
      const int64_t m = m0 + blk * (m1 - m0) / nblk;
      const int mr = static_cast<int>(m0 + (blk + 1) * (m1 - m0) / nblk - m);
      if (nv == kNV) micro_rows<T, kNV, kMR>(mr, A + m * lda, lda, B, K, m, n, last, epi);
      else micro_rows<T, 1, kMR>(mr, A + m * lda, lda, B, K, m, n, last, epi);
    }
    n += width;
  }
}

}  // namespace emo_gemm
}  // namespace EMO_CPU_NS
