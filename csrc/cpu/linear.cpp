// The ops of the packed-weight GEMM kernel (gemm.h) on its own: pack_weight (a conv weight
// into column panels; irmb_chain's prepared weights) and linear (act(x W^T + bias), for tests).
#include "common.h"
#include "gemm.h"

namespace EMO_CPU_NS {

at::Tensor pack_weight(const at::Tensor& w) {
  TORCH_CHECK(w.device().is_cpu() && w.dim() >= 2, "pack_weight: a CPU weight (N, K[, 1, 1])");
  check_float(w);
  const int64_t N = w.size(0), K = w.numel() / std::max<int64_t>(N, 1);
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "emo_pack_weight", [&] {
    using T = scalar_t;
    c10::InferenceMode normal(false);  // usable outside InferenceMode too
    out = new_empty({emo_gemm::num_panels<T>(N), K, emo_gemm::panel_width<T>()}, w.options());
    const auto wc = w.reshape({N, K}).contiguous();
    emo_gemm::pack<T>(wc.data_ptr<T>(), N, K, out.data_ptr<T>());
  });
  return out;
}

at::Tensor packed_or_pack(const at::Tensor& w, const OptT& packed) {
  const int64_t N = w.size(0), K = w.numel() / std::max<int64_t>(N, 1);
  if (!has(packed)) return pack_weight(w);
  const auto& p = *packed;
  TORCH_CHECK(p.scalar_type() == w.scalar_type() && p.dim() == 3 && p.size(1) == K &&
                  p.size(0) * p.size(2) >= N && (p.size(0) - 1) * p.size(2) < N &&
                  p.is_contiguous(),
              "a packed weight must come from pack_weight of the same weight");
  return p;
}

// act(x W^T + bias) for x (M, K): the GEMM kernel on its own (for the tests).
at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const OptT& packed, const OptT& bias,
                  int64_t act) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2, "linear: x must be a CPU (M, K) tensor");
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), "linear: x and w must share a dtype");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  TORCH_CHECK(w.numel() == N * K, "linear: w must be (N, K)");
  const auto wp = packed_or_pack(w, packed);
  const auto xc = x.contiguous();
  auto out = new_empty({M, N}, x.options());
  at::Tensor b = has(bias) ? bias->contiguous() : at::Tensor();
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

}  // namespace EMO_CPU_NS
