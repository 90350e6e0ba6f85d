// Shared helpers for the emo_kernels CUDA kernels. Free of PyTorch headers.
//
// Every kernel in this directory is written as an element function
//     __host__ __device__ void f(const Args&, int64_t idx)
// that computes one output element (or one partial sum) from global memory only: no shared
// memory, no warp intrinsics. A __global__ wrapper runs it over a grid-stride loop on the GPU,
// and a plain host loop runs the very same function over CPU buffers ("emulation"), which is
// how the kernel math is tested on machines without a GPU (tests/backends/test_cuda_emulation.py).
#pragma once

#include <cstdint>
#include <cmath>
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include "emo_kernels.h"

#define EMO_HD __host__ __device__ __forceinline__

namespace emo {

// Accumulation type: fp32 for fp16/bf16/fp32, fp64 for fp64.
template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };

template <typename A, typename T> EMO_HD A to_acc(T x) { return static_cast<A>(x); }
template <> EMO_HD float to_acc<float, __half>(__half x) { return __half2float(x); }
template <> EMO_HD float to_acc<float, __nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T, typename A> EMO_HD T from_acc(A x) { return static_cast<T>(x); }
template <> EMO_HD __half from_acc<__half, float>(float x) { return __float2half_rn(x); }
template <> EMO_HD __nv_bfloat16 from_acc<__nv_bfloat16, float>(float x) { return __float2bfloat16_rn(x); }

EMO_HD float e_exp(float x) { return expf(x); }
EMO_HD double e_exp(double x) { return exp(x); }
EMO_HD float e_erf(float x) { return erff(x); }
EMO_HD double e_erf(double x) { return erf(x); }
EMO_HD float e_max(float a, float b) { return a > b ? a : b; }
EMO_HD double e_max(double a, double b) { return a > b ? a : b; }

template <typename A> EMO_HD A sigmoid(A x) { return A(1) / (A(1) + e_exp(-x)); }
template <typename A> EMO_HD A silu(A x) { return x * sigmoid(x); }
template <typename A> EMO_HD A silu_grad(A x) {  // d silu / dx
  A s = sigmoid(x);
  return s * (A(1) + x * (A(1) - s));
}

// act: 0 none, 1 silu, 2 gelu (exact erf form). Codes match emo_kernels.h ActKind.
template <typename A> EMO_HD A act_fwd(int act, A u) {
  if (act == ACT_SILU) return silu(u);
  if (act == ACT_GELU) return A(0.5) * u * (A(1) + e_erf(u * A(0.70710678118654752440)));
  return u;
}
template <typename A> EMO_HD A act_grad(int act, A u) {
  if (act == ACT_SILU) return silu_grad(u);
  if (act == ACT_GELU) {
    A cdf = A(0.5) * (A(1) + e_erf(u * A(0.70710678118654752440)));
    A pdf = e_exp(A(-0.5) * u * u) * A(0.39894228040143267794);  // 1/sqrt(2 pi)
    return cdf + u * pdf;
  }
  return A(1);
}

// ---- running an element function over [0, n) on the GPU or on the host ----------------------

constexpr int kThreads = 256;

// __launch_bounds__ caps register use so that a block of kThreads always fits on an SM
// (the attention kernels keep up to 4 head vectors of 64 in registers).
template <typename F, typename Args>
__global__ void __launch_bounds__(kThreads) grid_stride_kernel(Args args, int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    F::run(args, i);
}

// Returns nullptr on success, else a static error string.
template <typename F, typename Args>
const char* run_elementwise(const Args& args, int64_t n, const Launch& launch) {
  if (n <= 0) return nullptr;
  if (!launch.on_device) {
    for (int64_t i = 0; i < n; ++i) F::run(args, i);
    return nullptr;
  }
  int64_t blocks = (n + kThreads - 1) / kThreads;
  if (blocks > 65536) blocks = 65536;
  grid_stride_kernel<F, Args><<<(unsigned)blocks, kThreads, 0, (cudaStream_t)launch.stream>>>(args, n);
  cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace emo

namespace emo {
EMO_HD float e_log(float x) { return logf(x); }
EMO_HD double e_log(double x) { return log(x); }
}  // namespace emo

// Runs BODY with `T` (storage type) and `A` (accumulation type) bound to the dtype `dt`.
#define EMO_DISPATCH(dt, ...)                                                    \
  [&]() -> const char* {                                                         \
    switch (dt) {                                                                \
      case ::emo::DT_F32: { using T = float; using A = float; __VA_ARGS__ }      \
      case ::emo::DT_F64: { using T = double; using A = double; __VA_ARGS__ }    \
      case ::emo::DT_F16: { using T = __half; using A = float; __VA_ARGS__ }     \
      case ::emo::DT_BF16: { using T = __nv_bfloat16; using A = float; __VA_ARGS__ } \
    }                                                                            \
    return "emo_kernels: unsupported dtype code";                                \
  }()
