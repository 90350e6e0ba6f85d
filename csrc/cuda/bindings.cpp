// Thin PyTorch binding of the emo_kernels CUDA kernels (csrc/cuda/*.cu, raw pointers, no torch).
//
// Registers two operator namespaces with identical schemas:
//   torch.ops.emo_kernels_cuda.*      CUDA tensors only: launches the kernels on the current
//                                     stream. CPU tensors raise a clear error.
//   torch.ops.emo_kernels_cuda_emu.*  CPU tensors only: runs the same element functions in a
//                                     host loop. A test tool (slow), for checking the kernel
//                                     math against the reference on machines without a GPU.
// Each op checks device, dtype, shape and contiguity here and allocates its outputs; the
// orchestration (autograd, BatchNorm statistics, running-stat updates) is in
// emo_kernels/backends/cuda/.
#include <Python.h>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../geometry.h"

#include <limits>
#include <optional>
#include <vector>

#include "emo_kernels.h"

namespace {

using at::Tensor;
using OptT = std::optional<Tensor>;

template <bool EMU>
struct Ctx {
  const char* op;
  at::Device device{at::kCPU};
  at::ScalarType dtype{at::kFloat};
  c10::cuda::OptionalCUDAGuard guard;

  Ctx(const char* name, const Tensor& ref, const char* ref_name) : op(name) {
    check_device(ref, ref_name);
    device = ref.device();
    dtype = ref.scalar_type();
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                    dtype == at::kBFloat16,
                op, ": dtype must be float32, float64, float16 or bfloat16, got ", dtype);
    if (!EMU) guard.set_device(device);
  }
  void check_device(const Tensor& t, const char* name) const {
    if (EMU) {
      TORCH_CHECK(t.device().is_cpu(), "emo_kernels_cuda_emu::", op, ": ", name,
                  " must be a CPU tensor (this namespace emulates the CUDA kernels on the host),"
                  " got a tensor on ", t.device());
    } else {
      TORCH_CHECK(t.is_cuda(), "emo_kernels_cuda::", op, ": ", name,
                  " must be a CUDA tensor, got a tensor on ", t.device(),
                  " (the cuda backend needs CUDA tensors; use the torch or triton backend on CPU)");
    }
  }
  at::ScalarType acc() const { return dtype == at::kDouble ? at::kDouble : at::kFloat; }
  emo::DType dt() const {
    switch (dtype) {
      case at::kDouble: return emo::DT_F64;
      case at::kHalf: return emo::DT_F16;
      case at::kBFloat16: return emo::DT_BF16;
      default: return emo::DT_F32;
    }
  }
  // A tensor of the op's dtype (acc=false) or of the accumulation dtype (acc=true).
  const void* in(const Tensor& t, const char* name, bool is_acc = false) const {
    check_device(t, name);
    TORCH_CHECK(t.device() == device, op, ": ", name, " is on ", t.device(), " but the input is on ",
                device);
    at::ScalarType want = is_acc ? acc() : dtype;
    TORCH_CHECK(t.scalar_type() == want, op, ": ", name, " must have dtype ", want, ", got ",
                t.scalar_type());
    TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
    return t.data_ptr();
  }
  const void* in(const OptT& t, const char* name, bool is_acc = false) const {
    return t.has_value() ? in(*t, name, is_acc) : nullptr;
  }
  void shape(const Tensor& t, const char* name, at::IntArrayRef want) const {
    TORCH_CHECK(t.sizes() == want, op, ": ", name, " must have shape ", want, ", got ", t.sizes());
  }
  void shape(const OptT& t, const char* name, at::IntArrayRef want) const {
    if (t.has_value()) shape(*t, name, want);
  }
  // Emulation (a test tool) poisons every output with NaN, so unwritten elements show up.
  Tensor empty(at::IntArrayRef sizes, bool is_acc = false) const {
    Tensor t = at::empty(sizes, at::TensorOptions().device(device).dtype(is_acc ? acc() : dtype));
    if (EMU) t.fill_(std::numeric_limits<double>::quiet_NaN());
    return t;
  }
  emo::Launch launch() const {
    if (EMU) return {false, nullptr};
    return {true, (void*)c10::cuda::getCurrentCUDAStream(device.index()).stream()};
  }
  void ok(const char* err) const {
    TORCH_CHECK(err == nullptr, op, ": kernel launch failed: ", err ? err : "");
  }
};

