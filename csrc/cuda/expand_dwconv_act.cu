// expand_dwconv_act kernels: 1x1 expansion + activation, depthwise kxk conv + (folded or
// batch-statistics) BatchNorm + SiLU + inner skip, and their backward. See emo_kernels.h for
// the contract of each entry point and common.cuh for how element functions are run.
//
// Layout: every buffer is contiguous NCHW. Element functions compute one output element from
// global memory (no shared memory), so the same code runs on the GPU and in the host emulation.
#include "common.cuh"

namespace emo {
namespace {

template <typename T, typename A>
struct EdcArgs {
  EdcShape s;
  const T* x; const T* w_exp; const T* b_exp; const T* w_dw; const T* b_dw;
  const T* v; const T* gz;
  const A* scale; const A* shift; const A* ca; const A* cb; const A* cc;
  const A* p_in; const A* gq_in; const A* gu_in;
  A* p_out; A* gq_out; A* gu_out; A* part;
  T* v_out; T* z_out; T* gx_out;
  int64_t chunk;
};

template <typename T, typename A>
EMO_HD A expand_preact(const EdcArgs<T, A>& a, int64_t b, int64_t c, int64_t hw) {
  const EdcShape& s = a.s;
  const int64_t HW = s.H * s.W;
  A u = a.b_exp ? to_acc<A>(a.b_exp[c]) : A(0);
  const T* xp = a.x + b * s.Cin * HW + hw;
  const T* wp = a.w_exp + c * s.Cin;
  for (int64_t ci = 0; ci < s.Cin; ++ci) u += to_acc<A>(wp[ci]) * to_acc<A>(xp[ci * HW]);
  return u;
}

// p = dwconv(v)[b,c,oh,ow] + b_dw[c]
template <typename T, typename A>
EMO_HD A dw_preact(const EdcArgs<T, A>& a, int64_t b, int64_t c, int64_t oh, int64_t ow) {
  const EdcShape& s = a.s;
  A p = a.b_dw ? to_acc<A>(a.b_dw[c]) : A(0);
  const T* vp = a.v + (b * s.Cmid + c) * s.H * s.W;
  const T* wp = a.w_dw + c * s.k * s.k;
  for (int kh = 0; kh < s.k; ++kh) {
    int64_t ih = oh * s.stride - s.pad + kh;
    if (ih < 0 || ih >= s.H) continue;
    for (int kw = 0; kw < s.k; ++kw) {
      int64_t iw = ow * s.stride - s.pad + kw;
      if (iw < 0 || iw >= s.W) continue;
      p += to_acc<A>(wp[kh * s.k + kw]) * to_acc<A>(vp[ih * s.W + iw]);
    }
  }
  return p;
}

template <typename T, typename A>
EMO_HD A affine(const EdcArgs<T, A>& a, int64_t c, A p) {
  return (a.scale ? a.scale[c] : A(1)) * p + (a.shift ? a.shift[c] : A(0));
}

// gp = ca*gq + cb*p + cc at a flat (B,Cmid,Ho,Wo) offset
template <typename T, typename A>
EMO_HD A grad_p(const EdcArgs<T, A>& a, int64_t c, int64_t off) {
  A g = (a.ca ? a.ca[c] : A(1)) * a.gq_in[off];
  if (a.cb) g += a.cb[c] * a.p_in[off];
  if (a.cc) g += a.cc[c];
  return g;
}

struct ExpandFwd {  // one element of v
  template <typename T, typename A> static EMO_HD void run(const EdcArgs<T, A>& a, int64_t i) {
    const EdcShape& s = a.s;
    int64_t HW = s.H * s.W, hw = i % HW, c = (i / HW) % s.Cmid, b = i / (HW * s.Cmid);
    a.v_out[i] = from_acc<T>(act_fwd(s.act, expand_preact(a, b, c, hw)));
  }
};

struct DwFwd {  // one element of p (or z when fused)
  template <typename T, typename A> static EMO_HD void run(const EdcArgs<T, A>& a, int64_t i) {
    const EdcShape& s = a.s;
    int64_t ow = i % s.Wo, oh = (i / s.Wo) % s.Ho, c = (i / (s.Wo * s.Ho)) % s.Cmid,
            b = i / (s.Wo * s.Ho * s.Cmid);
    A p = dw_preact(a, b, c, oh, ow);
    if (a.z_out) {
      A z = silu(affine(a, c, p));
      if (s.skip) z += to_acc<A>(a.v[i]);  // skip implies stride 1: same shape as v
      a.z_out[i] = from_acc<T>(z);
    } else {
      a.p_out[i] = p;
    }
  }
};

struct EpilogueFwd {
  template <typename T, typename A> static EMO_HD void run(const EdcArgs<T, A>& a, int64_t i) {
    const EdcShape& s = a.s;
    int64_t c = (i / (s.Wo * s.Ho)) % s.Cmid;
    A z = silu(affine(a, c, a.p_in[i]));
    if (s.skip) z += to_acc<A>(a.v[i]);
    a.z_out[i] = from_acc<T>(z);
  }
};

struct DqBwd {  // gq = gz * silu'(q), q recomputed
  template <typename T, typename A> static EMO_HD void run(const EdcArgs<T, A>& a, int64_t i) {
    const EdcShape& s = a.s;
    int64_t ow = i % s.Wo, oh = (i / s.Wo) % s.Ho, c = (i / (s.Wo * s.Ho)) % s.Cmid,
            b = i / (s.Wo * s.Ho * s.Cmid);
    A p = dw_preact(a, b, c, oh, ow);
    a.gq_out[i] = to_acc<A>(a.gz[i]) * silu_grad(affine(a, c, p));
    if (a.p_out) a.p_out[i] = p;
  }
};

struct DvBwd {  // one element of v: gather the depthwise taps that read it
  template <typename T, typename A> static EMO_HD void run(const EdcArgs<T, A>& a, int64_t i) {
    const EdcShape& s = a.s;
    int64_t HW = s.H * s.W, hw = i % HW, ih = hw / s.W, iw = hw % s.W,
            c = (i / HW) % s.Cmid, b = i / (HW * s.Cmid);
    A gv = s.skip ? to_acc<A>(a.gz[i]) : A(0);
    const T* wp = a.w_dw + c * s.k * s.k;
    const int64_t obase = (b * s.Cmid + c) * s.Ho * s.Wo;
    for (int kh = 0; kh < s.k; ++kh) {
      int64_t t = ih + s.pad - kh;  // = oh * stride
      if (t < 0 || t % s.stride) continue;
      int64_t oh = t / s.stride;
      if (oh >= s.Ho) continue;
      for (int kw = 0; kw < s.k; ++kw) {
        int64_t u = iw + s.pad - kw;
        if (u < 0 || u % s.stride) continue;
        int64_t ow = u / s.stride;
        if (ow >= s.Wo) continue;
        gv += to_acc<A>(wp[kh * s.k + kw]) * grad_p(a, c, obase + oh * s.Wo + ow);
      }
    }
    if (a.w_exp) gv *= act_grad(s.act, expand_preact(a, b, c, hw));
    a.gu_out[i] = gv;
  }
};

struct DwWeightBwd {  // partial sum for (chunk, c, kh, kw)
  template <typename T, typename A> static EMO_HD void run(const EdcArgs<T, A>& a, int64_t i) {
    const EdcShape& s = a.s;
    const int64_t kk = (int64_t)s.k * s.k;
    int64_t tap = i % kk, c = (i / kk) % s.Cmid, chunk = i / (kk * s.Cmid);
    int kh = (int)(tap / s.k), kw = (int)(tap % s.k);
    const int64_t HWo = s.Ho * s.Wo, N = s.B * HWo;
    int64_t n0 = chunk * a.chunk, n1 = n0 + a.chunk < N ? n0 + a.chunk : N;
    A acc = A(0);
    for (int64_t n = n0; n < n1; ++n) {
      int64_t b = n / HWo, r = n % HWo, oh = r / s.Wo, ow = r % s.Wo;
      int64_t ih = oh * s.stride - s.pad + kh, iw = ow * s.stride - s.pad + kw;
      if (ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) continue;
      int64_t off = (b * s.Cmid + c) * HWo + r;
      acc += grad_p(a, c, off) * to_acc<A>(a.v[((b * s.Cmid + c) * s.H + ih) * s.W + iw]);
    }
    a.part[i] = acc;
  }
};

struct ExpandDxBwd {
  template <typename T, typename A> static EMO_HD void run(const EdcArgs<T, A>& a, int64_t i) {
    const EdcShape& s = a.s;
    int64_t HW = s.H * s.W, hw = i % HW, ci = (i / HW) % s.Cin, b = i / (HW * s.Cin);
    A g = A(0);
    const A* gp = a.gu_in + b * s.Cmid * HW + hw;
    for (int64_t c = 0; c < s.Cmid; ++c) g += to_acc<A>(a.w_exp[c * s.Cin + ci]) * gp[c * HW];
    a.gx_out[i] = from_acc<T>(g);
  }
};

struct ExpandDwBwd {  // partial sum for (chunk, c, ci)
  template <typename T, typename A> static EMO_HD void run(const EdcArgs<T, A>& a, int64_t i) {
    const EdcShape& s = a.s;
    int64_t ci = i % s.Cin, c = (i / s.Cin) % s.Cmid, chunk = i / (s.Cin * s.Cmid);
    const int64_t HW = s.H * s.W, N = s.B * HW;
    int64_t n0 = chunk * a.chunk, n1 = n0 + a.chunk < N ? n0 + a.chunk : N;
    A acc = A(0);
    for (int64_t n = n0; n < n1; ++n) {
      int64_t b = n / HW, hw = n % HW;
      acc += a.gu_in[(b * s.Cmid + c) * HW + hw] * to_acc<A>(a.x[(b * s.Cin + ci) * HW + hw]);
    }
    a.part[i] = acc;
  }
};

template <typename T, typename A>
EdcArgs<T, A> make_args(const EdcShape& s) {
  EdcArgs<T, A> a{};
  a.s = s;
  return a;
}

int64_t nchunks(int64_t N, int64_t chunk) { return (N + chunk - 1) / chunk; }

}  // namespace

#define T_(p) static_cast<const T*>(p)
#define A_(p) static_cast<const A*>(p)

const char* edc_expand_fwd(DType dt, const EdcShape& s, const void* x, const void* w_exp,
                           const void* b_exp, void* v, Launch l) {
  return EMO_DISPATCH(dt, {
    auto a = make_args<T, A>(s);
    a.x = T_(x); a.w_exp = T_(w_exp); a.b_exp = T_(b_exp); a.v_out = static_cast<T*>(v);
    return run_elementwise<ExpandFwd>(a, s.B * s.Cmid * s.H * s.W, l);
  });
}

const char* edc_dw_fwd(DType dt, const EdcShape& s, const void* v, const void* w_dw,
                       const void* b_dw, const void* scale, const void* shift, void* p_acc,
                       void* z, Launch l) {
  return EMO_DISPATCH(dt, {
    auto a = make_args<T, A>(s);
    a.v = T_(v); a.w_dw = T_(w_dw); a.b_dw = T_(b_dw); a.scale = A_(scale); a.shift = A_(shift);
    a.p_out = static_cast<A*>(p_acc); a.z_out = static_cast<T*>(z);
    return run_elementwise<DwFwd>(a, s.B * s.Cmid * s.Ho * s.Wo, l);
  });
}

const char* edc_epilogue_fwd(DType dt, const EdcShape& s, const void* p_acc, const void* scale,
                             const void* shift, const void* v, void* z, Launch l) {
  return EMO_DISPATCH(dt, {
    auto a = make_args<T, A>(s);
    a.p_in = A_(p_acc); a.scale = A_(scale); a.shift = A_(shift); a.v = T_(v);
    a.z_out = static_cast<T*>(z);
    return run_elementwise<EpilogueFwd>(a, s.B * s.Cmid * s.Ho * s.Wo, l);
  });
}

const char* edc_dq_bwd(DType dt, const EdcShape& s, const void* v, const void* w_dw,
                       const void* b_dw, const void* scale, const void* shift, const void* gz,
                       void* gq_acc, void* p_acc, Launch l) {
  return EMO_DISPATCH(dt, {
    auto a = make_args<T, A>(s);
    a.v = T_(v); a.w_dw = T_(w_dw); a.b_dw = T_(b_dw); a.scale = A_(scale); a.shift = A_(shift);
    a.gz = T_(gz); a.gq_out = static_cast<A*>(gq_acc); a.p_out = static_cast<A*>(p_acc);
    return run_elementwise<DqBwd>(a, s.B * s.Cmid * s.Ho * s.Wo, l);
  });
}

const char* edc_dv_bwd(DType dt, const EdcShape& s, const void* x, const void* w_exp,
                       const void* b_exp, const void* w_dw, const void* gz, const void* gq_acc,
                       const void* p_acc, const void* ca, const void* cb, const void* cc,
                       void* gu_acc, Launch l) {
  return EMO_DISPATCH(dt, {
    auto a = make_args<T, A>(s);
    a.x = T_(x); a.w_exp = T_(w_exp); a.b_exp = T_(b_exp); a.w_dw = T_(w_dw); a.gz = T_(gz);
    a.gq_in = A_(gq_acc); a.p_in = A_(p_acc); a.ca = A_(ca); a.cb = A_(cb); a.cc = A_(cc);
    a.gu_out = static_cast<A*>(gu_acc);
    return run_elementwise<DvBwd>(a, s.B * s.Cmid * s.H * s.W, l);
  });
}

const char* edc_dwweight_bwd(DType dt, const EdcShape& s, const void* v, const void* gq_acc,
                             const void* p_acc, const void* ca, const void* cb, const void* cc,
                             int64_t chunk, void* part, Launch l) {
  return EMO_DISPATCH(dt, {
    auto a = make_args<T, A>(s);
    a.v = T_(v); a.gq_in = A_(gq_acc); a.p_in = A_(p_acc); a.ca = A_(ca); a.cb = A_(cb);
    a.cc = A_(cc); a.chunk = chunk; a.part = static_cast<A*>(part);
    return run_elementwise<DwWeightBwd>(
        a, nchunks(s.B * s.Ho * s.Wo, chunk) * s.Cmid * s.k * s.k, l);
  });
}

const char* edc_expand_dx_bwd(DType dt, const EdcShape& s, const void* w_exp, const void* gu_acc,
                              void* gx, Launch l) {
  return EMO_DISPATCH(dt, {
    auto a = make_args<T, A>(s);
    a.w_exp = T_(w_exp); a.gu_in = A_(gu_acc); a.gx_out = static_cast<T*>(gx);
    return run_elementwise<ExpandDxBwd>(a, s.B * s.Cin * s.H * s.W, l);
  });
}

const char* edc_expand_dw_bwd(DType dt, const EdcShape& s, const void* x, const void* gu_acc,
                              int64_t chunk, void* part, Launch l) {
  return EMO_DISPATCH(dt, {
    auto a = make_args<T, A>(s);
    a.x = T_(x); a.gu_in = A_(gu_acc); a.chunk = chunk; a.part = static_cast<A*>(part);
    return run_elementwise<ExpandDwBwd>(a, nchunks(s.B * s.H * s.W, chunk) * s.Cmid * s.Cin, l);
  });
}

}  // namespace emo
