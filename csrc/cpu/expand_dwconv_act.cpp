// expand_dwconv_act: the non-attention iRMB body, with the projection (+ residual) and the
// squeeze-excite of the stem block when irmb_inference asks for them (expand_dwconv_act_proj):
//   v = act(x W^T + b)   (or v = x: no expansion)      the expansion GEMM + bias + activation
//   z = silu(dwconv(v) + b_dw) (+ v if skip)           the depthwise pass
//   out = z Wp^T (+ residual)   (or out = z: no proj)  the projection GEMM
// The work is cut into chunks -- several whole images, or a band of output rows of one image
// (with its K - stride halo rows recomputed) -- of about `budget` bytes of v (zero-padded) and
// z, so that v and z are produced and consumed in cache and never go to DRAM. A chunk runs as
// two parallel phases over all threads: (1) expansion GEMM + activation into the padded
// buffer, split over input rows (or over channels when the chunk has few pixels: batch 1 at
// 7x7), (2) depthwise + projection split over output rows (or depthwise over channels, then
// the projection over output channels). Bytes per image: read x (and the residual), write
// out; v and z stay in the chunk buffers. split: 0 auto, 1 always rows, 2 always channels
// (tests). When there are enough chunks for every thread, each thread runs whole chunks alone.
#include "common.h"
#include "gemm.h"