// Shape of the expand_dwconv_act problem, from v (B, Cmid, H, W) and the conv geometry.
template <bool EMU>
emo::EdcShape edc_shape(const Ctx<EMU>& c, const Tensor& v, int64_t cin, int64_t k,
                        int64_t stride, int64_t act, bool skip) {
  TORCH_CHECK(v.dim() == 4, c.op, ": expected a 4-d (B, C, H, W) tensor, got ", v.sizes());
  TORCH_CHECK(k >= 1 && k % 2 == 1, c.op, ": depthwise kernel size must be odd, got ", k);
  TORCH_CHECK(stride == 1 || stride == 2, c.op, ": stride must be 1 or 2, got ", stride);
  TORCH_CHECK(act >= 0 && act <= 2, c.op, ": act must be 0 (none), 1 (silu) or 2 (gelu)");
  TORCH_CHECK(!skip || stride == 1, c.op, ": skip needs stride 1");
  emo::EdcShape s;
  s.B = v.size(0); s.Cmid = v.size(1); s.H = v.size(2); s.W = v.size(3); s.Cin = cin;
  s.k = (int)k; s.stride = (int)stride; s.pad = (int)emo::dw_padding(k, stride);
  s.Ho = emo::dw_out_size(s.H, k, stride); s.Wo = emo::dw_out_size(s.W, k, stride);
  s.act = (int)act; s.skip = skip;
  TORCH_CHECK(s.Ho >= 1 && s.Wo >= 1, c.op, ": empty output for input ", v.sizes());
  return s;
}

template <bool EMU>
Tensor edc_expand_fwd(const Tensor& x, const Tensor& w_exp, const OptT& b_exp, int64_t act) {
  Ctx<EMU> c("edc_expand_fwd", x, "x");
  TORCH_CHECK(x.dim() == 4 && w_exp.dim() == 2 && w_exp.size(1) == x.size(1), c.op,
              ": x must be (B, Cin, H, W) and w_exp (Cmid, Cin), got ", x.sizes(), " and ",
              w_exp.sizes());
  const int64_t cmid = w_exp.size(0);
  c.shape(b_exp, "b_exp", {cmid});
  Tensor v = c.empty({x.size(0), cmid, x.size(2), x.size(3)});
  auto s = edc_shape(c, v, x.size(1), 1, 1, act, false);
  c.ok(emo::edc_expand_fwd(c.dt(), s, c.in(x, "x"), c.in(w_exp, "w_exp"), c.in(b_exp, "b_exp"),
                           v.data_ptr(), c.launch()));
  return v;
}

template <bool EMU>
void check_dw(const Ctx<EMU>& c, const Tensor& v, const Tensor& w_dw, const OptT& b_dw,
              const OptT& scale, const OptT& shift) {
  TORCH_CHECK(w_dw.dim() == 3 && w_dw.size(0) == v.size(1) && w_dw.size(1) == w_dw.size(2),
              c.op, ": w_dw must be (Cmid, k, k) with Cmid = ", v.size(1), ", got ", w_dw.sizes());
  c.shape(b_dw, "b_dw", {v.size(1)});
  c.shape(scale, "scale", {v.size(1)});
  c.shape(shift, "shift", {v.size(1)});
}

// fused: returns z (dtype); else p (accumulation dtype), to be normalised by edc_epilogue_fwd.
template <bool EMU>
Tensor edc_dw_fwd(const Tensor& v, const Tensor& w_dw, const OptT& b_dw, const OptT& scale,
                  const OptT& shift, int64_t stride, bool skip, bool fused) {
  Ctx<EMU> c("edc_dw_fwd", v, "v");
  check_dw(c, v, w_dw, b_dw, scale, shift);
  auto s = edc_shape(c, v, 0, w_dw.size(-1), stride, 0, skip);
  Tensor out = c.empty({s.B, s.Cmid, s.Ho, s.Wo}, /*is_acc=*/!fused);
  c.ok(emo::edc_dw_fwd(c.dt(), s, c.in(v, "v"), c.in(w_dw, "w_dw"), c.in(b_dw, "b_dw"),
                       c.in(scale, "scale", true), c.in(shift, "shift", true),
                       fused ? nullptr : out.data_ptr(), fused ? out.data_ptr() : nullptr,
                       c.launch()));
  return out;
}

