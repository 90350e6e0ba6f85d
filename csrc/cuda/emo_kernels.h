// Raw-pointer API of the emo_kernels CUDA kernels (csrc/cuda/*.cu). Free of PyTorch and CUDA headers,
// so the thin binding (bindings.cpp) includes it without pulling in the kernels.
//
// Conventions
// * Every tensor is dense and contiguous (NCHW) unless strides are passed explicitly.
// * "T" buffers have the op's dtype (DType); "acc" buffers have the accumulation type:
//   float for fp16/bf16/fp32, double for fp64.
// * Per-channel coefficient pointers marked "nullable" default to the identity (1 or 0).
// * Launch.on_device = true launches on the GPU on Launch.stream (a cudaStream_t);
//   false runs the SAME element functions in a plain host loop over CPU buffers (emulation,
//   for testing the kernel math without a GPU).
// * Each function returns nullptr on success, else an error string (launch errors).
#pragma once
#include <cstdint>

namespace emo {

enum DType : int { DT_F32 = 0, DT_F64 = 1, DT_F16 = 2, DT_BF16 = 3 };
enum ActKind : int { ACT_NONE = 0, ACT_SILU = 1, ACT_GELU = 2 };

struct Launch {
  bool on_device;
  void* stream;
};

// ---------------------------------------------------------------------------------------------
// expand_dwconv_act:  u = W_exp x + b_exp, v = act(u)      (x: B,Cin,H,W; v: B,Cmid,H,W)
//                     p = dwconv_kxk(v, stride, pad) + b_dw (B,Cmid,Ho,Wo)
//                     q = scale[c] * p + shift[c]          (BatchNorm folded to an affine map)
//                     z = silu(q) + (skip ? v : 0)
// ---------------------------------------------------------------------------------------------
struct EdcShape {
  int64_t B, Cin, Cmid, H, W, Ho, Wo;
  int k, stride, pad, act;
  bool skip;
};

// v[b,c,h,w] (T) = act(b_exp[c] + sum_ci w_exp[c,ci] x[b,ci,h,w]).  b_exp nullable.
const char* edc_expand_fwd(DType dt, const EdcShape& s, const void* x, const void* w_exp,
                           const void* b_exp, void* v, Launch l);
// p = dwconv(v) + b_dw. If z != nullptr: writes z (T) = silu(scale*p + shift) (+ v if skip);
// else writes p (acc) to p_acc. b_dw (T), scale, shift (acc): nullable.
const char* edc_dw_fwd(DType dt, const EdcShape& s, const void* v, const void* w_dw,
                       const void* b_dw, const void* scale, const void* shift, void* p_acc,
                       void* z, Launch l);
// z (T) = silu(scale*p + shift) (+ v if skip), p in acc.
const char* edc_epilogue_fwd(DType dt, const EdcShape& s, const void* p_acc, const void* scale,
                             const void* shift, const void* v, void* z, Launch l);

// Backward. gz: (B,Cmid,Ho,Wo) T. Recomputes p from v; writes gq (acc) = gz * silu'(scale*p+shift)
// and, when p_acc != nullptr, p (acc).
const char* edc_dq_bwd(DType dt, const EdcShape& s, const void* v, const void* w_dw,
                       const void* b_dw, const void* scale, const void* shift, const void* gz,
                       void* gq_acc, void* p_acc, Launch l);
// The gradient of p is gp = ca[c]*gq + cb[c]*p + cc[c] (ca nullable -> 1; cb, cc nullable -> 0;
// p_acc only read when cb != nullptr). For every element of v:
//   gv = (skip ? gz : 0) + sum_{taps} w_dw * gp,   gu = gv * act'(u)  (u recomputed from x)
// writes gu (acc, B,Cmid,H,W). With w_exp == nullptr (identity expansion) gu = gv.
const char* edc_dv_bwd(DType dt, const EdcShape& s, const void* x, const void* w_exp,
                       const void* b_exp, const void* w_dw, const void* gz, const void* gq_acc,
                       const void* p_acc, const void* ca, const void* cb, const void* cc,
                       void* gu_acc, Launch l);
// Partial sums of grad w_dw over chunks of `chunk` elements of (B,Ho,Wo):
// part (acc, [nchunk, Cmid, k, k]), nchunk = ceil(B*Ho*Wo / chunk). The caller sums over dim 0.
const char* edc_dwweight_bwd(DType dt, const EdcShape& s, const void* v, const void* gq_acc,
                             const void* p_acc, const void* ca, const void* cb, const void* cc,
                             int64_t chunk, void* part, Launch l);
// gx (T, B,Cin,H,W) = sum_c w_exp[c,ci] gu[b,c,h,w]
const char* edc_expand_dx_bwd(DType dt, const EdcShape& s, const void* w_exp, const void* gu_acc,
                              void* gx, Launch l);
// Partial sums of grad w_exp over chunks of `chunk` elements of (B,H,W):
// part (acc, [nchunk, Cmid, Cin]).
const char* edc_expand_dw_bwd(DType dt, const EdcShape& s, const void* x, const void* gu_acc,
                              int64_t chunk, void* part, Launch l);

// ---------------------------------------------------------------------------------------------
// window_attention: ws x ws windows of the map padded to (ws*n1, ws*n2); token (i,j) of window
// (a,b) = pixel (i*n1+a, j*n2+b) (strided, EMO's) or, with close, (a*ws+i, b*ws+j) (contiguous,
// EMOv2's); padded keys have key k_pad and value v_pad (each nullable -> 0). Values have Cv
// channels, dv = Cv / heads per head (EMOv2's value heads are wider than q/k's). EMOv2's hybrid
// form is the sum of a strided and a contiguous call (emo_kernels/backends/cuda/).
// ---------------------------------------------------------------------------------------------
struct WaShape {
  int64_t B, C, H, W;
  int heads, head_dim, ws, n1, n2;
  double scale;
  int64_t sq[4], sk[4], sv[4];  // element strides of q, k, v (any layout)
  int64_t Cv;                   // value (and output) channels
  int dv;                       // value channels per head
  int close;                    // 1: contiguous windows, 0: strided
};
constexpr int WA_MAX_HEAD_DIM = 64;
constexpr int WA_MAX_VALUE_DIM = 128;

// out (T, contiguous B,Cv,H,W), lse (acc, B,heads,H,W) = log-sum-exp of the scaled scores.
const char* wa_fwd(DType dt, const WaShape& s, const void* q, const void* k, const void* v,
                   const void* k_pad, const void* v_pad, void* out, void* lse, Launch l);
// dq (T, contiguous), delta (acc, B,heads,H,W) = sum_d dout*out. out, dout contiguous.
const char* wa_bwd_dq(DType dt, const WaShape& s, const void* q, const void* k, const void* v,
                      const void* k_pad, const void* v_pad, const void* out, const void* dout,
                      const void* lse, void* dq, void* delta, Launch l);
// dk_full (acc, contiguous B,C,ws*n1,ws*n2) and dv_full (acc, contiguous B,Cv,ws*n1,ws*n2): key
// and value gradients of every padded-map pixel (the padded ones sum to grad k_pad / v_pad).
// Needs delta from wa_bwd_dq.
const char* wa_bwd_dkv(DType dt, const WaShape& s, const void* q, const void* k, const void* v,
                       const void* k_pad, const void* v_pad, const void* dout, const void* lse,
                       const void* delta, void* dk_full, void* dv_full, Launch l);

}  // namespace emo
