// window_attention kernels: EMO's strided-window multi-head attention, forward (online softmax,
// saves the log-sum-exp) and backward (FlashAttention-style recomputation of the probabilities).
//
// Windows: the map is padded right/bottom to (ws*n1, ws*n2); pixel (Y, X) belongs to window
// (Y % n1, X % n2) as token (Y / n1, X / n2). Padded pixels are keys with key vector k_pad and
// value 0, never masked; their query outputs are cropped, so only real pixels are queries.
//
// One thread per (batch, head, query pixel) [forward, dq] or (batch, head, key pixel) [dk, dv];
// head vectors live in registers (MAXD >= head_dim, compile-time), everything else is read
// from global memory, so the same element functions also run in the host emulation.
#include "common.cuh"

namespace emo {
namespace {

template <typename T, typename A>
struct WaArgs {
  WaShape s;
  const T* q; const T* k; const T* v; const T* k_pad; const T* out; const T* dout;
  const A* lse_in; const A* delta_in;
  T* out_w; A* lse_w; T* dq_w; A* delta_w; A* dk_pad_w; T* dv_w;
};

EMO_HD int64_t at(const int64_t* st, int64_t b, int64_t c, int64_t y, int64_t x) {
  return b * st[0] + c * st[1] + y * st[2] + x * st[3];
}

// Decode a flat index over (B, heads, rows, cols).
struct Pix { int64_t b, h, y, x; };
EMO_HD Pix decode(int64_t i, int64_t heads, int64_t rows, int64_t cols) {
  Pix p;
  p.x = i % cols; i /= cols;
  p.y = i % rows; i /= rows;
  p.h = i % heads; p.b = i / heads;
  return p;
}

template <int MAXD>
struct WaFwd {
  template <typename T, typename A> static EMO_HD void run(const WaArgs<T, A>& a, int64_t i) {
    const WaShape& s = a.s;
    const int D = s.head_dim;
    Pix p = decode(i, s.heads, s.H, s.W);
    const int64_t c0 = p.h * D, wa = p.y % s.n1, wb = p.x % s.n2;
    const A scale = (A)s.scale;
    A qv[MAXD], o[MAXD];
#pragma unroll
    for (int d = 0; d < MAXD; ++d) {
      qv[d] = d < D ? to_acc<A>(a.q[at(s.sq, p.b, c0 + d, p.y, p.x)]) : A(0);
      o[d] = A(0);
    }
    A m = -INFINITY, l = A(0);
    for (int ti = 0; ti < s.ws; ++ti) {
      const int64_t Y = (int64_t)ti * s.n1 + wa;
      for (int tj = 0; tj < s.ws; ++tj) {
        const int64_t X = (int64_t)tj * s.n2 + wb;
        const bool real = Y < s.H && X < s.W;
        A sc = A(0);
#pragma unroll
        for (int d = 0; d < MAXD; ++d) {
          if (d < D) {
            A kd = real ? to_acc<A>(a.k[at(s.sk, p.b, c0 + d, Y, X)])
                        : (a.k_pad ? to_acc<A>(a.k_pad[c0 + d]) : A(0));
            sc += qv[d] * kd;
          }
        }
        sc *= scale;
        const A mn = e_max(m, sc), corr = e_exp(m - mn), pr = e_exp(sc - mn);
        l = l * corr + pr;
#pragma unroll
        for (int d = 0; d < MAXD; ++d) {
          if (d < D) {
            A vd = real ? to_acc<A>(a.v[at(s.sv, p.b, c0 + d, Y, X)]) : A(0);
            o[d] = o[d] * corr + pr * vd;
          }
        }
        m = mn;
      }
    }
    const A inv = A(1) / l;
#pragma unroll
    for (int d = 0; d < MAXD; ++d)
      if (d < D) a.out_w[((p.b * s.C + c0 + d) * s.H + p.y) * s.W + p.x] = from_acc<T>(o[d] * inv);
    a.lse_w[i] = m + e_log(l);
  }
};

template <int MAXD>
struct WaBwdDq {
  template <typename T, typename A> static EMO_HD void run(const WaArgs<T, A>& a, int64_t i) {
    const WaShape& s = a.s;
    const int D = s.head_dim;
    Pix p = decode(i, s.heads, s.H, s.W);
    const int64_t c0 = p.h * D, wa = p.y % s.n1, wb = p.x % s.n2;
    const A scale = (A)s.scale;
    A qv[MAXD], dov[MAXD], dq[MAXD];
    A delta = A(0);
#pragma unroll
    for (int d = 0; d < MAXD; ++d) {
      const int64_t off = ((p.b * s.C + c0 + d) * s.H + p.y) * s.W + p.x;
      qv[d] = d < D ? to_acc<A>(a.q[at(s.sq, p.b, c0 + d, p.y, p.x)]) : A(0);
      dov[d] = d < D ? to_acc<A>(a.dout[off]) : A(0);
      if (d < D) delta += dov[d] * to_acc<A>(a.out[off]);
      dq[d] = A(0);
    }
    const A lse = a.lse_in[i];
    for (int ti = 0; ti < s.ws; ++ti) {
      const int64_t Y = (int64_t)ti * s.n1 + wa;
      for (int tj = 0; tj < s.ws; ++tj) {
        const int64_t X = (int64_t)tj * s.n2 + wb;
        const bool real = Y < s.H && X < s.W;
        A sc = A(0), dp = A(0);
#pragma unroll
        for (int d = 0; d < MAXD; ++d) {
          if (d < D) {
            A kd = real ? to_acc<A>(a.k[at(s.sk, p.b, c0 + d, Y, X)])
                        : (a.k_pad ? to_acc<A>(a.k_pad[c0 + d]) : A(0));
            sc += qv[d] * kd;
            if (real) dp += dov[d] * to_acc<A>(a.v[at(s.sv, p.b, c0 + d, Y, X)]);
          }
        }
        const A pr = e_exp(sc * scale - lse), ds = pr * (dp - delta);
#pragma unroll
        for (int d = 0; d < MAXD; ++d) {
          if (d < D) {
            A kd = real ? to_acc<A>(a.k[at(s.sk, p.b, c0 + d, Y, X)])
                        : (a.k_pad ? to_acc<A>(a.k_pad[c0 + d]) : A(0));
            dq[d] += ds * kd;
          }
        }
      }
    }
#pragma unroll
    for (int d = 0; d < MAXD; ++d)
      if (d < D) a.dq_w[((p.b * s.C + c0 + d) * s.H + p.y) * s.W + p.x] = from_acc<T>(dq[d] * scale);
    a.delta_w[i] = delta;
  }
};

template <int MAXD>
struct WaBwdDkv {  // one key pixel of the padded map
  template <typename T, typename A> static EMO_HD void run(const WaArgs<T, A>& a, int64_t i) {
    const WaShape& s = a.s;
    const int D = s.head_dim;
    const int64_t Hp = (int64_t)s.ws * s.n1, Wp = (int64_t)s.ws * s.n2;
    Pix p = decode(i, s.heads, Hp, Wp);
    const int64_t c0 = p.h * D, wa = p.y % s.n1, wb = p.x % s.n2;
    const bool real = p.y < s.H && p.x < s.W;
    const A scale = (A)s.scale;
    A kv[MAXD], vv[MAXD], dk[MAXD], dv[MAXD];
#pragma unroll
    for (int d = 0; d < MAXD; ++d) {
      kv[d] = d >= D ? A(0)
              : real ? to_acc<A>(a.k[at(s.sk, p.b, c0 + d, p.y, p.x)])
                     : (a.k_pad ? to_acc<A>(a.k_pad[c0 + d]) : A(0));
      vv[d] = (d < D && real) ? to_acc<A>(a.v[at(s.sv, p.b, c0 + d, p.y, p.x)]) : A(0);
      dk[d] = A(0);
      dv[d] = A(0);
    }
    for (int ti = 0; ti < s.ws; ++ti) {
      const int64_t Y = (int64_t)ti * s.n1 + wa;
      if (Y >= s.H) continue;  // padded queries are cropped: no gradient flows from them
      for (int tj = 0; tj < s.ws; ++tj) {
        const int64_t X = (int64_t)tj * s.n2 + wb;
        if (X >= s.W) continue;
        const int64_t qi = ((p.b * s.heads + p.h) * s.H + Y) * s.W + X;
        A sc = A(0), dp = A(0);
#pragma unroll
        for (int d = 0; d < MAXD; ++d) {
          if (d < D) {
            sc += to_acc<A>(a.q[at(s.sq, p.b, c0 + d, Y, X)]) * kv[d];
            dp += to_acc<A>(a.dout[((p.b * s.C + c0 + d) * s.H + Y) * s.W + X]) * vv[d];
          }
        }
        const A pr = e_exp(sc * scale - a.lse_in[qi]), ds = pr * (dp - a.delta_in[qi]);
#pragma unroll
        for (int d = 0; d < MAXD; ++d) {
          if (d < D) {
            dk[d] += ds * to_acc<A>(a.q[at(s.sq, p.b, c0 + d, Y, X)]);
            dv[d] += pr * to_acc<A>(a.dout[((p.b * s.C + c0 + d) * s.H + Y) * s.W + X]);
          }
        }
      }
    }
#pragma unroll
    for (int d = 0; d < MAXD; ++d) {
      if (d < D) {
        a.dk_pad_w[((p.b * s.C + c0 + d) * Hp + p.y) * Wp + p.x] = dk[d] * scale;
        if (real) a.dv_w[((p.b * s.C + c0 + d) * s.H + p.y) * s.W + p.x] = from_acc<T>(dv[d]);
      }
    }
  }
};

// Picks the smallest register width that holds head_dim.
template <template <int> class K, typename T, typename A>
const char* run_wa(const WaArgs<T, A>& a, int64_t n, const Launch& l) {
  const int D = a.s.head_dim;
  if (D <= 32) return run_elementwise<K<32>>(a, n, l);
  if (D <= WA_MAX_HEAD_DIM) return run_elementwise<K<WA_MAX_HEAD_DIM>>(a, n, l);
  return "window_attention: head_dim > 64 is not supported by the CUDA kernels";
}

}  // namespace

#define T_(p) static_cast<const T*>(p)
#define A_(p) static_cast<const A*>(p)

const char* wa_fwd(DType dt, const WaShape& s, const void* q, const void* k, const void* v,
                   const void* k_pad, void* out, void* lse, Launch l) {
  return EMO_DISPATCH(dt, {
    WaArgs<T, A> a{};
    a.s = s; a.q = T_(q); a.k = T_(k); a.v = T_(v); a.k_pad = T_(k_pad);
    a.out_w = static_cast<T*>(out); a.lse_w = static_cast<A*>(lse);
    return run_wa<WaFwd>(a, s.B * s.heads * s.H * s.W, l);
  });
}

const char* wa_bwd_dq(DType dt, const WaShape& s, const void* q, const void* k, const void* v,
                      const void* k_pad, const void* out, const void* dout, const void* lse,
                      void* dq, void* delta, Launch l) {
  return EMO_DISPATCH(dt, {
    WaArgs<T, A> a{};
    a.s = s; a.q = T_(q); a.k = T_(k); a.v = T_(v); a.k_pad = T_(k_pad); a.out = T_(out);
    a.dout = T_(dout); a.lse_in = A_(lse);
    a.dq_w = static_cast<T*>(dq); a.delta_w = static_cast<A*>(delta);
    return run_wa<WaBwdDq>(a, s.B * s.heads * s.H * s.W, l);
  });
}

const char* wa_bwd_dkv(DType dt, const WaShape& s, const void* q, const void* k, const void* v,
                       const void* k_pad, const void* dout, const void* lse, const void* delta,
                       void* dk_pad, void* dv, Launch l) {
  return EMO_DISPATCH(dt, {
    WaArgs<T, A> a{};
    a.s = s; a.q = T_(q); a.k = T_(k); a.v = T_(v); a.k_pad = T_(k_pad); a.dout = T_(dout);
    a.lse_in = A_(lse); a.delta_in = A_(delta);
    a.dk_pad_w = static_cast<A*>(dk_pad); a.dv_w = static_cast<T*>(dv);
    return run_wa<WaBwdDkv>(a, s.B * s.heads * (int64_t)s.ws * s.n1 * (int64_t)s.ws * s.n2, l);
  });
}

}  // namespace emo