template <bool EMU>
Tensor edc_epilogue_fwd(const Tensor& p, const OptT& scale, const OptT& shift, const Tensor& v,
                        bool skip) {
  Ctx<EMU> c("edc_epilogue_fwd", v, "v");
  TORCH_CHECK(p.dim() == 4 && p.size(0) == v.size(0) && p.size(1) == v.size(1), c.op,
              ": p ", p.sizes(), " does not match v ", v.sizes());
  if (skip) c.shape(p, "p", v.sizes());
  c.shape(scale, "scale", {v.size(1)});
  c.shape(shift, "shift", {v.size(1)});
  emo::EdcShape s{};
  s.B = p.size(0); s.Cmid = p.size(1); s.Ho = p.size(2); s.Wo = p.size(3); s.skip = skip;
  Tensor z = c.empty(p.sizes());
  c.ok(emo::edc_epilogue_fwd(c.dt(), s, c.in(p, "p", true), c.in(scale, "scale", true),
                             c.in(shift, "shift", true), c.in(v, "v"), z.data_ptr(),
                             c.launch()));
  return z;
}

template <bool EMU>
std::vector<Tensor> edc_dq_bwd(const Tensor& v, const Tensor& w_dw, const OptT& b_dw,
                               const OptT& scale, const OptT& shift, const Tensor& gz,
                               int64_t stride, bool need_p) {
  Ctx<EMU> c("edc_dq_bwd", v, "v");
  check_dw(c, v, w_dw, b_dw, scale, shift);
  auto s = edc_shape(c, v, 0, w_dw.size(-1), stride, 0, false);
  c.shape(gz, "grad_z", {s.B, s.Cmid, s.Ho, s.Wo});
  Tensor gq = c.empty(gz.sizes(), true);
  Tensor p = need_p ? c.empty(gz.sizes(), true) : c.empty({0}, true);
  c.ok(emo::edc_dq_bwd(c.dt(), s, c.in(v, "v"), c.in(w_dw, "w_dw"), c.in(b_dw, "b_dw"),
                       c.in(scale, "scale", true), c.in(shift, "shift", true), c.in(gz, "grad_z"),
                       gq.data_ptr(), need_p ? p.data_ptr() : nullptr, c.launch()));
  return {gq, p};
}

template <bool EMU>
void check_gp(const Ctx<EMU>& c, const emo::EdcShape& s, const Tensor& gq, const OptT& p,
              const OptT& ca, const OptT& cb, const OptT& cc) {
  c.shape(gq, "grad_q", {s.B, s.Cmid, s.Ho, s.Wo});
  TORCH_CHECK(!cb.has_value() || p.has_value(), c.op, ": cb needs p");
  c.shape(p, "p", {s.B, s.Cmid, s.Ho, s.Wo});
  c.shape(ca, "ca", {s.Cmid});
  c.shape(cb, "cb", {s.Cmid});
  c.shape(cc, "cc", {s.Cmid});
}

