// The ops of the CPU backend: schemas and registration under torch.library, in the namespace of
// this ISA variant (EMO_CPU_NS, e.g. torch.ops.emo_kernels_cpu_avx2). emo_kernels/backends/cpu/
// calls them and registers their fake (meta) functions, so torch.compile traces them
// without graph breaks. Inference only: no autograd kernels (the Python side refuses calls that
// need grad). Outputs are fresh tensors, (B, C, H, W) ones in channels_last memory format.
#include <torch/library.h>

#include "common.h"

namespace EMO_CPU_NS {
namespace {

// The fused body's chunk budget: bytes per thread (the ops' argument) times the threads.
int64_t budget(int64_t chunk_bytes) { return chunk_bytes * at::get_num_threads(); }

at::Tensor expand_dwconv_act_op(const at::Tensor& x, const OptT& w_exp, const OptT& b_exp,
                                const at::Tensor& w_dw, const OptT& b_dw, int64_t act,
                                int64_t stride, bool skip, int64_t chunk_bytes, int64_t split) {
  return expand_dwconv_act(x, w_exp, b_exp, w_dw, b_dw, act, stride, skip, budget(chunk_bytes),
                           split);
}

std::vector<OptT> to_vector(const c10::List<OptT>& list) {
  std::vector<OptT> v;
  v.reserve(list.size());
  for (const auto& t : list) v.push_back(t);
  return v;
}

at::Tensor irmb_inference_op(const at::Tensor& x, const c10::List<OptT>& tensors,
                             at::IntArrayRef ints, at::ArrayRef<double> floats, int64_t chunk_bytes,
                             int64_t split) {
  return irmb_inference(x, to_vector(tensors), ints, floats, budget(chunk_bytes), split);
}

std::vector<at::Tensor> irmb_chain_op(const at::Tensor& x, const c10::List<OptT>& tensors,
                                      at::IntArrayRef ints, at::ArrayRef<double> floats,
                                      at::IntArrayRef outputs, int64_t chunk_bytes,
                                      int64_t split) {
  return irmb_chain(x, to_vector(tensors), ints, floats, outputs, budget(chunk_bytes), split);
}

std::string isa() { return EMO_STR(CPU_CAPABILITY); }

}  // namespace
}  // namespace EMO_CPU_NS

// act: 0 none, 1 silu, 2 gelu (emo_kernels/formulas.py). chunk_bytes: bytes of v and z per
// chunk of the fused body and per thread (times the threads at call time: traced code bakes in
// no thread count); split: 0 auto, 1 rows, 2 channels (emo_kernels/backends/cpu/). irmb_*'s
// lists: BlockArgs in irmb_inference.cpp.
TORCH_LIBRARY(EMO_CPU_NS, m) {
  m.def("expand_dwconv_act(Tensor x, Tensor? w_exp, Tensor? b_exp, Tensor w_dw, Tensor? b_dw, "
        "int act, int stride, bool skip, int chunk_bytes, int split) -> Tensor");
  m.def("window_attention(Tensor q, Tensor k, Tensor v, Tensor? k_pad, int head_dim, "
        "int window_size, float scale, Tensor? v_pad=None, int partition=0) -> Tensor");
  m.def("irmb_inference(Tensor x, Tensor?[] tensors, int[] ints, float[] floats, "
        "int chunk_bytes, int split) -> Tensor");
  m.def("irmb_chain(Tensor x, Tensor?[] tensors, int[] ints, float[] floats, int[] outputs, "
        "int chunk_bytes, int split) -> Tensor[]");
  m.def("pack_weight(Tensor w) -> Tensor");
  m.def("linear(Tensor x, Tensor w, Tensor? packed, Tensor? bias, int act) -> Tensor");
  // no tensor arguments: one kernel for every dispatch key
  m.def("isa() -> str", &EMO_CPU_NS::isa);
  m.def("set_poison(bool on) -> ()", &EMO_CPU_NS::set_poison);
}

TORCH_LIBRARY_IMPL(EMO_CPU_NS, CPU, m) {
  m.impl("expand_dwconv_act", &EMO_CPU_NS::expand_dwconv_act_op);
  m.impl("window_attention", &EMO_CPU_NS::window_attention);
  m.impl("irmb_inference", &EMO_CPU_NS::irmb_inference_op);
  m.impl("irmb_chain", &EMO_CPU_NS::irmb_chain_op);
  m.impl("pack_weight", &EMO_CPU_NS::pack_weight);
  m.impl("linear", &EMO_CPU_NS::linear);
}

// `import emo_kernels._C_cpu_<isa>` (setup.py build) loads this library, which registers the
// ops above; the JIT build loads it with torch.ops.load_library instead.
#ifdef TORCH_EXTENSION_NAME
#include <Python.h>
#define EMO_CONCAT_(a, b) a##b
#define EMO_CONCAT(a, b) EMO_CONCAT_(a, b)
extern "C" PyMODINIT_FUNC EMO_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, EMO_STR(TORCH_EXTENSION_NAME),
                                   "emo_kernels CPU ops (registered under torch.ops)", -1,
                                   nullptr};
  return PyModule_Create(&def);
}
#endif
