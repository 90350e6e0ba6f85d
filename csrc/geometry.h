// EMO's convolution geometry, the one C++ copy shared by the CPU (csrc/cpu/) and CUDA
// (csrc/cuda/) kernels; the Python copy is emo_kernels/formulas.py (dw_padding, dw_out_size).
#pragma once
#include <cstdint>

namespace emo {

// EMO's ConvNormAct padding: ceil((k - stride) / 2)
inline constexpr int64_t dw_padding(int64_t k, int64_t stride) { return (k - stride + 1) / 2; }

// output length of a k-tap convolution with that padding over n inputs
inline constexpr int64_t dw_out_size(int64_t n, int64_t k, int64_t stride) {
  return (n + 2 * dw_padding(k, stride) - k) / stride + 1;
}

}  // namespace emo