template <bool EMU>
Tensor edc_dv_bwd(const Tensor& x, const OptT& w_exp, const OptT& b_exp, const Tensor& w_dw,
                  const Tensor& gz, const Tensor& gq, const OptT& p, const OptT& ca,
                  const OptT& cb, const OptT& cc, int64_t act, int64_t stride, bool skip) {
  Ctx<EMU> c("edc_dv_bwd", x, "x");
  TORCH_CHECK(x.dim() == 4, c.op, ": x must be (B, Cin, H, W), got ", x.sizes());
  int64_t cmid = x.size(1);
  if (w_exp.has_value()) {
    TORCH_CHECK(w_exp->dim() == 2 && w_exp->size(1) == x.size(1), c.op,
                ": w_exp must be (Cmid, Cin=", x.size(1), "), got ", w_exp->sizes());
    cmid = w_exp->size(0);
    c.shape(b_exp, "b_exp", {cmid});
  } else {
    TORCH_CHECK(!b_exp.has_value() && act == 0, c.op, ": identity expansion takes no b_exp/act");
  }
  TORCH_CHECK(w_dw.dim() == 3 && w_dw.size(0) == cmid, c.op, ": w_dw must be (Cmid=", cmid,
              ", k, k), got ", w_dw.sizes());
  Tensor gu = c.empty({x.size(0), cmid, x.size(2), x.size(3)}, true);
  auto s = edc_shape(c, gu, x.size(1), w_dw.size(-1), stride, act, skip);
  c.shape(gz, "grad_z", {s.B, s.Cmid, s.Ho, s.Wo});
  check_gp(c, s, gq, p, ca, cb, cc);
  c.ok(emo::edc_dv_bwd(c.dt(), s, c.in(x, "x"), c.in(w_exp, "w_exp"), c.in(b_exp, "b_exp"),
                       c.in(w_dw, "w_dw"), c.in(gz, "grad_z"), c.in(gq, "grad_q", true),
                       c.in(p, "p", true), c.in(ca, "ca", true), c.in(cb, "cb", true),
                       c.in(cc, "cc", true), gu.data_ptr(), c.launch()));
  return gu;
}

constexpr int64_t kChunk = 256;  // reduction elements per partial sum

// grad of w_dw (Cmid, k, k), accumulation dtype.
template <bool EMU>
Tensor edc_dwweight_bwd(const Tensor& v, const Tensor& gq, const OptT& p, const OptT& ca,
                        const OptT& cb, const OptT& cc, int64_t k, int64_t stride) {
  Ctx<EMU> c("edc_dwweight_bwd", v, "v");
  auto s = edc_shape(c, v, 0, k, stride, 0, false);
  check_gp(c, s, gq, p, ca, cb, cc);
  const int64_t nch = (s.B * s.Ho * s.Wo + kChunk - 1) / kChunk;
  Tensor part = c.empty({nch, s.Cmid, k, k}, true);
  c.ok(emo::edc_dwweight_bwd(c.dt(), s, c.in(v, "v"), c.in(gq, "grad_q", true),
                             c.in(p, "p", true), c.in(ca, "ca", true), c.in(cb, "cb", true),
                             c.in(cc, "cc", true), kChunk, part.data_ptr(), c.launch()));
  return part.sum(0);
}

// grad of x (B, Cin, H, W), dtype of w_exp.
template <bool EMU>
Tensor edc_expand_dx_bwd(const Tensor& w_exp, const Tensor& gu) {
  Ctx<EMU> c("edc_expand_dx_bwd", w_exp, "w_exp");
  TORCH_CHECK(w_exp.dim() == 2 && gu.dim() == 4 && gu.size(1) == w_exp.size(0), c.op,
              ": w_exp must be (Cmid, Cin) and grad_u (B, Cmid, H, W), got ", w_exp.sizes(),
              " and ", gu.sizes());
  emo::EdcShape s{};
  s.B = gu.size(0); s.Cmid = gu.size(1); s.H = gu.size(2); s.W = gu.size(3); s.Cin = w_exp.size(1);
  Tensor gx = c.empty({s.B, s.Cin, s.H, s.W});
  c.ok(emo::edc_expand_dx_bwd(c.dt(), s, c.in(w_exp, "w_exp"), c.in(gu, "grad_u", true),
                              gx.data_ptr(), c.launch()));
  return gx;
}

