// window_attention: EMO's strided-window attention read straight from q/k/v of any strides
// (NHWC channel slices of the qk conv output need no copy), one task per (image, window, head):
// gather the window, scores and P.V in blocks of 4 queries, output written once in NHWC.
// EMOv2's forms: the contiguous ("close") partition, the hybrid sum of both partitions (a
// second pass over the close windows adds into the output), value heads of dv = Cv / heads
// channels (wider than the query/key heads), padded tokens' values v_pad.
#include "common.h"

namespace EMO_CPU_NS {

// S[q][0:Lp) = Q[q] . Kt for NQ queries: per group of 4 key vectors, NQ x 4 accumulators
// over the d channels (Kt: d x Lp, Lp a multiple of 4 vectors).
template <typename T, int NQ>
inline void attn_scores(const T* Q, const T* Kt, T* S, int64_t d, int64_t Lp) {
  using V = Vectorized<T>;
  constexpr int64_t VS = V::size();
  for (int64_t j = 0; j < Lp; j += 4 * VS) {
    V acc[NQ][4];
    for (int q = 0; q < NQ; ++q)
      for (int i = 0; i < 4; ++i) acc[q][i] = V(T(0));
    for (int64_t c = 0; c < d; ++c) {
      const T* kr = Kt + c * Lp + j;
      const V k0 = V::loadu(kr), k1 = V::loadu(kr + VS), k2 = V::loadu(kr + 2 * VS),
              k3 = V::loadu(kr + 3 * VS);
#pragma GCC unroll 4
      for (int q = 0; q < NQ; ++q) {
        const V qv(Q[q * d + c]);
        acc[q][0] = at::vec::fmadd(qv, k0, acc[q][0]);
        acc[q][1] = at::vec::fmadd(qv, k1, acc[q][1]);
        acc[q][2] = at::vec::fmadd(qv, k2, acc[q][2]);
        acc[q][3] = at::vec::fmadd(qv, k3, acc[q][3]);
      }
    }
    for (int q = 0; q < NQ; ++q)
      for (int i = 0; i < 4; ++i) acc[q][i].store(S + q * Lp + j + i * VS);
  }
}

// out[pix[q]][c0 : c0 + d) = sum_j P[q][j] Vb[j] for NQ queries (P: normalised softmax rows;
// pix < 0: a padded query, cropped away), 2 channel vectors at a time: NQ x 2 accumulators over
// the L keys. Reads P (NQ rows of Lp) and Vb (L x dp), writes NQ x d outputs (adds to them
// with `add`: the second partition of the hybrid form).
template <typename T, int NQ>
inline void attn_pv(const T* P, const T* Vb, const int64_t* pix, T* out,
                    int64_t img, int64_t C, int64_t c0, int64_t L, int64_t Lp, int64_t d,
                    int64_t dp, bool add) {
  using V = Vectorized<T>;
  constexpr int64_t VS = V::size();
  for (int64_t c = 0; c < dp; c += 2 * VS) {
    const bool two = c + VS < dp;
    V acc[NQ][2];
    for (int q = 0; q < NQ; ++q) acc[q][0] = acc[q][1] = V(T(0));
    for (int64_t j = 0; j < L; ++j) {
      const V v0 = V::loadu(Vb + j * dp + c);
      const V v1 = two ? V::loadu(Vb + j * dp + c + VS) : V(T(0));
#pragma GCC unroll 4
      for (int q = 0; q < NQ; ++q) {
        const V p(P[q * Lp + j]);
        acc[q][0] = at::vec::fmadd(p, v0, acc[q][0]);
        acc[q][1] = at::vec::fmadd(p, v1, acc[q][1]);
      }
    }
    for (int q = 0; q < NQ; ++q) {
      if (pix[q] < 0) continue;
      T* o = out + (img + pix[q]) * C + c0;
      const int64_t n0 = std::min<int64_t>(VS, d - c);
      if (add) acc[q][0] = V::loadu(o + c, n0) + acc[q][0];
      acc[q][0].store(o + c, n0);
      if (two) {
        const int64_t n1 = std::min<int64_t>(VS, d - c - VS);
        if (add) acc[q][1] = V::loadu(o + c + VS, n1) + acc[q][1];
        acc[q][1].store(o + c + VS, n1);
      }
    }
  }
}

// The window grid: n1 x n2 windows of ws x ws tokens, strided n1 (n2) apart ("remote") or
// contiguous ("close"), L = ws^2 tokens per window, Lp keys and dvp value channels padded (see
// window_attention_kernel); q/k heads of d channels, value heads of dv.
struct WindowGeom {
  int64_t C, H, W, d, ws, n1, n2, L, Lp, dv, dvp;
  const int64_t *qs, *ks, *vs;  // (B, C, H, W) strides
  bool unit;                    // channels contiguous in q, k, v
  bool close;                   // the contiguous partition
};

// Gathers window (b, a1, a2)'s tokens of head h (q/k channels c0 = h*d, value channels
// cv0 = h*dv): Qb (L x d, scaled), Kt (d x Lp, keys transposed; padded tokens get k_pad or 0,
// columns past L stay 0), Vb (L x dvp, lanes past dv stay 0, padded tokens' rows v_pad or 0),
// pix (each token's output pixel, -1 for a padded one).
template <typename T>
void gather_window(const WindowGeom& g, const T* q, const T* k, const T* v, const T* kpad,
                   const T* vpad, int64_t b, int64_t a1, int64_t a2, int64_t c0, int64_t cv0,
                   T scale, T* Qb, T* Kt, T* Vb, int64_t* pix) {
  using V = Vectorized<T>;
  constexpr int64_t VS = V::size();
  const int64_t d = g.d, Lp = g.Lp, dv = g.dv, dvp = g.dvp;
  std::fill(Kt, Kt + d * Lp, T(0));
  std::fill(Vb, Vb + g.L * dvp, T(0));
  for (int64_t i = 0; i < g.ws; ++i)
    for (int64_t j = 0; j < g.ws; ++j) {
      const int64_t t = i * g.ws + j;
      const int64_t y = g.close ? a1 * g.ws + i : i * g.n1 + a1;
      const int64_t x = g.close ? a2 * g.ws + j : j * g.n2 + a2;
      if (!(y < g.H && x < g.W)) {
        pix[t] = -1;
        for (int64_t c = 0; c < d; ++c) Kt[c * Lp + t] = kpad ? kpad[c0 + c] : T(0);
        if (vpad) std::copy(vpad + cv0, vpad + cv0 + dv, Vb + t * dvp);
        continue;
      }
      pix[t] = y * g.W + x;
      const T* qp = q + b * g.qs[0] + c0 * g.qs[1] + y * g.qs[2] + x * g.qs[3];
      const T* kp = k + b * g.ks[0] + c0 * g.ks[1] + y * g.ks[2] + x * g.ks[3];
      const T* vp = v + b * g.vs[0] + cv0 * g.vs[1] + y * g.vs[2] + x * g.vs[3];
      if (g.unit) {  // channels contiguous (NHWC): vector copies for q and v
        for (int64_t c = 0; c < d; c += VS) {
          const int64_t cnt = std::min<int64_t>(VS, d - c);
          (V::loadu(qp + c, cnt) * V(scale)).store(Qb + t * d + c, cnt);
        }
        for (int64_t c = 0; c < dv; c += VS) {
          const int64_t cnt = std::min<int64_t>(VS, dv - c);
          V::loadu(vp + c, cnt).store(Vb + t * dvp + c, cnt);
        }
        for (int64_t c = 0; c < d; ++c) Kt[c * Lp + t] = kp[c];
      } else {
        for (int64_t c = 0; c < d; ++c) {
          Qb[t * d + c] = qp[c * g.qs[1]] * scale;
          Kt[c * Lp + t] = kp[c * g.ks[1]];
        }
        for (int64_t c = 0; c < dv; ++c) Vb[t * dvp + c] = vp[c * g.vs[1]];
      }
    }
}

// Softmax of each of the L score rows (Lp wide) over the L real keys (lanes past L are set to
// -inf, then exactly 0), normalised in place.
template <typename T>
void softmax_rows(T* S, int64_t L, int64_t Lp) {
  using V = Vectorized<T>;
  constexpr int64_t VS = V::size();
  const T ninf = -std::numeric_limits<T>::infinity();
  for (int64_t t = 0; t < L; ++t) {
    T* st = S + t * Lp;
    for (int64_t j = L; j < Lp; ++j) st[j] = ninf;
    V mv = V::loadu(st);
    for (int64_t j = VS; j < Lp; j += VS) mv = at::vec::maximum(mv, V::loadu(st + j));
    const V mxv(at::vec::vec_reduce_all<T>(
        [](V& a, V& b) { return at::vec::maximum(a, b); }, mv));
    V sv(T(0));
    for (int64_t j = 0; j < Lp; j += VS) {
      V e = vexp(V::loadu(st + j) - mxv);
      if (j + VS > L) e = V::blendv(e, V(T(0)), V::loadu(st + j) == V(ninf));
      e.store(st + j);
      sv = sv + e;
    }
    // normalise the row before P V (as torch's softmax-then-matmul does): dividing the
    // weighted sum afterwards overflows when sum_j e_j v_j leaves the range of T although
    // the average does not (v ~ 3e38 in float)
    const V r(T(1) / at::vec::vec_reduce_all<T>([](V& a, V& b) { return a + b; }, sv));
    for (int64_t j = 0; j < Lp; j += VS) (V::loadu(st + j) * r).store(st + j);
  }
}

// One pass over the windows of one partition (close or not), every (image, window, head) a
// task; `add`: add into out (the hybrid form's second pass) instead of storing.
template <typename T>
void window_attention_kernel(const T* q, const T* k, const T* v, const T* kpad, const T* vpad,
                             T* out,
                             const int64_t* qs, const int64_t* ks, const int64_t* vs,  // B,C,H,W strides
                             int64_t B, int64_t C, int64_t Cv, int64_t H, int64_t W, int64_t d,
                             int64_t ws, T scale, bool close, bool add) {
  constexpr int64_t VS = Vectorized<T>::size();
  const int64_t heads = C / d, dv = Cv / heads;
  const int64_t Hp = (H + ws - 1) / ws * ws, Wp = (W + ws - 1) / ws * ws;
  const int64_t n1 = Hp / ws, n2 = Wp / ws, L = ws * ws;
  // keys padded to a multiple of 4 vectors (the score blocks), channels to whole vectors
  const int64_t Lp = (L + 4 * VS - 1) / (4 * VS) * (4 * VS), dvp = (dv + VS - 1) / VS * VS;
  const WindowGeom g{C, H, W, d, ws, n1, n2, L, Lp, dv, dvp, qs, ks, vs,
                     qs[1] == 1 && ks[1] == 1 && vs[1] == 1, close};
  at::parallel_for(0, B * n1 * n2 * heads, 1, [&](int64_t begin, int64_t end) {
    const T fill = scratch_fill<T>();
    std::vector<T> Qb(L * d, fill), Kt(d * Lp, fill), Vb(L * dvp, fill), S(L * Lp, fill);
    std::vector<int64_t> pix(L);  // h * W + w, or -1 for a padded token
    for (int64_t task = begin; task < end; ++task) {
      const int64_t h = task % heads;
      const int64_t win = task / heads;
      const int64_t b = win / (n1 * n2), a1 = (win / n2) % n1, a2 = win % n2;
      const int64_t c0 = h * d, cv0 = h * dv;
      gather_window<T>(g, q, k, v, kpad, vpad, b, a1, a2, c0, cv0, scale, Qb.data(), Kt.data(),
                       Vb.data(), pix.data());
      // scores S = Q K^T for blocks of 4 queries x 4 key vectors (16 independent FMA chains)
      int64_t t0 = 0;
      for (; t0 + 4 <= L; t0 += 4) attn_scores<T, 4>(Qb.data() + t0 * d, Kt.data(), S.data() + t0 * Lp, d, Lp);
      for (; t0 < L; ++t0) attn_scores<T, 1>(Qb.data() + t0 * d, Kt.data(), S.data() + t0 * Lp, d, Lp);
      softmax_rows<T>(S.data(), L, Lp);
      // O = P V for blocks of 4 queries x 2 channel vectors, written to NHWC
      for (t0 = 0; t0 + 4 <= L; t0 += 4)
        attn_pv<T, 4>(S.data() + t0 * Lp, Vb.data(), pix.data() + t0, out, b * H * W, Cv, cv0,
                      L, Lp, dv, dvp, add);
      for (; t0 < L; ++t0)
        attn_pv<T, 1>(S.data() + t0 * Lp, Vb.data(), pix.data() + t0, out, b * H * W, Cv, cv0,
                      L, Lp, dv, dvp, add);
    }
  });
}

// partition: 0 remote (EMO's strided windows), 1 close (contiguous), 2 hybrid (both, summed:
// emo_kernels/backends/cpu's PARTITION_CODES).
at::Tensor window_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const OptT& k_pad, int64_t head_dim,
                            int64_t window_size, double scale, const OptT& v_pad,
                            int64_t partition) {
  check_float(q);
  TORCH_CHECK(q.dim() == 4 && k.sizes() == q.sizes() && v.dim() == 4 &&
                  v.size(0) == q.size(0) && v.size(2) == q.size(2) && v.size(3) == q.size(3),
              "q, k must be (B, C, H, W) of one shape, v (B, Cv, H, W)");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "q, k, v must share a dtype");
  const int64_t B = q.size(0), C = q.size(1), H = q.size(2), W = q.size(3), Cv = v.size(1);
  TORCH_CHECK(head_dim > 0 && C % head_dim == 0, "head_dim must divide C");
  TORCH_CHECK(Cv > 0 && Cv % (C / head_dim) == 0, "Cv must be a multiple of the heads");
  TORCH_CHECK(window_size > 0, "window_size must be positive");
  TORCH_CHECK(partition >= 0 && partition <= 2, "partition must be 0, 1 or 2");
  TORCH_CHECK(!has(k_pad) || k_pad->numel() == C, "k_pad must have C elements");
  TORCH_CHECK(!has(v_pad) || v_pad->numel() == Cv, "v_pad must have Cv elements");
  at::Tensor kp, vp;
  if (has(k_pad)) kp = k_pad->contiguous();
  if (has(v_pad)) vp = v_pad->contiguous();
  auto out = new_empty({B, H, W, Cv}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "emo_window_attention", [&] {
    for (int pass = 0; pass < (partition == 2 ? 2 : 1); ++pass)
      window_attention_kernel<scalar_t>(
          q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
          kp.defined() ? kp.data_ptr<scalar_t>() : nullptr,
          vp.defined() ? vp.data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(),
          q.strides().data(), k.strides().data(), v.strides().data(), B, C, Cv, H, W, head_dim,
          window_size, static_cast<scalar_t>(scale), partition == 1 || pass == 1, pass == 1);
  });
  return out.permute({0, 3, 1, 2});
}

}  // namespace EMO_CPU_NS
