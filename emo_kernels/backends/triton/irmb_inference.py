"""Triton kernels of ``irmb_inference`` (design D1 of gpu-design.md): v written once.

Every tensor is NHWC (a channels_last (B, C, H, W) tensor; pixel m of the flattened B*H*W at
``m * C``). Channel counts are ``constexpr``: the compiler then knows the row pitch of every
pixel (16-byte aligned where C % 8 == 0 in 16-bit dtypes: 128-bit loads and stores) and the
channel loops' trip counts. Accumulation is fp32 (fp64 for fp64); fp16/bf16 dots run on the
tensor cores, fp32 and fp64 dots are exact ("ieee") -- in the interpreter every dot is
upcast to the accumulation dtype (numpy has no bf16).

Per non-attention iRMB, two kernels:

* ``_expand_kernel`` (K_A) -- v = act(prologue(x) @ W_exp^T + b_exp): a GEMM over the
  flattened pixels (M = B*H*W) x Cmid. Prologue: none (an input BatchNorm is folded into
  W_exp/b_exp when the plan is made) or LayerNorm, its per-pixel mean and rstd computed in the
  kernel by two passes over the pixel's channels (the rows stay in L1/L2) and applied, with
  the LN affine, before the dot, the normalised x rounded to x's dtype as eager does.
  Epilogue: bias, activation (SiLU / exact GELU), one store of v. Grid (Cmid tiles, pixel
  tiles), channel tiles fastest: the programs that read the same x rows run together, so x
  comes from DRAM once. Reads x (+ the weights), writes v: e*(Cin + Cmid) bytes per pixel.
* ``_dwproj_kernel`` (K_B) -- out = (silu(dw_kxk(v) + b_dw) [+ v]) @ W_proj^T [+ x]: a program
  owns BLOCK_P output pixels of the flattened B*Ho*Wo (no per-image tail tiles) and all Cout
  output channels, in one power-of-two accumulator or two (160 = 128 + 32, 288 = 256 + 32), so
  the depthwise is computed once per pixel; per Cmid chunk of BLOCK_C it builds the k*k
  shifted tiles of v (neighbour re-reads hit L1/L2; a loop over the kernel rows, not unrolled,
  so that k rather than k*k tiles are in flight), FP32 FMAs, + folded bias, SiLU, + the output
  pixel's v for the inner skip, casts to the dot dtype and accumulates the projection with
  ``tl.dot``; epilogue + residual, one store. Reads v (once from DRAM) and x (residual),
  writes out: e*(Cmid + 2 Cout) bytes per pixel; z never touches memory. One warpgroup per
  program (4 warps): with more, the warpgroups would split the projection's columns and each
  compute the same depthwise tile. For the stem block's squeeze-excite (a global mean over z
  sits between the depthwise and the projection) ``STORE_Z`` writes z instead; K_A then
  projects z scaled per image and channel (``HAS_XSCALE``).

EMOv2's hybrid attention block (``attn_pre=False``): K_A twice (qk, and v with its
activation, each with the LayerNorm prologue), ``window_attention``'s Triton kernels over v
(both partitions, padded values act(b_exp)), then K_B without an expansion.

Per attention iRMB, ``_ln_qk_attn_kernel`` (A0) and then K_A (GELU, no prologue) and K_B:

* A0 -- one program per strided window (49 tokens padded to 64 lanes): LayerNorm statistics
  of the window's pixels (two passes over the channels), then per head: q_h, k_h =
  LN(x) @ W_qk[head]^T + b_qk by ``tl.dot`` over channel chunks, S = q k^T * scale, softmax
  over the 49 keys (padded pixels are real keys: LN output 0, so their k is b_k, and their
  values are 0 -- the official semantics, no mask; only the lanes beyond 49 are masked),
  o_h = P @ LN(x)[head], stored for the in-map pixels. Reads x, writes o (C channels): e*2C
  bytes per pixel. Why two kernels (A0, then K_A) rather than one: the value expansion needs
  the whole o row (all heads) as the A operand of its GEMM, and Triton cannot assemble
  per-head register tiles into one (tokens x C) tile without a round trip through memory;
  o costs e*2C bytes per pixel of L2/DRAM traffic (stage 3 of EMO-5M: 0.6 KB per pixel,
  ~16 MB per batch of 256), about 4 us at DRAM speed per block.

Tile sizes are chosen per shape class by :func:`tiles` (no autotuning: the launches must be
deterministic to be captured in a CUDA graph; ``bench.gpu_model``'s sweeps (before its K_B
trip-count fix) found no tile choice much better, and tests/backends/test_triton_artifacts.py
checks in the compiled code of EMO-5M's launches: no spills, shared memory that fits, HGMMA /
HMMA dots, 128-bit channel accesses). The interpreter gets few, large programs.
"""
import math

import torch
import triton
import triton.language as tl

from . import interpreted
from ...formulas import ACT_CODES, acc_dtype, dw_out_size, dw_padding
from .window_attention import _window_tokens, window_attention_fwd, window_geometry