// grad of w_exp (Cmid, Cin), accumulation dtype.
template <bool EMU>
Tensor edc_expand_dw_bwd(const Tensor& x, const Tensor& gu) {
  Ctx<EMU> c("edc_expand_dw_bwd", x, "x");
  TORCH_CHECK(x.dim() == 4 && gu.dim() == 4 && gu.size(0) == x.size(0) &&
                  gu.size(2) == x.size(2) && gu.size(3) == x.size(3),
              c.op, ": x (B, Cin, H, W) ", x.sizes(), " and grad_u (B, Cmid, H, W) ", gu.sizes(),
              " do not match");
  emo::EdcShape s{};
  s.B = x.size(0); s.Cin = x.size(1); s.H = x.size(2); s.W = x.size(3); s.Cmid = gu.size(1);
  const int64_t nch = (s.B * s.H * s.W + kChunk - 1) / kChunk;
  Tensor part = c.empty({nch, s.Cmid, s.Cin}, true);
  c.ok(emo::edc_expand_dw_bwd(c.dt(), s, c.in(x, "x"), c.in(gu, "grad_u", true), kChunk,
                              part.data_ptr(), c.launch()));
  return part.sum(0);
}

// ---- window attention -------------------------------------------------------------------------

template <bool EMU>
emo::WaShape wa_shape(const Ctx<EMU>& c, const Tensor& q, const Tensor& k, const Tensor& v,
                      const OptT& k_pad, const OptT& v_pad, int64_t head_dim, int64_t ws,
                      double scale, int64_t close) {
  TORCH_CHECK(q.dim() == 4, c.op, ": q must be (B, C, H, W), got ", q.sizes());
  c.shape(k, "k", q.sizes());
  const int64_t C = q.size(1);
  c.shape(k_pad, "k_pad", {C});
  TORCH_CHECK(head_dim >= 1 && C % head_dim == 0, c.op, ": head_dim ", head_dim,
              " must divide C = ", C);
  TORCH_CHECK(head_dim <= emo::WA_MAX_HEAD_DIM, c.op, ": head_dim ", head_dim,
              " > ", emo::WA_MAX_HEAD_DIM, " is not supported by the CUDA kernels");
  const int64_t heads = C / head_dim, Cv = v.dim() == 4 ? v.size(1) : 0;
  TORCH_CHECK(v.dim() == 4 && v.size(0) == q.size(0) && v.size(2) == q.size(2) &&
                  v.size(3) == q.size(3) && Cv >= heads && Cv % heads == 0,
              c.op, ": v must be (B, Cv, H, W) like q with Cv a multiple of the ", heads,
              " heads, got ", v.sizes());
  TORCH_CHECK(Cv / heads <= emo::WA_MAX_VALUE_DIM, c.op, ": value heads of ", Cv / heads,
              " channels > ", emo::WA_MAX_VALUE_DIM, " are not supported by the CUDA kernels");
  c.shape(v_pad, "v_pad", {Cv});
  TORCH_CHECK(ws >= 1, c.op, ": window_size must be positive, got ", ws);
  TORCH_CHECK(close == 0 || close == 1, c.op, ": close must be 0 or 1, got ", close);
  for (auto* t : {&q, &k, &v}) {
    c.check_device(*t, "q/k/v");
    TORCH_CHECK(t->device() == c.device && t->scalar_type() == c.dtype, c.op,
                ": q, k and v must share device and dtype");
  }
  emo::WaShape s;
  s.B = q.size(0); s.C = C; s.H = q.size(2); s.W = q.size(3);
  s.heads = (int)heads; s.head_dim = (int)head_dim; s.ws = (int)ws;
  s.n1 = (int)((s.H + ws - 1) / ws); s.n2 = (int)((s.W + ws - 1) / ws);
  s.scale = scale;
  for (int d = 0; d < 4; ++d) {
    s.sq[d] = q.stride(d); s.sk[d] = k.stride(d); s.sv[d] = v.stride(d);
  }
  s.Cv = Cv; s.dv = (int)(Cv / heads); s.close = (int)close;
  return s;
}