namespace EMO_CPU_NS {
namespace {

// dst[i*C + c] = src[i*C + c] for n pixels and channels [c0, c1): an input row copied into the
// zero-padded depthwise input buffer (identity expansion: the stem block).
template <typename T>
void copy_row(const T* src, T* dst, int64_t n, int64_t C, int64_t c0, int64_t c1) {
  for (int64_t i = 0; i < n; ++i) std::copy(src + i * C + c0, src + i * C + c1, dst + i * C + c0);
}

// ---- depthwise conv + bias + SiLU (+ skip) on a zero-padded NHWC buffer ---------------------
// NB adjacent output pixels of one row, one channel vector [c, c + cnt): per kernel row, the
// (NB - 1) * S + K input vectors they share are loaded once and each used up to K times, the K
// weights once: NB * K FMAs per (NB - 1) * S + 2K loads, so the loop is FMA-bound, not
// load-bound. `rows` are the K input rows of the padded buffer (column 0 is input column
// -pad): every tap is in bounds, no edge cases.
template <typename T, int K, int S, int NB>
inline void dw_block(const T* const* rows, const T* w, int64_t C, int64_t c, int64_t cnt,
                     const Vectorized<T>& bv, const T* vskip, T* out, int64_t ow) {
  using V = Vectorized<T>;
  constexpr int NI = (NB - 1) * S + K;
  V acc[NB];
#pragma GCC unroll 8
  for (int i = 0; i < NB; ++i) acc[i] = bv;
#pragma GCC unroll 7
  for (int kh = 0; kh < K; ++kh) {
    const T* r = rows[kh] + ow * S * C + c;
    V in[NI];
#pragma GCC unroll 32
    for (int j = 0; j < NI; ++j) in[j] = V::loadu(r + j * C, cnt);
#pragma GCC unroll 7
    for (int kw = 0; kw < K; ++kw) {
      const V wk = V::loadu(w + (kh * K + kw) * C + c, cnt);
#pragma GCC unroll 8
      for (int i = 0; i < NB; ++i) acc[i] = at::vec::fmadd(in[i * S + kw], wk, acc[i]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < NB; ++i) {
    V d = vsilu(acc[i]);
    if (vskip) d = d + V::loadu(vskip + (ow + i) * C + c, cnt);
    d.store(out + (ow + i) * C + c, cnt);
  }
}

// One output row, channels [c0, c1), in blocks of 8, 4, 2, 1 pixels. vskip: the unpadded
// input row of the skip (stride 1), or null.
template <typename T, int K, int S>
void dw_row(const T* const* rows, const T* w /* (K*K, C) */, const T* bias, const T* vskip,
            T* out, int64_t Wo, int64_t C, int64_t c0, int64_t c1) {
  using V = Vectorized<T>;
  constexpr int64_t VS = V::size();
  for (int64_t c = c0; c < c1; c += VS) {
    const int64_t cnt = std::min<int64_t>(VS, c1 - c);
    const V bv = bias ? V::loadu(bias + c, cnt) : V(T(0));
    int64_t ow = 0;
    if (Wo % 8 != 0 && Wo % 7 == 0) {  // 7, 14, 28: EMO's stage 3-4 widths at 224
      for (; ow < Wo; ow += 7) dw_block<T, K, S, 7>(rows, w, C, c, cnt, bv, vskip, out, ow);
      continue;
    }
    for (; ow + 8 <= Wo; ow += 8) dw_block<T, K, S, 8>(rows, w, C, c, cnt, bv, vskip, out, ow);
    if (ow + 4 <= Wo) { dw_block<T, K, S, 4>(rows, w, C, c, cnt, bv, vskip, out, ow); ow += 4; }
    if (ow + 2 <= Wo) { dw_block<T, K, S, 2>(rows, w, C, c, cnt, bv, vskip, out, ow); ow += 2; }
    if (ow < Wo) dw_block<T, K, S, 1>(rows, w, C, c, cnt, bv, vskip, out, ow);
  }
}

template <typename T>
void dw_row_dispatch(int64_t K, const T* const* rows, const T* w, const T* bias, const T* vskip,
                     T* out, int64_t Wo, int64_t C, int64_t c0, int64_t c1, int64_t stride) {
#define EMO_DW_CASE(k)                                                                   \
  case k:                                                                                \
    return stride == 1 ? dw_row<T, k, 1>(rows, w, bias, vskip, out, Wo, C, c0, c1)       \
                       : dw_row<T, k, 2>(rows, w, bias, vskip, out, Wo, C, c0, c1);
  switch (K) {
    EMO_DW_CASE(1)
    EMO_DW_CASE(3)
    EMO_DW_CASE(5)
    EMO_DW_CASE(7)
    default: TORCH_CHECK(false, "emo_kernels cpu: depthwise kernel size must be 1, 3, 5 or 7");
  }
#undef EMO_DW_CASE
}
// How expand_dwconv_act_proj cuts B images of Ho output rows into chunks of about `budget`
// bytes: {nb, no} = nb whole images per chunk (no == Ho), or bands of `no` output rows of one
// image (nb == 1; K - s halo rows of `in_row` bytes recomputed per band). in_row: bytes of one
// buffer row of v (+ GEMM scratch), out_row: of one z row; pure arithmetic, reads nothing.
// in_row > 0 (channels > 0, checked by the caller) keeps every division defined.
std::pair<int64_t, int64_t> plan_chunks(int64_t B, int64_t Ho, int64_t K, int64_t s,
                                        int64_t in_row, int64_t out_row, int64_t budget,
                                        bool whole_images) {
  TORCH_INTERNAL_ASSERT(in_row > 0 && out_row >= 0 && Ho > 0);
  const int64_t img_bytes = ((Ho - 1) * s + K) * in_row + Ho * out_row;
  if (img_bytes <= budget || whole_images)
    return {std::max<int64_t>(1, std::min<int64_t>(B, budget / img_bytes)), Ho};
  int64_t no = std::max<int64_t>(1, (budget - (K - s) * in_row) / (s * in_row + out_row));
  no = std::min(no, Ho);
  return {1, (Ho + (Ho + no - 1) / no - 1) / ((Ho + no - 1) / no)};  // equal bands
}

// The fused body of one call, its arguments checked and prepared (check_body, prepare_body)
// and its chunks planned (plan_body_chunks).
struct Body {
  int64_t B, Cin, H, W, C, Cout;  // C: the expanded (depthwise) channels
  DwGeometry g;
  bool expand, proj, skip;
  int64_t act, split;
  const SEArgs* se;
  at::TensorOptions opts;
  at::Tensor x2;                  // (B*H*W, Cin) NHWC rows
  at::Tensor pexp, be, wd, bd;    // packed expansion weight, its bias, (K*K, C) depthwise, bias
  at::Tensor pproj, res2;         // packed projection weight, (B*Ho*Wo, Cout) residual
  at::Tensor out, out2;           // (B, Ho, Wo, Cout) and its (B*Ho*Wo, Cout) view
  int64_t nb, no, vrows, nchunks_o, nchunks;  // chunking: nb images x no output rows
};

Body check_body(const at::Tensor& x_in, const OptT& w_exp, const at::Tensor& w_dw,
                const OptT& w_proj, int64_t act, int64_t stride, bool skip, int64_t split,
                const SEArgs* se) {
  check_float(x_in);
  TORCH_CHECK(x_in.dim() == 4, "x must be (B, C, H, W)");
  TORCH_CHECK(stride == 1 || stride == 2, "stride must be 1 or 2");
  TORCH_CHECK(!skip || stride == 1, "skip needs stride 1");
  Body p{};
  p.B = x_in.size(0), p.Cin = x_in.size(1), p.H = x_in.size(2), p.W = x_in.size(3);
  p.g = dw_geometry(p.H, p.W, w_dw.size(-1), stride);
  p.expand = has(w_exp);
  TORCH_CHECK(p.expand || act == ACT_NONE, "identity expansion needs act='none'");
  p.C = p.expand ? w_exp->size(0) : p.Cin;
  const int64_t K = p.g.K;
  TORCH_CHECK(w_dw.numel() == p.C * K * K, "w_dw must be (Cmid, 1, k, k)");
  TORCH_CHECK(!p.expand || w_exp->numel() == p.C * p.Cin, "w_exp must be (Cmid, Cin, 1, 1)");
  p.proj = has(w_proj);
  p.Cout = p.proj ? w_proj->size(0) : p.C;
  TORCH_CHECK(!p.proj || w_proj->numel() == p.Cout * p.C, "w_proj must be (Cout, Cmid, 1, 1)");
  // zero channels or an empty image would size chunks of 0 bytes (a division by zero)
  TORCH_CHECK(p.Cin > 0 && p.C > 0 && p.Cout > 0, "emo_kernels cpu: channel counts must be "
              "positive (got Cin=", p.Cin, ", Cmid=", p.C, ", Cout=", p.Cout, ")");
  TORCH_CHECK(p.H > 0 && p.W > 0, "emo_kernels cpu: x must have H, W > 0 (got ", p.H, "x", p.W,
              ")");
  TORCH_CHECK(!se || (p.proj && !skip), "squeeze-excite needs the projection and no skip");
  p.skip = skip, p.act = act, p.split = split, p.se = se, p.opts = x_in.options();
  return p;
}

void prepare_body(Body& p, const at::Tensor& x_in, const OptT& w_exp, const OptT& b_exp,
                  const at::Tensor& w_dw, const OptT& b_dw, const OptT& w_proj,
                  const OptT& residual, const Prepared& pre) {
  const int64_t K = p.g.K, Ho = p.g.Ho, Wo = p.g.Wo;
  p.x2 = nhwc_view(x_in.contiguous(at::MemoryFormat::ChannelsLast)).reshape({p.B * p.H * p.W,
                                                                             p.Cin});
  if (p.expand) p.pexp = packed_or_pack(*w_exp, pre.exp);
  if (p.expand && has(b_exp)) p.be = b_exp->contiguous();
  p.wd = pre.dw;  // (K*K, C)
  if (p.wd.defined()) {
    TORCH_CHECK(p.wd.scalar_type() == w_dw.scalar_type() && p.wd.is_contiguous() &&
                    p.wd.dim() == 2 && p.wd.size(0) == K * K && p.wd.size(1) == p.C,
                "a prepared depthwise weight must be w_dw as (k*k, Cmid)");
  } else {
    p.wd = w_dw.reshape({p.C, K * K}).t().contiguous();
  }
  if (has(b_dw)) p.bd = b_dw->contiguous();
  if (p.proj) p.pproj = packed_or_pack(*w_proj, pre.proj);
  if (p.proj && has(residual)) {
    TORCH_CHECK(residual->size(0) == p.B && residual->size(1) == p.Cout &&
                    residual->size(2) == Ho && residual->size(3) == Wo,
                "residual must be (B, Cout, Ho, Wo)");
    p.res2 = nhwc_view(residual->contiguous(at::MemoryFormat::ChannelsLast))
                 .reshape({p.B * Ho * Wo, p.Cout});
  }
  p.out = new_empty({p.B, Ho, Wo, p.Cout}, p.opts);
  p.out2 = p.out.view({p.B * Ho * Wo, p.Cout});
}

void plan_body_chunks(Body& p, int64_t budget, int64_t esz) {
  const DwGeometry& g = p.g;
  // the budget counts a GEMM-output-sized row per input row beside the padded v row (the
  // scratch of the MKL version this kernel replaced): the smaller chunks leave room in L2 for
  // x, the output and the weights. Measured on the whole chain at EMO-1M batch 16: 1.05x the
  // MKL version's speed this way, 0.81-0.88x when only v was counted.
  const int64_t in_row = (g.Wp + (p.expand ? p.W : 0)) * p.C * esz;
  const int64_t out_row = p.proj ? g.Wo * p.C * esz : 0;  // z row
  // SE needs whole images (its mean is over the image)
  std::tie(p.nb, p.no) = plan_chunks(p.B, g.Ho, g.K, g.s, in_row, out_row, budget,
                                     p.se != nullptr);
  p.vrows = (p.no - 1) * g.s + g.K;  // buffer rows per image of a chunk
  p.nchunks_o = (g.Ho + p.no - 1) / p.no;
  p.nchunks = (p.B + p.nb - 1) / p.nb * p.nchunks_o;
}

// One chunk of the body: images [b0, b0 + nbc) or one image's output rows [o0, o0 + noc); its
// padded v buffer holds virtual input rows [v_lo, v_hi) per image, of which the real rows
// [r_lo, r_lo + nr) come from x. Buffers are the calling thread's workspaces.
template <typename T>
struct Chunk {
  const Body& p;
  int64_t b0, o0, nbc, noc, v_lo, v_hi, r_lo, nr;
  T* vb;   // (nbc * vrows, Wp, C) zero-padded v
  T* zb;   // (nbc * noc * Wo, C) z, or the output itself without projection
  int64_t y0;  // first output pixel
};

template <typename T>
Chunk<T> make_chunk(const Body& p, int64_t b0, int64_t o0) {
  const DwGeometry& g = p.g;
  Chunk<T> ch{p, b0, o0, std::min(p.nb, p.B - b0), std::min(p.no, g.Ho - o0)};
  ch.v_lo = o0 * g.s - g.pad;                      // virtual row of buffer row 0
  ch.v_hi = (o0 + ch.noc - 1) * g.s - g.pad + g.K;  // exclusive
  ch.r_lo = std::max<int64_t>(0, ch.v_lo);
  ch.nr = std::min(p.H, ch.v_hi) - ch.r_lo;  // real input rows per image (contiguous in x)
  ch.vb = workspace(0, p.nb * p.vrows * g.Wp * p.C, p.opts).template data_ptr<T>();
  ch.y0 = (b0 * g.Ho + o0) * g.Wo;
  ch.zb = p.proj ? workspace(1, p.nb * p.no * g.Wo * p.C, p.opts).template data_ptr<T>()
                 : p.out2.data_ptr<T>() + ch.y0 * p.C;
  return ch;
}

// The buffer's zero padding: the left/right pad columns of every row, and the rows outside the
// image (top/bottom padding). Never written by phase 1, so zeroed here on every chunk.
template <typename T>
void zero_padding(const Chunk<T>& ch) {
  const Body& p = ch.p;
  const int64_t C = p.C, W = p.W, Wp = p.g.Wp, pad = p.g.pad;
  T* vb = ch.vb;
  if (pad > 0) {
    for (int64_t r = 0; r < ch.nbc * p.vrows; ++r) {
      std::fill(vb + r * Wp * C, vb + (r * Wp + pad) * C, T(0));
      std::fill(vb + (r * Wp + pad + W) * C, vb + (r + 1) * Wp * C, T(0));
    }
  }
  for (int64_t b = 0; b < ch.nbc; ++b)
    for (int64_t j = 0; j < ch.v_hi - ch.v_lo; ++j)
      if (j + ch.v_lo < 0 || j + ch.v_lo >= p.H) {
        T* row = vb + ((b * p.vrows + j) * Wp + pad) * C;
        std::fill(row, row + W * C, T(0));
      }
}

// Phase 1: the chunk's real input rows into the padded buffer, as v = act(x W^T + b) by the
// GEMM (its epilogue writes straight into the buffer) or, with no expansion, copied. Split
// over nth threads by input rows, or by channels when the chunk has few pixels.
template <typename T>
void expand_phase(const Chunk<T>& ch, int64_t nth) {
  using V = Vectorized<T>;
  const Body& p = ch.p;
  const int64_t C = p.C, Cin = p.Cin, W = p.W, H = p.H, Wp = p.g.Wp, pad = p.g.pad;
  const int64_t nr = ch.nr, r_lo = ch.r_lo, v_lo = ch.v_lo, vrows = p.vrows, b0 = ch.b0;
  const T* xp = p.x2.data_ptr<T>();
  const T* bep = p.be.defined() ? p.be.data_ptr<T>() : nullptr;
  T* vb = ch.vb;
  const int64_t G1 = ch.nbc * nr;  // input rows of the chunk
  // first x pixel of chunk input row g (image b0 + g / nr, row r_lo + g % nr). One image's
  // nr rows are contiguous in x; consecutive images only when nr == H (k = 1 with stride 2
  // and even H reads H - 1 rows of each image): x is read in runs of `run` rows.
  auto xpix = [&](int64_t g) { return ((b0 + g / nr) * H + r_lo + g % nr) * W; };
  const int64_t run = nr == H ? G1 : nr;
  const bool cols1 = p.split == 2 || (p.split == 0 && nth > 1 && G1 * W < 96 * nth);
  const int64_t nt1 = cols1 ? nth : std::min(G1, nth);
  // destination of chunk pixel i (image row g = i / W of the chunk, column i % W) in the
  // padded buffer: the GEMM epilogue writes act(acc + bias) there
  std::vector<T*> vrow(p.expand ? G1 * W : 0);
  for (int64_t i = 0; i < static_cast<int64_t>(vrow.size()); ++i) {
    const int64_t g = i / W, b = g / nr, r = r_lo + g % nr;
    vrow[i] = vb + ((b * vrows + (r - v_lo)) * Wp + pad + i % W) * C;
  }
  run_parts(nt1, [&](int64_t t) {
    int64_t g0 = 0, g1 = G1, c0 = 0, c1 = C;
    if (cols1) std::tie(c0, c1) = split_range(0, C, nt1, t, V::size());
    else std::tie(g0, g1) = split_range(0, G1, nt1, t);
    if (g0 >= g1 || c0 >= c1) return;
    if (!p.expand) {
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t b = g / nr, r = r_lo + g % nr;
        T* dst = vb + ((b * vrows + (r - v_lo)) * Wp + pad) * C;
        copy_row<T>(xp + xpix(g) * Cin, dst, W, C, c0, c1);
      }
      return;
    }
    for (int64_t g = g0; g < g1;) {  // rows [g, e) of the run starting at row r0
      const int64_t r0 = g - g % run, e = std::min(g1, r0 + run);
      T* const* dst = vrow.data() + r0 * W;
      auto epi = [&](int64_t i, int64_t n, V a, int64_t cnt) {
        bias_act<T>(a, bep, n, cnt, p.act).store(dst[i] + n, cnt);
      };
      emo_gemm::gemm<T>(xp + xpix(r0) * Cin, Cin, p.pexp.data_ptr<T>(), Cin, (g - r0) * W,
                        (e - r0) * W, c0, c1, epi);
      g = e;
    }
  });
}

// Depthwise (+ skip) of the chunk's output rows [g0, g1) (image g / noc, row o0 + g % noc),
// channels [c0, c1), into z.
template <typename T>
void dw_rows(const Chunk<T>& ch, int64_t g0, int64_t g1, int64_t c0, int64_t c1) {
  const Body& p = ch.p;
  const DwGeometry& geo = p.g;
  const int64_t C = p.C, Wp = geo.Wp;
  const T* wdp = p.wd.data_ptr<T>();
  const T* bdp = p.bd.defined() ? p.bd.data_ptr<T>() : nullptr;
  const T* rows[7];
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t b = g / ch.noc, oh = ch.o0 + g % ch.noc;
    const T* base = ch.vb + (b * p.vrows + (oh - ch.o0) * geo.s) * Wp * C;
    for (int64_t kh = 0; kh < geo.K; ++kh) rows[kh] = base + kh * Wp * C;
    const T* vskip = p.skip ? rows[geo.pad] + geo.pad * C : nullptr;
    dw_row_dispatch<T>(geo.K, rows, wdp, bdp, vskip, ch.zb + g * geo.Wo * C, geo.Wo, C, c0, c1,
                       geo.s);
  }
}

// Out rows [g0, g1) of the chunk (Wo pixels each), columns [n0, n1): z Wp^T (+ residual), the
// residual added in the GEMM epilogue; wp: the packed (maybe SE-scaled) projection weights.
template <typename T>
void proj_rows(const Chunk<T>& ch, int64_t g0, int64_t g1, int64_t n0, int64_t n1,
               const T* wp) {
  using V = Vectorized<T>;
  const Body& p = ch.p;
  const int64_t Cout = p.Cout, Wo = p.g.Wo;
  T* o = p.out2.data_ptr<T>() + ch.y0 * Cout;
  const T* rp = p.res2.defined() ? p.res2.data_ptr<T>() + ch.y0 * Cout : nullptr;
  auto epi = [&](int64_t i, int64_t n, V a, int64_t cnt) {
    if (rp) a = a + V::loadu(rp + i * Cout + n, cnt);
    a.store(o + i * Cout + n, cnt);
  };
  emo_gemm::gemm<T>(ch.zb, p.C, wp, p.C, g0 * Wo, g1 * Wo, n0, n1, epi);
}

// Squeeze-excite of image b of the chunk (its z complete): s = sigmoid(w2 act(w1 mean(z) + b1)
// + b2), returned folded into the packed projection weights (row k, input channel k, scaled by
// s[k]). Channel sums in vectors per row, rows summed in double.
template <typename T>
std::vector<T> se_scaled_proj(const Chunk<T>& ch, int64_t b) {
  using V = Vectorized<T>;
  const Body& p = ch.p;
  const SEArgs& se = *p.se;
  const int64_t C = p.C, Ho = p.g.Ho, Wo = p.g.Wo, R = se.w1.size(0), HW = Ho * Wo;
  const T* zi = ch.zb + b * HW * C;
  std::vector<double> mean(C, 0.0), hid(R);
  std::vector<T> racc(C);  // one row's channel sums, vectorized; rows summed in double
  for (int64_t oh = 0; oh < Ho; ++oh) {
    const T* zr = zi + oh * Wo * C;
    for (int64_t c = 0; c < C; c += V::size()) {
      const int64_t cnt = std::min<int64_t>(V::size(), C - c);
      V a(T(0));
      for (int64_t ow = 0; ow < Wo; ++ow) a = a + V::loadu(zr + ow * C + c, cnt);
      a.store(racc.data() + c, cnt);
    }
    for (int64_t c = 0; c < C; ++c) mean[c] += racc[c];
  }
  const T* w1 = se.w1.data_ptr<T>();
  const T* b1 = se.b1.data_ptr<T>();
  const T* w2 = se.w2.data_ptr<T>();
  const T* b2 = se.b2.data_ptr<T>();
  for (int64_t r = 0; r < R; ++r) {
    double h = b1[r];
    for (int64_t c = 0; c < C; ++c) h += w1[r * C + c] * (mean[c] / HW);
    hid[r] = se.act == ACT_SILU ? ssilu(h) : se.act == ACT_GELU ? sgelu(h) : h;
  }
  const int64_t NP = emo_gemm::panel_width<T>(), P = emo_gemm::num_panels<T>(p.Cout);
  std::vector<T> wsc(P * C * NP);
  const T* pp = p.pproj.data_ptr<T>();
  for (int64_t c = 0; c < C; ++c) {
    double a = b2[c];
    for (int64_t r = 0; r < R; ++r) a += w2[c * R + r] * hid[r];
    const T sc = static_cast<T>(1.0 / (1.0 + std::exp(-a)));
    for (int64_t q = 0; q < P; ++q)
      for (int64_t j = 0; j < NP; ++j)
        wsc[(q * C + c) * NP + j] = pp[(q * C + c) * NP + j] * sc;
  }
  return wsc;
}

// Phase 2 with squeeze-excite: depthwise over rows into z, then per image: the SE scale and
// the projection over rows.
template <typename T>
void dw_se_proj_phase(const Chunk<T>& ch, int64_t nth) {
  const int64_t G2 = ch.nbc * ch.noc, nt2 = std::min(G2, nth), noc = ch.noc;
  run_parts(nt2, [&](int64_t t) {
    auto [g0, g1] = split_range(0, G2, nt2, t);
    if (g0 < g1) dw_rows(ch, g0, g1, 0, ch.p.C);
  });
  for (int64_t b = 0; b < ch.nbc; ++b) {
    const std::vector<T> wsc = se_scaled_proj(ch, b);
    const int64_t nt3 = std::min(noc, nth);
    run_parts(nt3, [&](int64_t t) {
      auto [r0, r1] = split_range(0, noc, nt3, t);
      if (r0 < r1) proj_rows(ch, b * noc + r0, b * noc + r1, 0, ch.p.Cout, wsc.data());
    });
  }
}

// Phase 2: depthwise (+ skip) and projection (+ residual), split over output rows (both in one
// pass per thread), or with few pixels the depthwise over channels, then the projection over
// output channels.
template <typename T>
void dw_proj_phase(const Chunk<T>& ch, int64_t nth) {
  using V = Vectorized<T>;
  const Body& p = ch.p;
  const int64_t G2 = ch.nbc * ch.noc;
  if (p.se) return dw_se_proj_phase(ch, nth);
  const bool cols2 = p.split == 2 || (p.split == 0 && nth > 1 && G2 * p.g.Wo < 96 * nth);
  const T* pw = p.proj ? p.pproj.data_ptr<T>() : nullptr;
  if (!cols2) {
    const int64_t nt2 = std::min(G2, nth);
    run_parts(nt2, [&](int64_t t) {
      auto [g0, g1] = split_range(0, G2, nt2, t);
      if (g0 >= g1) return;
      dw_rows(ch, g0, g1, 0, p.C);
      if (p.proj) proj_rows(ch, g0, g1, 0, p.Cout, pw);
    });
    return;
  }
  run_parts(nth, [&](int64_t t) {
    auto [c0, c1] = split_range(0, p.C, nth, t, V::size());
    if (c0 < c1) dw_rows(ch, 0, G2, c0, c1);
  });
  if (p.proj)
    run_parts(nth, [&](int64_t t) {
      auto [n0, n1] = split_range(0, p.Cout, nth, t, V::size());
      if (n0 < n1) proj_rows(ch, 0, G2, n0, n1, pw);
    });
}

// Every chunk: with enough chunks for every thread, each thread runs whole chunks alone (no
// barriers, and its GEMMs see all the chunk's pixels); else one chunk at a time with every
// thread.
template <typename T>
void run_body(const Body& p) {
  const int64_t nthreads = at::get_num_threads();
  const bool par_chunks = nthreads > 1 && p.nchunks >= nthreads;
  auto process = [&](int64_t c, int64_t nth) {
    const Chunk<T> ch = make_chunk<T>(p, c / p.nchunks_o * p.nb, c % p.nchunks_o * p.no);
    zero_padding(ch);
    expand_phase(ch, nth);
    dw_proj_phase(ch, nth);
  };
  if (par_chunks) {
    run_parts(p.nchunks, [&](int64_t c) { process(c, 1); });
  } else {
    for (int64_t c = 0; c < p.nchunks; ++c) process(c, nthreads);
  }
}

}  // namespace

at::Tensor expand_dwconv_act_proj(const at::Tensor& x, const OptT& w_exp, const OptT& b_exp,
                                  const at::Tensor& w_dw, const OptT& b_dw, const OptT& w_proj,
                                  const OptT& residual, int64_t act, int64_t stride, bool skip,
                                  int64_t budget, int64_t split, const SEArgs* se,
                                  const Prepared& pre) {
  Body p = check_body(x, w_exp, w_dw, w_proj, act, stride, skip, split, se);
  prepare_body(p, x, w_exp, b_exp, w_dw, b_dw, w_proj, residual, pre);
  plan_body_chunks(p, budget, x.element_size());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "emo_expand_dwconv_act", [&] { run_body<scalar_t>(p); });
  return p.out.permute({0, 3, 1, 2});
}

at::Tensor expand_dwconv_act(const at::Tensor& x, const OptT& w_exp, const OptT& b_exp,
                             const at::Tensor& w_dw, const OptT& b_dw, int64_t act,
                             int64_t stride, bool skip, int64_t budget, int64_t split) {
  return expand_dwconv_act_proj(x, w_exp, b_exp, w_dw, b_dw, c10::nullopt, c10::nullopt, act,
                                stride, skip, budget, split);
}

}  // namespace EMO_CPU_NS
