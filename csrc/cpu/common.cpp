// The shared state of one ISA variant (common.h): the poisoning switch and the per-thread
// workspaces.
#include <atomic>

#include "common.h"

namespace EMO_CPU_NS {

namespace {
std::atomic<bool> g_poison{false};
}  // namespace

bool poisoning() { return g_poison.load(std::memory_order_relaxed); }
void set_poison(bool on) { g_poison.store(on); }

at::Tensor new_empty(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  at::Tensor t = at::empty(sizes, opts);
  if (poisoning()) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

at::Tensor workspace(int slot, int64_t numel, const at::TensorOptions& opts) {
  thread_local at::Tensor cache[2];
  at::Tensor& t = cache[slot];
  if (!t.defined() || t.scalar_type() != opts.dtype().toScalarType() || t.numel() < numel) {
    c10::InferenceMode normal(false);  // a normal tensor: writable in and out of InferenceMode
    t = at::empty({std::max<int64_t>(numel, 1)}, opts);
  }
  at::Tensor part = t.narrow(0, 0, numel);
  if (poisoning()) part.fill_(std::numeric_limits<double>::quiet_NaN());
  return part;
}

}  // namespace EMO_CPU_NS