# ----------------------------------------------------------------------------------- helpers
@triton.jit
def _silu(u):
    """u * sigmoid(u), sigmoid from exp(-|u|) (no overflow for large |u|)."""
    e = tl.exp(-tl.abs(u))
    return u * tl.where(u >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _act(u, cst_ptr, ACT: tl.constexpr):
    """ACT 0 none, 1 SiLU, 2 exact GELU (cst_ptr[0] = 1/sqrt(2) in the accumulation dtype)."""
    if ACT == 1:
        r = _silu(u)
    elif ACT == 2:
        r = 0.5 * u * (1.0 + tl.math.erf(u * tl.load(cst_ptr)))
    else:
        r = u
    return r


@triton.jit
def _dot(a, b, acc, NATIVE_DOT: tl.constexpr, ACC_DT: tl.constexpr):
    """acc + a @ b: tensor cores with fp32 accumulation for fp16/bf16 on a GPU (a, b in the
    I/O dtype), else exact in the accumulation dtype."""
    if NATIVE_DOT:
        r = tl.dot(a, b, acc)
    else:
        r = tl.dot(a.to(ACC_DT), b.to(ACC_DT), acc, input_precision="ieee", out_dtype=ACC_DT)
    return r


@triton.jit
def _ln_stats(rows, ok, cst_ptr, C: tl.constexpr, BLOCK_R: tl.constexpr,
              BLOCK_K: tl.constexpr, ACC_DT: tl.constexpr):
    """(mean, rstd) over the C channels of the pixel rows ``rows`` (pointers to channel 0);
    two passes (mean, then the centred sum of squares); eps = cst_ptr[1]. Rows with ok=False
    give mean 0, rstd 1/sqrt(eps)."""
    s = tl.zeros([BLOCK_R], dtype=ACC_DT)
    for k0 in range(0, C, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        m = ok[:, None] & (k < C)[None, :]
        s += tl.sum(tl.load(rows[:, None] + k[None, :], mask=m, other=0.0).to(ACC_DT), 1)
    mean = s / C
    s2 = tl.zeros([BLOCK_R], dtype=ACC_DT)
    for k0 in range(0, C, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        m = ok[:, None] & (k < C)[None, :]
        d = tl.where(m, tl.load(rows[:, None] + k[None, :], mask=m, other=0.0).to(ACC_DT)
                     - mean[:, None], 0.0)
        s2 += tl.sum(d * d, 1)
    var = s2 / C + tl.load(cst_ptr + 1)
    if ACC_DT == tl.float64:
        rstd = 1.0 / tl.sqrt(var)
    else:  # correctly rounded (tl.sqrt may lower to the approximate instruction)
        rstd = 1.0 / tl.sqrt_rn(var)
    return mean, rstd


@triton.jit
def _ln_apply(xa, k, k_ok, mean, rstd, lnw_ptr, lnb_ptr, HAS_LNB: tl.constexpr,
              ACC_DT: tl.constexpr):
    """((x - mean) * rstd) * w + b for a (rows, BLOCK_K) chunk of channels k, in ACC_DT."""
    g = tl.load(lnw_ptr + k, mask=k_ok, other=0.0).to(ACC_DT)
    y = (xa.to(ACC_DT) - mean[:, None]) * rstd[:, None] * g[None, :]
    if HAS_LNB:
        y += tl.load(lnb_ptr + k, mask=k_ok, other=0.0).to(ACC_DT)[None, :]
    return y


# ----------------------------------------------------------------------------------- K_A
@triton.jit
def _expand_kernel(x_ptr, lnw_ptr, lnb_ptr, w_ptr, b_ptr, cst_ptr, xs_ptr, v_ptr, M, HW,
                   CIN: tl.constexpr, CMID: tl.constexpr, LN: tl.constexpr,
                   HAS_LNB: tl.constexpr, HAS_B: tl.constexpr, HAS_XSCALE: tl.constexpr,
                   ACT: tl.constexpr,
                   NATIVE_DOT: tl.constexpr, ACC_DT: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """v[m, n] = act(sum_k y[m, k] w[k, n] + b[n]), y = LN(x), x, or (HAS_XSCALE) x[m, k] *
    xs[m // HW, k] (the squeeze-excite's per-image channel scale); x (M, CIN), w (CIN, CMID)
    (a 1x1 weight transposed), v (M, CMID), all row-major."""
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = m < M
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < CMID
    rows = x_ptr + m.to(tl.int64) * CIN
    if LN:
        mean, rstd = _ln_stats(rows, m_ok, cst_ptr, CIN, BLOCK_M, BLOCK_K, ACC_DT)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC_DT)
    for k0 in range(0, CIN, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < CIN
        xa = tl.load(rows[:, None] + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        if LN:
            xa = _ln_apply(xa, k, k_ok, mean, rstd, lnw_ptr, lnb_ptr, HAS_LNB,
                           ACC_DT).to(x_ptr.dtype.element_ty)
        if HAS_XSCALE:
            xs = tl.load(xs_ptr + (m // HW).to(tl.int64)[:, None] * CIN + k[None, :],
                         mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            xa = (xa.to(ACC_DT) * xs.to(ACC_DT)).to(x_ptr.dtype.element_ty)
        wa = tl.load(w_ptr + k[:, None] * CMID + n[None, :], mask=k_ok[:, None] & n_ok[None, :],
                     other=0.0)
        acc = _dot(xa, wa, acc, NATIVE_DOT, ACC_DT)
    if HAS_B:
        acc += tl.load(b_ptr + n, mask=n_ok, other=0.0).to(ACC_DT)[None, :]
    v = _act(acc, cst_ptr, ACT)
    tl.store(v_ptr + m.to(tl.int64)[:, None] * CMID + n[None, :], v.to(v_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


# ----------------------------------------------------------------------------------- K_B
@triton.jit
def _store_cols(acc, x_ptr, out_ptr, opix, p_ok, n, NOUT: tl.constexpr, SKIP: tl.constexpr,
                ACC_DT: tl.constexpr):
    """Epilogue of one accumulator: + the residual x (SKIP), one store of columns n."""
    o_ok = p_ok[:, None] & (n < NOUT)[None, :]
    if SKIP:
        acc += tl.load(x_ptr + opix[:, None] * NOUT + n[None, :], mask=o_ok,
                       other=0.0).to(ACC_DT)
    tl.store(out_ptr + opix[:, None] * NOUT + n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=o_ok)


@triton.jit
def _dwproj_kernel(v_ptr, wdw_ptr, bdw_ptr, wp_ptr, x_ptr, out_ptr, M, H, W, HO, WO,
                   CMID: tl.constexpr, COUT: tl.constexpr, K: tl.constexpr,
                   STRIDE: tl.constexpr, PAD: tl.constexpr, SKIP: tl.constexpr,
                   HAS_BDW: tl.constexpr, STORE_Z: tl.constexpr, HAS_N2: tl.constexpr,
                   NATIVE_DOT: tl.constexpr, ACC_DT: tl.constexpr, BLOCK_P: tl.constexpr,
                   BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_N2: tl.constexpr):
    """out[o, n] = sum_c z[o, c] wp[c, n] (+ x[o, n] if SKIP) over the flattened output pixels
    o of (B, HO, WO), z = silu(sum_taps v[i(o, tap), c] wdw[tap, c] + bdw[c]) (+ v[o, c] if
    SKIP); v (B, H, W, CMID), wdw (K*K, CMID), wp (CMID, COUT), out (B, HO, WO, COUT).

    Output channels: columns [pid_n * BLOCK_N, + BLOCK_N) in one accumulator and, with HAS_N2
    (one program covers all of COUT = BLOCK_N + a remainder), [BLOCK_N, + BLOCK_N2) in a
    second: 160 = 128 + 32, 288 = 256 + 32 -- no depthwise recompute per output tile and
    little masked work. With STORE_Z, z itself is stored and the program's channels are the
    mid channels [pid_n * BLOCK_N, + BLOCK_N) (BLOCK_C == BLOCK_N)."""
    pid_n = tl.program_id(0)
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < M
    b = p // (HO * WO)
    r = p % (HO * WO)
    oh = r // WO
    ow = r % WO
    vbase = b.to(tl.int64) * (H * W)
    opix = p.to(tl.int64)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if STORE_Z:
        c_lo = pid_n * BLOCK_N
        c_hi = c_lo + BLOCK_N
    else:
        c_lo = 0
        c_hi = CMID
        acc = tl.zeros([BLOCK_P, BLOCK_N], dtype=ACC_DT)
        if HAS_N2:
            n2 = BLOCK_N + tl.arange(0, BLOCK_N2)
            acc2 = tl.zeros([BLOCK_P, BLOCK_N2], dtype=ACC_DT)
    for c0 in range(c_lo, c_hi, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < CMID
        d = tl.zeros([BLOCK_P, BLOCK_C], dtype=ACC_DT)
        for kh in range(K):  # not unrolled: K taps' tiles in flight, not K*K (registers)
            ih = oh * STRIDE - PAD + kh
            row_ok = p_ok & (ih >= 0) & (ih < H)
            for kw in tl.static_range(K):
                iw = ow * STRIDE - PAD + kw
                ok = row_ok & (iw >= 0) & (iw < W)
                vv = tl.load(v_ptr + (vbase + ih * W + iw)[:, None] * CMID + c[None, :],
                             mask=ok[:, None] & c_ok[None, :], other=0.0).to(ACC_DT)
                wd = tl.load(wdw_ptr + (kh * K + kw) * CMID + c, mask=c_ok,
                             other=0.0).to(ACC_DT)
                d += vv * wd[None, :]
        if HAS_BDW:
            d += tl.load(bdw_ptr + c, mask=c_ok, other=0.0).to(ACC_DT)[None, :]
        z = _silu(d)
        if SKIP:  # stride 1: the output pixel is the input pixel (an L1 hit: the centre tap)
            z += tl.load(v_ptr + opix[:, None] * CMID + c[None, :],
                         mask=p_ok[:, None] & c_ok[None, :], other=0.0).to(ACC_DT)
        if STORE_Z:
            tl.store(out_ptr + opix[:, None] * CMID + c[None, :],
                     z.to(out_ptr.dtype.element_ty), mask=p_ok[:, None] & c_ok[None, :])
        else:
            zc = z.to(wp_ptr.dtype.element_ty)
            wp = tl.load(wp_ptr + c[:, None] * COUT + n[None, :],
                         mask=c_ok[:, None] & (n < COUT)[None, :], other=0.0)
            acc = _dot(zc, wp, acc, NATIVE_DOT, ACC_DT)
            if HAS_N2:
                wp2 = tl.load(wp_ptr + c[:, None] * COUT + n2[None, :],
                              mask=c_ok[:, None] & (n2 < COUT)[None, :], other=0.0)
                acc2 = _dot(zc, wp2, acc2, NATIVE_DOT, ACC_DT)
    if not STORE_Z:
        _store_cols(acc, x_ptr, out_ptr, opix, p_ok, n, COUT, SKIP, ACC_DT)
        if HAS_N2:
            _store_cols(acc2, x_ptr, out_ptr, opix, p_ok, n2, COUT, SKIP, ACC_DT)


# ----------------------------------------------------------------------------------- A0
@triton.jit
def _ln_qk_attn_kernel(x_ptr, lnw_ptr, lnb_ptr, wqk_ptr, bqk_ptr, cst_ptr, o_ptr, H, W, N1, N2,
                       C: tl.constexpr, D: tl.constexpr, NH: tl.constexpr, WS: tl.constexpr,
                       HAS_LN: tl.constexpr, HAS_LNB: tl.constexpr, HAS_BQK: tl.constexpr,
                       NATIVE_DOT: tl.constexpr, ACC_DT: tl.constexpr, BLOCK_L: tl.constexpr,
                       BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr):
    """One strided window: o = softmax(q k^T * scale) @ y per head, y = LN(x) (zero at padded
    pixels), [q, k] = y @ wqk^T + bqk; x, o (B, H, W, C); wqk (2C, C) row-major; scale =
    cst_ptr[2]."""
    b, row, col, valid, in_map = _window_tokens(tl.program_id(0), H, W, N1, N2, WS, BLOCK_L,
                                                False)
    pix = b * H * W + tl.where(in_map, row * W + col, 0).to(tl.int64)
    rows = x_ptr + pix * C
    if HAS_LN:
        mean, rstd = _ln_stats(rows, in_map, cst_ptr, C, BLOCK_L, BLOCK_K, ACC_DT)
    scale = tl.load(cst_ptr + 2)
    j = tl.arange(0, BLOCK_D)
    j_ok = j < D
    for h in range(NH):
        ch = h * D + j
        q = tl.zeros([BLOCK_L, BLOCK_D], dtype=ACC_DT)
        kk = tl.zeros([BLOCK_L, BLOCK_D], dtype=ACC_DT)
        for k0 in range(0, C, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_ok = k < C
            m = in_map[:, None] & k_ok[None, :]
            y = tl.load(rows[:, None] + k[None, :], mask=m, other=0.0)
            if HAS_LN:
                y = tl.where(m, _ln_apply(y, k, k_ok, mean, rstd, lnw_ptr, lnb_ptr, HAS_LNB,
                                          ACC_DT), 0.0).to(x_ptr.dtype.element_ty)
            wm = k_ok[:, None] & j_ok[None, :]
            wq = tl.load(wqk_ptr + ch[None, :] * C + k[:, None], mask=wm, other=0.0)
            wk = tl.load(wqk_ptr + (C + ch)[None, :] * C + k[:, None], mask=wm, other=0.0)
            q = _dot(y, wq, q, NATIVE_DOT, ACC_DT)
            kk = _dot(y, wk, kk, NATIVE_DOT, ACC_DT)
        if HAS_BQK:
            q += tl.load(bqk_ptr + ch, mask=j_ok, other=0.0).to(ACC_DT)[None, :]
            kk += tl.load(bqk_ptr + C + ch, mask=j_ok, other=0.0).to(ACC_DT)[None, :]
        # q, k rounded to the I/O dtype as eager's qk conv output is
        qd = q.to(x_ptr.dtype.element_ty)
        kd = kk.to(x_ptr.dtype.element_ty)
        s = _dot(qd, tl.trans(kd), tl.zeros([BLOCK_L, BLOCK_L], dtype=ACC_DT), NATIVE_DOT,
                 ACC_DT) * scale
        s = tl.where(valid[None, :], s, -float("inf"))
        s = s - tl.max(s, 1)[:, None]
        e = tl.exp(s)
        prob = e / tl.sum(e, 1)[:, None]
        hm = in_map[:, None] & j_ok[None, :]
        yh = tl.load(rows[:, None] + ch[None, :], mask=hm, other=0.0)
        if HAS_LN:
            yh = tl.where(hm, _ln_apply(yh, ch, j_ok, mean, rstd, lnw_ptr, lnb_ptr, HAS_LNB,
                                        ACC_DT), 0.0)
        yh = yh.to(x_ptr.dtype.element_ty)
        o = _dot(prob.to(x_ptr.dtype.element_ty), yh, tl.zeros([BLOCK_L, BLOCK_D], dtype=ACC_DT),
                 NATIVE_DOT, ACC_DT)
        tl.store(o_ptr + pix[:, None] * C + ch[None, :], o.to(o_ptr.dtype.element_ty), mask=hm)


# ----------------------------------------------------------------------------------- launchers
def _p2(n, lo, hi):
    return max(lo, min(hi, triton.next_power_of_2(max(int(n), 1))))


def _split_cols(n, cap):
    """(BLOCK_N, BLOCK_N2) for n output columns: one power-of-two tile, or the largest one
    below n plus a second for the rest (160 = 128 + 32, 288 = 256 + 32: little masked work,
    one program for all columns); (cap, 0) when n > 2 * cap (a grid over column tiles)."""
    n1 = min(cap, max(16, 1 << (max(int(n), 1).bit_length() - 1)))
    rest = n - n1
    if rest <= 0:
        return n1, 0
    if rest > cap:
        return cap, 0
    return n1, _p2(rest, 16, cap)


def tiles(kind, **shape):
    """Tile sizes and warps of one launch, per shape class (GPU), or few large programs
    (interpreter). ``kind``: "expand" (m, cin, cmid), "dwproj" (npix, cmid, nout, k,
    store_z), "attn" (c, d)."""
    interp = interpreted()
    if kind == "expand":
        if interp:
            return dict(BLOCK_M=_p2(shape["m"], 16, 256), BLOCK_N=_p2(shape["cmid"], 16, 1024),
                        BLOCK_K=_p2(shape["cin"], 16, 512), num_warps=4)
        bn = _p2(shape["cmid"], 16, 128)
        return dict(BLOCK_M=128, BLOCK_N=bn, BLOCK_K=_p2(shape["cin"], 16, 64),
                    num_warps=8 if bn >= 128 else 4)
    if kind == "dwproj":
        if shape.get("store_z"):  # the program's mid channels are its output channels
            bc = _p2(shape["cmid"], 16, 512 if interp else 64)
            return dict(BLOCK_P=_p2(shape["npix"], 16, 256) if interp else 64, BLOCK_C=bc,
                        BLOCK_N=bc, BLOCK_N2=0, num_warps=4)
        bn, bn2 = _split_cols(shape["nout"], 512 if interp else 256)
        if interp:
            return dict(BLOCK_P=_p2(shape["npix"], 16, 256), BLOCK_C=_p2(shape["cmid"], 16, 512),
                        BLOCK_N=bn, BLOCK_N2=bn2, num_warps=4)
        # one warpgroup (M = 64 rows per wgmma): more warps would split the projection's N
        # and make every warpgroup compute the same depthwise tile
        # accumulators over 256 columns leave little room: a narrower depthwise chunk (the
        # sm_80 compile of a 64 x 288 accumulator spilled with 32 channels)
        bc = 64 if shape["k"] < 5 else 32 if bn + bn2 <= 256 else 16
        return dict(BLOCK_P=64, BLOCK_C=bc, BLOCK_N=bn, BLOCK_N2=bn2, num_warps=4)
    if kind == "attn":
        return dict(BLOCK_D=_p2(shape["d"], 16, 1 << 30),
                    BLOCK_K=_p2(shape["c"], 16, 512 if interp else 64), num_warps=4)
    raise ValueError(kind)


def _native_dot(dtype):
    return dtype in (torch.float16, torch.bfloat16) and not interpreted()


def _tl_acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


_CONSTS = {}


def consts(device, dtype, eps=1e-6, scale=0.0):
    """[1/sqrt(2), eps, scale] in the accumulation dtype of ``dtype`` on ``device``, cached (a
    CUDA graph replays the same tensor; a float kernel argument would be rounded to fp32)."""
    acc = acc_dtype(dtype)
    key = (str(device), acc, float(eps), float(scale))
    t = _CONSTS.get(key)
    if t is None:
        t = _CONSTS[key] = torch.tensor([math.sqrt(0.5), eps, scale], dtype=acc, device=device)
    return t


def nhwc_empty(like, b, c, h, w, dtype=None):
    """An empty (B, C, H, W) channels_last tensor (NHWC storage)."""
    return torch.empty((b, h, w, c), dtype=dtype or like.dtype,
                       device=like.device).permute(0, 3, 1, 2)


def _is_nhwc(t):
    return t.is_contiguous(memory_format=torch.channels_last)


def expand(x, w_t, b, act, cst, ln_weight=None, ln_bias=None, xscale=None):
    """K_A: v = act(LN?(x) @ w_t + b); x (B, Cin, H, W) channels_last, w_t (Cin, Cmid);
    ``xscale`` (B, Cin): x scaled per image and channel first (the squeeze-excite)."""
    assert _is_nhwc(x) and w_t.is_contiguous()
    B, cin, H, W = x.shape
    cmid = w_t.shape[1]
    M = B * H * W
    v = nhwc_empty(x, B, cmid, H, W)
    if M == 0 or cmid == 0:
        return v
    t = tiles("expand", m=M, cin=cin, cmid=cmid)
    grid = (triton.cdiv(cmid, t["BLOCK_N"]), triton.cdiv(M, t["BLOCK_M"]))
    ln = ln_weight is not None
    _expand_kernel[grid](x, ln_weight if ln else cst, ln_bias if ln_bias is not None else cst,
                         w_t, b if b is not None else cst, cst,
                         xscale if xscale is not None else cst, v, M, H * W, CIN=cin,
                         CMID=cmid, LN=ln, HAS_LNB=ln_bias is not None, HAS_B=b is not None,
                         HAS_XSCALE=xscale is not None, ACT=ACT_CODES[act],
                         NATIVE_DOT=_native_dot(x.dtype), ACC_DT=_tl_acc(x.dtype), **t)
    return v


def dwproj(v, wdw_t, b_dw, wp_t, k, stride, skip, x=None, store_z=False):
    """K_B on v (B, Cmid, H, W) channels_last: the projected block output (B, Cout, Ho, Wo)
    (+ x when ``skip``), or z (B, Cmid, Ho, Wo) with ``store_z``; wdw_t (k*k, Cmid), wp_t
    (Cmid, Cout)."""
    assert _is_nhwc(v) and wdw_t.is_contiguous()
    B, cmid, H, W = v.shape
    HO, WO = dw_out_size(H, k, stride), dw_out_size(W, k, stride)
    nout = cmid if store_z else wp_t.shape[1]
    out = nhwc_empty(v, B, nout, HO, WO)
    if out.numel() == 0:
        return out
    if skip:  # the inner skip (centre tap), and the residual x unless z is stored
        assert stride == 1 and (store_z or (_is_nhwc(x) and x.shape == out.shape))
    M = B * HO * WO
    t = tiles("dwproj", npix=M, cmid=cmid, nout=nout, k=k, store_z=store_z)
    n_tiles = 1 if t["BLOCK_N2"] else triton.cdiv(nout, t["BLOCK_N"])
    _dwproj_kernel[(n_tiles, triton.cdiv(M, t["BLOCK_P"]))](
        v, wdw_t, b_dw if b_dw is not None else wdw_t, wdw_t if wp_t is None else wp_t,
        x if skip and not store_z else v, out, M, H, W, HO, WO, CMID=cmid, COUT=nout, K=k,
        STRIDE=stride, PAD=dw_padding(k, stride), SKIP=bool(skip), HAS_BDW=b_dw is not None,
        STORE_Z=store_z, HAS_N2=t["BLOCK_N2"] > 0, NATIVE_DOT=_native_dot(v.dtype),
        ACC_DT=_tl_acc(v.dtype), **t)
    return out


def ln_qk_attention(x, ln_weight, ln_bias, w_qk, b_qk, head_dim, window_size, cst):
    """A0: o = window attention of LN(x) (values LN(x)) with [q, k] = LN(x) @ w_qk^T + b_qk;
    x (B, C, H, W) channels_last, w_qk (2C, C) contiguous; cst from :func:`consts` (scale)."""
    assert _is_nhwc(x) and w_qk.is_contiguous()
    B, C, H, W = x.shape
    o = nhwc_empty(x, B, C, H, W)
    if o.numel() == 0:
        return o
    n1, n2, block_l = window_geometry(H, W, window_size)
    t = tiles("attn", c=C, d=head_dim)
    ln = ln_weight is not None
    _ln_qk_attn_kernel[(B * n1 * n2,)](
        x, ln_weight if ln else cst, ln_bias if ln_bias is not None else cst, w_qk,
        b_qk if b_qk is not None else cst, cst, o, H, W, n1, n2, C=C, D=head_dim,
        NH=C // head_dim, WS=window_size, HAS_LN=ln, HAS_LNB=ln_bias is not None,
        HAS_BQK=b_qk is not None, NATIVE_DOT=_native_dot(x.dtype), ACC_DT=_tl_acc(x.dtype),
        BLOCK_L=block_l, **t)
    return o


# ----------------------------------------------------------------------------------- blocks
_ACTS = {"silu": torch.nn.functional.silu, "gelu": torch.nn.functional.gelu,
         "none": lambda t: t}


def prepare_block(args, kw, dtype, device):
    """The kernels' form of one block's ``irmb_inference`` arguments, made once per plan:
    1x1 weights transposed (K-major rows), the depthwise weight as (k*k, Cmid), constants
    (eps, scale) on the device -- no folding or layout kernel runs per forward."""
    w_exp, b_exp, w_dw, b_dw, w_proj = args
    c = lambda t: None if t is None else t.detach().to(dtype).contiguous()  # noqa: E731
    k = w_dw.shape[-1]
    cmid = w_dw.shape[0]
    attn = kw.get("w_qk") is not None
    ln_w, ln_b = kw.get("ln_weight"), kw.get("ln_bias")
    if w_exp is None and ln_w is not None and not attn:
        w_exp = torch.eye(cmid, dtype=dtype, device=device)  # a LayerNorm needs a GEMM to ride on
    hd = kw.get("head_dim")
    scale = kw.get("scale")
    if attn and scale is None:
        scale = hd ** -0.5
    v_first = attn and not kw.get("attn_pre", True)  # EMOv2's hybrid attention block
    se = None
    if kw.get("se_reduce_weight") is not None:
        se = tuple(c(kw[n].flatten(1) if n.endswith("weight") else kw[n])
                   for n in ("se_reduce_weight", "se_reduce_bias", "se_expand_weight",
                             "se_expand_bias")) + (kw.get("se_act", "silu"),)
    emo2 = {}
    if v_first:  # qk and v by K_A (LayerNorm prologue), v_pad = act(b_exp), k_pad = b_qk[C:]
        C = kw["w_qk"].shape[1]
        b_qk = kw.get("b_qk")
        emo2 = dict(w_qk_t=c(kw["w_qk"].reshape(2 * C, C).t()),
                    k_pad=None if b_qk is None else c(b_qk[C:]),
                    v_pad=None if b_exp is None else c(_ACTS[kw.get("act", "silu")](b_exp)),
                    partition=kw.get("partition", "remote"), scale=float(scale))
    return dict(
        v_first=v_first, **emo2,
        attn=attn, k=k, stride=int(kw.get("stride", 1)), skip=bool(kw.get("skip", False)),
        act=kw.get("act", "silu"), head_dim=hd, window_size=kw.get("window_size", 7),
        ln_w=c(ln_w), ln_b=c(ln_b), w_qk=c(None if not attn else kw["w_qk"].flatten(1)),
        b_qk=c(kw.get("b_qk")),
        w_exp_t=None if w_exp is None else c(w_exp.reshape(w_exp.shape[0], -1).t()),
        b_exp=c(b_exp), w_dw_t=c(w_dw.reshape(cmid, k * k).t()), b_dw=c(b_dw),
        w_proj_t=c(w_proj.reshape(w_proj.shape[0], -1).t()), se=se,
        cst=consts(device, dtype, kw.get("eps", 1e-6), scale or 0.0))


def run_block(x, pb):
    """One prepared block on x (channels_last): A0 (attention) or K_A's LayerNorm prologue,
    K_A (if there is an expansion), K_B; with a squeeze-excite K_B writes z, torch computes
    the per-image channel scale from its global mean, and K_A projects the scaled z."""
    if pb["v_first"]:
        return _run_v_first(x, pb)
    y, ln = x, pb["ln_w"] is not None
    if pb["attn"]:
        y = ln_qk_attention(x, pb["ln_w"], pb["ln_b"], pb["w_qk"], pb["b_qk"], pb["head_dim"],
                            pb["window_size"], pb["cst"])
        ln = False
    if pb["w_exp_t"] is not None:
        y = expand(y, pb["w_exp_t"], pb["b_exp"], pb["act"], pb["cst"],
                   pb["ln_w"] if ln else None, pb["ln_b"] if ln else None)
    common = (y, pb["w_dw_t"], pb["b_dw"], pb["w_proj_t"], pb["k"], pb["stride"], pb["skip"])
    if pb["se"] is None:
        return dwproj(*common, x=x)
    w1, b1, w2, b2, se_act = pb["se"]
    z = dwproj(*common, x=x, store_z=True)
    acc = acc_dtype(x.dtype)
    m = z.mean((2, 3), dtype=acc)
    s = _ACTS[se_act](torch.nn.functional.linear(m, w1.to(acc), b1.to(acc)))
    s = torch.sigmoid(torch.nn.functional.linear(s, w2.to(acc), b2.to(acc)))
    return expand(z, pb["w_proj_t"], None, "none", pb["cst"], xscale=s.contiguous())


def _run_v_first(x, pb):
    """EMOv2's hybrid attention block: qk = LN(x) @ W_qk^T + b_qk and v = act(LN(x) @
    W_exp^T + b_exp) by K_A (two launches: the activation is v's only), the window attention
    over v in its partition form (``window_attention``'s Triton kernels: padded keys b_qk[C:],
    padded values act(b_exp)), then K_B (depthwise + SiLU + skip + projection + residual) with
    no expansion. Reads x twice, writes qk (2C), v (Cmid) and the attention output (Cmid) per
    pixel once, reads them back once: the attention needs whole windows of v."""
    C = x.shape[1]
    ln_w, ln_b = pb["ln_w"], pb["ln_b"]
    qk = expand(x, pb["w_qk_t"], pb["b_qk"], "none", pb["cst"], ln_w, ln_b)
    v = expand(x, pb["w_exp_t"], pb["b_exp"], pb["act"], pb["cst"], ln_w, ln_b)
    y, _ = window_attention_fwd(qk[:, :C], qk[:, C:], v, pb["k_pad"], pb["head_dim"],
                                pb["window_size"], pb["scale"], pb["v_pad"], pb["partition"])
    return dwproj(y, pb["w_dw_t"], pb["b_dw"], pb["w_proj_t"], pb["k"], pb["stride"],
                  pb["skip"], x=x)


def nhwc(x):
    """x as a channels_last tensor (no copy when it is one)."""
    return x if _is_nhwc(x) else x.contiguous(memory_format=torch.channels_last)


# ----- the torch.library custom op: opaque to torch.compile (fullgraph), a fake for shapes ---
from typing import Optional  # noqa: E402

Tensor = torch.Tensor


@torch.library.custom_op("emo_kernels::irmb_inference_triton", mutates_args=())
def irmb_inference_triton_op(
        x: Tensor, w_exp: Optional[Tensor], b_exp: Optional[Tensor], w_dw: Tensor,
        b_dw: Optional[Tensor], w_proj: Tensor, ln_weight: Optional[Tensor],
        ln_bias: Optional[Tensor], w_qk: Optional[Tensor], b_qk: Optional[Tensor],
        se_reduce_weight: Optional[Tensor], se_reduce_bias: Optional[Tensor],
        se_expand_weight: Optional[Tensor], se_expand_bias: Optional[Tensor], act: str,
        stride: int, skip: bool, eps: float, head_dim: int, window_size: int,
        scale: Optional[float], se_act: str, partition: str, attn_pre: bool) -> Tensor:
    kw = dict(act=act, stride=stride, skip=skip, eps=eps, ln_weight=ln_weight, ln_bias=ln_bias,
              w_qk=w_qk, b_qk=b_qk, head_dim=head_dim or None, window_size=window_size,
              scale=scale, se_reduce_weight=se_reduce_weight, se_reduce_bias=se_reduce_bias,
              se_expand_weight=se_expand_weight, se_expand_bias=se_expand_bias, se_act=se_act,
              partition=partition, attn_pre=attn_pre)
    with torch.no_grad():
        pb = prepare_block((w_exp, b_exp, w_dw, b_dw, w_proj), kw, x.dtype, x.device)
        out = run_block(nhwc(x), pb)
    return out if _is_nhwc(x) else out.contiguous()


@irmb_inference_triton_op.register_fake
def _(x, w_exp, b_exp, w_dw, b_dw, w_proj, ln_weight, ln_bias, w_qk, b_qk, se_reduce_weight,
      se_reduce_bias, se_expand_weight, se_expand_bias, act, stride, skip, eps, head_dim,
      window_size, scale, se_act, partition, attn_pre):
    k = w_dw.shape[-1]
    B, _, H, W = x.shape
    out = nhwc_empty(x, B, w_proj.shape[0], dw_out_size(H, k, stride), dw_out_size(W, k, stride))
    return out if _is_nhwc(x) else out.contiguous()


def irmb_inference_triton(x, w_exp, b_exp, w_dw, b_dw, w_proj, *, act="silu", stride=1,
                          skip=False, ln_weight=None, ln_bias=None, eps=1e-6, w_qk=None,
                          b_qk=None, head_dim=None, window_size=7, scale=None,
                          se_reduce_weight=None, se_reduce_bias=None, se_expand_weight=None,
                          se_expand_bias=None, se_act="silu", partition="remote",
                          attn_pre=True):
    """The ``triton`` backend of ``emo_kernels.irmb_inference`` (arguments validated there):
    one opaque custom op, ``emo_kernels::irmb_inference_triton`` (no autograd: inference).
    The output has x's memory format (channels_last is the kernels' own: no copy)."""
    return irmb_inference_triton_op(
        x, w_exp, b_exp, w_dw, b_dw, w_proj, ln_weight, ln_bias, w_qk, b_qk, se_reduce_weight,
        se_reduce_bias, se_expand_weight, se_expand_bias, act, int(stride), bool(skip),
        float(eps), int(head_dim or 0), int(window_size), None if scale is None else
        float(scale), se_act, partition, bool(attn_pre))


def irmb_chain_triton(x, chain, outputs):
    """A whole ``IRMBChain``: the blocks prepared once per chain (``chain.prepared``), then
    run one after another; every intermediate stays channels_last."""
    blocks = chain.prepared("triton", lambda ch: [
        prepare_block(a, k, ch.dtype, ch.device) for a, k in ch.blocks])
    outs, want = [], set(outputs)
    with torch.no_grad():
        x = nhwc(x)
        for i, pb in enumerate(blocks):
            x = run_block(x, pb)
            if i in want:
                outs.append(x)
    return outs