// Returns (out (B,Cv,H,W) contiguous, lse (B,heads,H,W) accumulation dtype) of one partition
// (close: contiguous windows). q, k, v may have any strides (e.g. channel slices of one qk
// tensor).
template <bool EMU>
std::vector<Tensor> wa_fwd(const Tensor& q, const Tensor& k, const Tensor& v, const OptT& k_pad,
                           const OptT& v_pad, int64_t head_dim, int64_t window_size,
                           double scale, int64_t close) {
  Ctx<EMU> c("wa_fwd", q, "q");
  auto s = wa_shape(c, q, k, v, k_pad, v_pad, head_dim, window_size, scale, close);
  Tensor out = c.empty(v.sizes());
  Tensor lse = c.empty({s.B, s.heads, s.H, s.W}, true);
  c.ok(emo::wa_fwd(c.dt(), s, q.data_ptr(), k.data_ptr(), v.data_ptr(), c.in(k_pad, "k_pad"),
                   c.in(v_pad, "v_pad"), out.data_ptr(), lse.data_ptr(), c.launch()));
  return {out, lse};
}

// The padded-map gradient `full` (acc, B, N, Hp, Wp) split into the map's own (B, N, H, W, in
// the input dtype) and the sum over the padded pixels (N,): they all share one pad vector.
template <bool EMU>
std::pair<Tensor, Tensor> split_padded(const Ctx<EMU>& c, Tensor full, int64_t H, int64_t W) {
  Tensor inner = full.narrow(2, 0, H).narrow(3, 0, W);
  Tensor own = inner.to(c.dtype, /*non_blocking=*/false, /*copy=*/true).contiguous();
  inner.zero_();
  return {own, full.sum({0, 2, 3}).to(c.dtype)};
}

// Returns (dq, dk, dv, dk_pad, dv_pad) of one partition: dk_pad (C,) and dv_pad (Cv,) are the
// gradients of k_pad and v_pad (zeros when H, W are multiples of the window size).
template <bool EMU>
std::vector<Tensor> wa_bwd(const Tensor& q, const Tensor& k, const Tensor& v, const OptT& k_pad,
                           const OptT& v_pad, const Tensor& out, const Tensor& dout,
                           const Tensor& lse, int64_t head_dim, int64_t window_size,
                           double scale, int64_t close) {
  Ctx<EMU> c("wa_bwd", q, "q");
  auto s = wa_shape(c, q, k, v, k_pad, v_pad, head_dim, window_size, scale, close);
  c.shape(out, "out", v.sizes());
  c.shape(dout, "grad_out", v.sizes());
  c.shape(lse, "lse", {s.B, s.heads, s.H, s.W});
  const int64_t Hp = (int64_t)s.ws * s.n1, Wp = (int64_t)s.ws * s.n2;
  Tensor dq = c.empty(q.sizes());
  Tensor delta = c.empty({s.B, s.heads, s.H, s.W}, true);
  Tensor dk_full = c.empty({s.B, s.C, Hp, Wp}, true), dv_full = c.empty({s.B, s.Cv, Hp, Wp}, true);
  const void* kp = c.in(k_pad, "k_pad");
  const void* vp = c.in(v_pad, "v_pad");
  c.ok(emo::wa_bwd_dq(c.dt(), s, q.data_ptr(), k.data_ptr(), v.data_ptr(), kp, vp,
                      c.in(out, "out"), c.in(dout, "grad_out"), c.in(lse, "lse", true),
                      dq.data_ptr(), delta.data_ptr(), c.launch()));
  c.ok(emo::wa_bwd_dkv(c.dt(), s, q.data_ptr(), k.data_ptr(), v.data_ptr(), kp, vp,
                       dout.data_ptr(), lse.data_ptr(), delta.data_ptr(), dk_full.data_ptr(),
                       dv_full.data_ptr(), c.launch()));
  auto [dk, dk_pad] = split_padded(c, dk_full, s.H, s.W);
  auto [dv, dv_pad] = split_padded(c, dv_full, s.H, s.W);
  return {dq, dk, dv, dk_pad, dv_pad};
}

}  // namespace

// ---- registration ---------------------------------------------------------------------------

