// window_attention kernels: EMO's strided-window multi-head attention and EMOv2's forms,
// forward (online softmax, saves the log-sum-exp) and backward (FlashAttention-style
// recomputation of the probabilities).
//
// Windows: the map is padded right/bottom to (ws*n1, ws*n2). Strided (EMO): pixel (Y, X)
// belongs to window (Y % n1, X % n2) as token (Y / n1, X / n2). Contiguous (EMOv2, close): to
// window (Y / ws, X / ws) as token (Y % ws, X % ws). Padded pixels are keys with key vector
// k_pad and value v_pad (each 0 when absent), never masked; their query outputs are cropped,
// so only real pixels are queries. Values have dv channels per head (EMOv2: wider than the
// head_dim of q and k). The hybrid form (both partitions summed) is two calls.
//
// One thread per (batch, head, query pixel) [forward, dq] or (batch, head, key pixel) [dk, dv];
// head vectors live in registers (MAXD >= head_dim and dv, compile-time), everything else is
// read from global memory, so the same element functions also run in the host emulation.
#include "common.cuh"

namespace emo {
namespace {

template <typename T, typename A>
struct WaArgs {
  WaShape s;
  const T* q; const T* k; const T* v; const T* k_pad; const T* v_pad; const T* out;
  const T* dout;
  const A* lse_in; const A* delta_in;
  T* out_w; A* lse_w; T* dq_w; A* delta_w; A* dk_full_w; A* dv_full_w;
};

EMO_HD int64_t at(const int64_t* st, int64_t b, int64_t c, int64_t y, int64_t x) {
  return b * st[0] + c * st[1] + y * st[2] + x * st[3];
}

// Row (or column) of token t of the window that holds row (column) y of the padded map: n
// windows along that axis, strided or contiguous.
EMO_HD int64_t win_pix(int close, int ws, int n, int64_t y, int t) {
  return close ? (y / ws) * ws + t : (int64_t)t * n + y % n;
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

// Key channel d of head channel offset c0 at pixel (Y, X): k, or k_pad (or 0) when padded.
template <typename T, typename A>
EMO_HD A key_at(const WaArgs<T, A>& a, int64_t b, int64_t c, int64_t Y, int64_t X, bool real) {
  return real ? to_acc<A>(a.k[at(a.s.sk, b, c, Y, X)]) : (a.k_pad ? to_acc<A>(a.k_pad[c]) : A(0));
}

// Value channel c at pixel (Y, X): v, or v_pad (or 0) when padded.
template <typename T, typename A>
EMO_HD A value_at(const WaArgs<T, A>& a, int64_t b, int64_t c, int64_t Y, int64_t X, bool real) {
  return real ? to_acc<A>(a.v[at(a.s.sv, b, c, Y, X)]) : (a.v_pad ? to_acc<A>(a.v_pad[c]) : A(0));
}

template <int MAXD>
struct WaFwd {
  template <typename T, typename A> static EMO_HD void run(const WaArgs<T, A>& a, int64_t i) {
    const WaShape& s = a.s;
    const int D = s.head_dim, DV = s.dv;
    Pix p = decode(i, s.heads, s.H, s.W);
    const int64_t c0 = p.h * D, v0 = p.h * DV;
    const A scale = (A)s.scale;
    A qv[MAXD], o[MAXD];
#pragma unroll
    for (int d = 0; d < MAXD; ++d) {
      qv[d] = d < D ? to_acc<A>(a.q[at(s.sq, p.b, c0 + d, p.y, p.x)]) : A(0);
      o[d] = A(0);
    }
    A m = -INFINITY, l = A(0);
    for (int ti = 0; ti < s.ws; ++ti) {
      const int64_t Y = win_pix(s.close, s.ws, s.n1, p.y, ti);
      for (int tj = 0; tj < s.ws; ++tj) {
        const int64_t X = win_pix(s.close, s.ws, s.n2, p.x, tj);
        const bool real = Y < s.H && X < s.W;
        A sc = A(0);
#pragma unroll
        for (int d = 0; d < MAXD; ++d)
          if (d < D) sc += qv[d] * key_at(a, p.b, c0 + d, Y, X, real);
        sc *= scale;
        const A mn = e_max(m, sc), corr = e_exp(m - mn), pr = e_exp(sc - mn);
        l = l * corr + pr;
#pragma unroll
        for (int d = 0; d < MAXD; ++d)
          if (d < DV) o[d] = o[d] * corr + pr * value_at(a, p.b, v0 + d, Y, X, real);
        m = mn;
      }
    }
    const A inv = A(1) / l;
#pragma unroll
    for (int d = 0; d < MAXD; ++d)
      if (d < DV) a.out_w[((p.b * s.Cv + v0 + d) * s.H + p.y) * s.W + p.x] = from_acc<T>(o[d] * inv);
    a.lse_w[i] = m + e_log(l);
  }
};

template <int MAXD>
struct WaBwdDq {
  template <typename T, typename A> static EMO_HD void run(const WaArgs<T, A>& a, int64_t i) {
    const WaShape& s = a.s;
    const int D = s.head_dim, DV = s.dv;
    Pix p = decode(i, s.heads, s.H, s.W);
    const int64_t c0 = p.h * D, v0 = p.h * DV;
    const A scale = (A)s.scale;
    A qv[MAXD], dov[MAXD], dq[MAXD];
    A delta = A(0);
#pragma unroll
    for (int d = 0; d < MAXD; ++d) {
      const int64_t off = ((p.b * s.Cv + v0 + d) * s.H + p.y) * s.W + p.x;
      qv[d] = d < D ? to_acc<A>(a.q[at(s.sq, p.b, c0 + d, p.y, p.x)]) : A(0);
      dov[d] = d < DV ? to_acc<A>(a.dout[off]) : A(0);
      if (d < DV) delta += dov[d] * to_acc<A>(a.out[off]);
      dq[d] = A(0);
    }
    const A lse = a.lse_in[i];
    for (int ti = 0; ti < s.ws; ++ti) {
      const int64_t Y = win_pix(s.close, s.ws, s.n1, p.y, ti);
      for (int tj = 0; tj < s.ws; ++tj) {
        const int64_t X = win_pix(s.close, s.ws, s.n2, p.x, tj);
        const bool real = Y < s.H && X < s.W;
        A sc = A(0), dp = A(0);
#pragma unroll
        for (int d = 0; d < MAXD; ++d) {
          if (d < D) sc += qv[d] * key_at(a, p.b, c0 + d, Y, X, real);
          if (d < DV) dp += dov[d] * value_at(a, p.b, v0 + d, Y, X, real);
        }
        const A pr = e_exp(sc * scale - lse), ds = pr * (dp - delta);
#pragma unroll
        for (int d = 0; d < MAXD; ++d)
          if (d < D) dq[d] += ds * key_at(a, p.b, c0 + d, Y, X, real);
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
    const int D = s.head_dim, DV = s.dv;
    const int64_t Hp = (int64_t)s.ws * s.n1, Wp = (int64_t)s.ws * s.n2;
    Pix p = decode(i, s.heads, Hp, Wp);
    const int64_t c0 = p.h * D, v0 = p.h * DV;
    const bool real = p.y < s.H && p.x < s.W;
    const A scale = (A)s.scale;
    A kv[MAXD], vv[MAXD], dk[MAXD], dv[MAXD];
#pragma unroll
    for (int d = 0; d < MAXD; ++d) {
      kv[d] = d < D ? key_at(a, p.b, c0 + d, p.y, p.x, real) : A(0);
      vv[d] = d < DV ? value_at(a, p.b, v0 + d, p.y, p.x, real) : A(0);
      dk[d] = A(0);
      dv[d] = A(0);
    }
    for (int ti = 0; ti < s.ws; ++ti) {
      const int64_t Y = win_pix(s.close, s.ws, s.n1, p.y, ti);
      if (Y >= s.H) continue;  // padded queries are cropped: no gradient flows from them
      for (int tj = 0; tj < s.ws; ++tj) {
        const int64_t X = win_pix(s.close, s.ws, s.n2, p.x, tj);
        if (X >= s.W) continue;
        const int64_t qi = ((p.b * s.heads + p.h) * s.H + Y) * s.W + X;
        A sc = A(0), dp = A(0);
#pragma unroll
        for (int d = 0; d < MAXD; ++d) {
          if (d < D) sc += to_acc<A>(a.q[at(s.sq, p.b, c0 + d, Y, X)]) * kv[d];
          if (d < DV) dp += to_acc<A>(a.dout[((p.b * s.Cv + v0 + d) * s.H + Y) * s.W + X]) * vv[d];
        }
        const A pr = e_exp(sc * scale - a.lse_in[qi]), ds = pr * (dp - a.delta_in[qi]);
#pragma unroll
        for (int d = 0; d < MAXD; ++d) {
          if (d < D) dk[d] += ds * to_acc<A>(a.q[at(s.sq, p.b, c0 + d, Y, X)]);
          if (d < DV) dv[d] += pr * to_acc<A>(a.dout[((p.b * s.Cv + v0 + d) * s.H + Y) * s.W + X]);
        }
      }
    }
#pragma unroll
    for (int d = 0; d < MAXD; ++d) {
      if (d < D) a.dk_full_w[((p.b * s.C + c0 + d) * Hp + p.y) * Wp + p.x] = dk[d] * scale;
      if (d < DV) a.dv_full_w[((p.b * s.Cv + v0 + d) * Hp + p.y) * Wp + p.x] = dv[d];
    }
  }
};

// Picks the smallest register width that holds head_dim and the value head width.
template <template <int> class K, typename T, typename A>
const char* run_wa(const WaArgs<T, A>& a, int64_t n, const Launch& l) {
  const int D = a.s.head_dim, w = D > a.s.dv ? D : a.s.dv;
  if (D > WA_MAX_HEAD_DIM) return "window_attention: head_dim > 64 is not supported by the CUDA kernels";
  if (w <= 32) return run_elementwise<K<32>>(a, n, l);
  if (w <= 64) return run_elementwise<K<64>>(a, n, l);
  if (w <= WA_MAX_VALUE_DIM) return run_elementwise<K<WA_MAX_VALUE_DIM>>(a, n, l);
  return "window_attention: value heads wider than 128 channels are not supported by the CUDA "
         "kernels";
}

}  // namespace

#define T_(p) static_cast<const T*>(p)
#define A_(p) static_cast<const A*>(p)

const char* wa_fwd(DType dt, const WaShape& s, const void* q, const void* k, const void* v,
                   const void* k_pad, const void* v_pad, void* out, void* lse, Launch l) {
  return EMO_DISPATCH(dt, {
    WaArgs<T, A> a{};
    a.s = s; a.q = T_(q); a.k = T_(k); a.v = T_(v); a.k_pad = T_(k_pad); a.v_pad = T_(v_pad);
    a.out_w = static_cast<T*>(out); a.lse_w = static_cast<A*>(lse);
    return run_wa<WaFwd>(a, s.B * s.heads * s.H * s.W, l);
  });
}

const char* wa_bwd_dq(DType dt, const WaShape& s, const void* q, const void* k, const void* v,
                      const void* k_pad, const void* v_pad, const void* out, const void* dout,
                      const void* lse, void* dq, void* delta, Launch l) {
  return EMO_DISPATCH(dt, {
    WaArgs<T, A> a{};
    a.s = s; a.q = T_(q); a.k = T_(k); a.v = T_(v); a.k_pad = T_(k_pad); a.v_pad = T_(v_pad);
    a.out = T_(out); a.dout = T_(dout); a.lse_in = A_(lse);
    a.dq_w = static_cast<T*>(dq); a.delta_w = static_cast<A*>(delta);
    return run_wa<WaBwdDq>(a, s.B * s.heads * s.H * s.W, l);
  });
}

const char* wa_bwd_dkv(DType dt, const WaShape& s, const void* q, const void* k, const void* v,
                       const void* k_pad, const void* v_pad, const void* dout, const void* lse,
                       const void* delta, void* dk_full, void* dv_full, Launch l) {
  return EMO_DISPATCH(dt, {
    WaArgs<T, A> a{};
    a.s = s; a.q = T_(q); a.k = T_(k); a.v = T_(v); a.k_pad = T_(k_pad); a.v_pad = T_(v_pad);
    a.dout = T_(dout); a.lse_in = A_(lse); a.delta_in = A_(delta);
    a.dk_full_w = static_cast<A*>(dk_full); a.dv_full_w = static_cast<A*>(dv_full);
    return run_wa<WaBwdDkv>(a, s.B * s.heads * (int64_t)s.ws * s.n1 * (int64_t)s.ws * s.n2, l);
  });
}

}  // namespace emo