#define EMO_DEFS(m)                                                                             \
  m.def("edc_expand_fwd(Tensor x, Tensor w_exp, Tensor? b_exp, int act) -> Tensor");            \
  m.def("edc_dw_fwd(Tensor v, Tensor w_dw, Tensor? b_dw, Tensor? scale, Tensor? shift, "        \
        "int stride, bool skip, bool fused) -> Tensor");                                       \
  m.def("edc_epilogue_fwd(Tensor p, Tensor? scale, Tensor? shift, Tensor v, bool skip) "       \
        "-> Tensor");                                                                           \
  m.def("edc_dq_bwd(Tensor v, Tensor w_dw, Tensor? b_dw, Tensor? scale, Tensor? shift, "        \
        "Tensor grad_z, int stride, bool need_p) -> Tensor[]");                                 \
  m.def("edc_dv_bwd(Tensor x, Tensor? w_exp, Tensor? b_exp, Tensor w_dw, Tensor grad_z, "       \
        "Tensor grad_q, Tensor? p, Tensor? ca, Tensor? cb, Tensor? cc, int act, int stride, "   \
        "bool skip) -> Tensor");                                                                \
  m.def("edc_dwweight_bwd(Tensor v, Tensor grad_q, Tensor? p, Tensor? ca, Tensor? cb, "         \
        "Tensor? cc, int k, int stride) -> Tensor");                                           \
  m.def("edc_expand_dx_bwd(Tensor w_exp, Tensor grad_u) -> Tensor");                            \
  m.def("edc_expand_dw_bwd(Tensor x, Tensor grad_u) -> Tensor");                               \
  m.def("wa_fwd(Tensor q, Tensor k, Tensor v, Tensor? k_pad, Tensor? v_pad, int head_dim, "    \
        "int window_size, float scale, int close) -> Tensor[]");                                \
  m.def("wa_bwd(Tensor q, Tensor k, Tensor v, Tensor? k_pad, Tensor? v_pad, Tensor out, "       \
        "Tensor grad_out, Tensor lse, int head_dim, int window_size, float scale, int close) "  \
        "-> Tensor[]")

#define EMO_IMPLS(m, EMU)                                   \
  m.impl("edc_expand_fwd", &edc_expand_fwd<EMU>);           \
  m.impl("edc_dw_fwd", &edc_dw_fwd<EMU>);                   \
  m.impl("edc_epilogue_fwd", &edc_epilogue_fwd<EMU>);       \
  m.impl("edc_dq_bwd", &edc_dq_bwd<EMU>);                   \
  m.impl("edc_dv_bwd", &edc_dv_bwd<EMU>);                   \
  m.impl("edc_dwweight_bwd", &edc_dwweight_bwd<EMU>);       \
  m.impl("edc_expand_dx_bwd", &edc_expand_dx_bwd<EMU>);     \
  m.impl("edc_expand_dw_bwd", &edc_expand_dw_bwd<EMU>);     \
  m.impl("wa_fwd", &wa_fwd<EMU>);                           \
  m.impl("wa_bwd", &wa_bwd<EMU>)

TORCH_LIBRARY(emo_kernels_cuda, m) { EMO_DEFS(m); }
// CUDA: the kernels. CPU: the same checks, which reject CPU tensors with a clear message
// (without this registration the dispatcher would give a generic "no CPU kernel" error).
TORCH_LIBRARY_IMPL(emo_kernels_cuda, CUDA, m) { EMO_IMPLS(m, false); }
TORCH_LIBRARY_IMPL(emo_kernels_cuda, CPU, m) { EMO_IMPLS(m, false); }

TORCH_LIBRARY(emo_kernels_cuda_emu, m) { EMO_DEFS(m); }
TORCH_LIBRARY_IMPL(emo_kernels_cuda_emu, CPU, m) { EMO_IMPLS(m, true); }

// `import emo_kernels._C` (setup.py build) loads this library, which registers the ops above.
// The JIT build loads it with torch.ops.load_library instead and does not need this.
#ifdef TORCH_EXTENSION_NAME
#define EMO_CONCAT_(a, b) a##b
#define EMO_CONCAT(a, b) EMO_CONCAT_(a, b)
extern "C" PyMODINIT_FUNC EMO_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C",
                                   "emo_kernels CUDA ops (registered under torch.ops)", -1,
                                   nullptr};
  return PyModule_Create(&def);
}
#endif
