"""Triton kernels for ``expand_dwconv_act`` (fused 1x1 expansion + depthwise conv + BN + SiLU).

See ``emo_kernels/ops/expand_dwconv_act.py`` for the semantics. This module holds the
kernels, their launch helpers and, at the end, the torch.library custom ops
(``emo_kernels::expand_dwconv_act_triton`` and its ``_backward``) with their fake
functions and autograd registration. ``expand_dwconv_act_triton`` is the function the
``triton`` backend of ``emo_kernels.expand_dwconv_act`` calls.

Forward: v written once, then the depthwise pass (no per-tap recompute)
-----------------------------------------------------------------------
Inference (nothing saved, no batch statistics) is ``irmb_inference``'s K_A + K_B(STORE_Z).
Training (something saved for backward, or BatchNorm with batch statistics):
1. K_A (``irmb_inference._expand_kernel``): v = act(x @ w_exp^T + b_exp), a tensor-core GEMM
   over the flattened B*H*W pixels, v written once (channels_last, x's dtype). The stem
   (identity expansion) reads x as v.
2. B1 ``_fwd_kernel``: per (output tile of BLOCK_P pixels, BLOCK_C channels): p = dwconv(v) +
   b_dw (zero padding on v), stored in x's dtype; with BatchNorm, per-tile (mean, M2) of p in
   the ACC dtype; without, z = silu(p) (+ v) directly.
3. With BatchNorm: the host merges the tiles' moments (Chan), and across the processes of a
   SyncBatchNorm (all-reduce), then B2 ``_bn_apply_kernel``: z = silu(BN(p)) (+ v).
Reads and writes per image (element size e, fp16/bf16 2, fp32 4): K_A e*(Cin*H*W + Cmid*H*W);
B1 e*(Cmid*H*W + Cmid*Ho*Wo) (+ e*Cmid*Ho*Wo for z without BatchNorm); B2 e*(2 Cmid*Ho*Wo +
Cmid*H*W with the skip). v is transient: freed when the forward returns.
(Until issue #15 the training forward recomputed the expansion under every depthwise tap:
k^2/s^2 x the expansion FLOPs, 22x on the k=5 stride-1 attention value paths.)

Backward (no v saved; v/u recomputed once per input pixel)
-----------------------------------------------------------
Saved: x, the weights, p (pre-norm dwconv output, x's dtype: e*Cmid*Ho*Wo bytes per image, as
eager autocast keeps the BatchNorm input) and, with BatchNorm training, the per-channel batch
mean and rstd (ACC dtype). Kernels:
1. ``_bwd_stats``: per output tile partial sums of gq = gz * silu'(q), gq * xhat and xhat
   (q = BN(p) or p) -> g_bn_bias, g_bn_weight, g_b_dw and the BN backward coefficients.
2. ``_bwd_gp``: per output tile, gp = dL/dp (SiLU and BatchNorm backward) once per output
   pixel, written in x's dtype (e*Cmid*Ho*Wo bytes out and back in: cheaper than evaluating
   it, an exp and a division, under each of the k*k taps that read it).
3. ``_bwd_dv``: per input pixel tile: recompute u and v (one expansion per pixel, no k^2),
   gather gp at the k*k outputs that read the pixel (transposed conv; at stride 2 a tile holds
   one parity class of pixels and visits only the ~k^2/4 taps that reach an output from it),
   gv = sum gp * w_dw (+ gz for the skip), gu = gv * act'(u); partial
   sums of gp * v per tap (-> g_w_dw) and of gu (-> g_b_exp); writes gu (x's dtype, as
   eager autocast's convolution backward gets it; transient, freed after the two GEMMs) or,
   for the identity stem, gx directly.
4. ``_gemm_gx``: gx[b,k,i] = sum_c gu[b,c,i] w_exp[c,k];  5. ``_gemm_gw``: g_w_exp[c,k] =
   sum_{b,i} gu[b,c,i] x[b,k,i], split-K: each program sums a slice of the B*H*W pixels (grid
   >= ``GW_MIN_PROGRAMS`` where the pixels allow), the host adds the (splits, Cmid, Cin) fp32
   partials. Both on tensor cores for fp16/bf16 (``tl.dot``, fp32 accumulation), exact
   ACC-dtype dots for fp32/fp64.
Saved for backward per image, EMO-5M 224x224 fp16, summed over the 19 blocks using this op:
eager autograd keeps x, u (act input), v (dwconv input), p (BN input) and the BN output (SiLU
input): e*(Cin*H*W + 2*Cmid*H*W + 2*Cmid*Ho*Wo) = 35.4 MB; this op keeps x and p, both in x's
dtype: e*(Cin*H*W + Cmid*Ho*Wo) (x is kept by the previous layer anyway). The whole model's
bytes, both paths: ``python -m bench.saved_memory``.
Backward FLOPs: 1 expansion (recompute) + 2 GEMMs of the expansion size + k^2 taps.

SyncBatchNorm (``bn_process_group``): the forward all-reduces the per-channel (count, mean, M2)
between ``_fwd`` and ``_bn_apply``; the backward all-reduces S1, S2 and the count between
``_bwd_stats`` and ``_bwd_dv`` (the input gradient's coefficients), while the BatchNorm's and
the depthwise bias's gradients stay this process's sums (DDP averages parameter gradients).
"""
import math

import torch
import triton
import triton.language as tl

from . import interpreted
from .irmb_inference import _act as _act_fwd  # one activation for every Triton kernel

from ...distributed import (all_reduce_sum, bn_count_error, group_key,  # noqa: E402
                            merge_moments, resolve_group)
from ...formulas import ACT_CODES as ACTS  # noqa: E402
from ...formulas import (acc_dtype, bn_scale_shift, dw_out_size, dw_padding,  # noqa: E402
                         fold_affine, update_running_stats)


# ----------------------------------------------------------------------------------- helpers
@triton.jit
def _tile(NT, H, W, CMID, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's (pixel tile, channel tile) of an (H, W) map: grid (B * NT, channel
    tiles). Returns pid, image index (int64), pixel indices, their mask, rows, cols, channels
    and their mask."""
    pid = tl.program_id(0)
    pc = tl.program_id(1)
    b = (pid // NT).to(tl.int64)
    t = pid % NT
    p = t * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < H * W
    c = pc * BLOCK_C + tl.arange(0, BLOCK_C)
    return pid, b, p, p_ok, p // W, p % W, c, c < CMID


@triton.jit
def _tile_parity(NT, H, W, CMID, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """``_tile`` for the stride-2 backward: a tile of the input pixels of one parity class
    (ih % 2, iw % 2) = (ph, pw), the NT tiles of an image being 4 classes x NT/4 tiles. Also
    returns (ph, pw): only the taps kh = ph + PAD (mod 2), kw = pw + PAD (mod 2) reach an
    output from such a pixel."""
    pid = tl.program_id(0)
    pc = tl.program_id(1)
    b = (pid // NT).to(tl.int64)
    t = pid % NT
    nq = NT // 4
    cls = t // nq
    ph = cls // 2
    pw = cls % 2
    wq = (W + 1) // 2
    q = (t % nq) * BLOCK_P + tl.arange(0, BLOCK_P)
    ih = 2 * (q // wq) + ph
    iw = 2 * (q % wq) + pw
    p_ok = (q < ((H + 1) // 2) * wq) & (ih < H) & (iw < W)
    c = pc * BLOCK_C + tl.arange(0, BLOCK_C)
    return pid, b, ih * W + iw, p_ok, ih, iw, c, c < CMID, ph, pw


@triton.jit
def _act_grad(u, c_ptr, ACT: tl.constexpr):
    """d act(u) / du.  c_ptr holds [1/sqrt(2), 1/sqrt(2*pi)] in the accumulation dtype."""
    if ACT == 1:
        s = 1.0 / (1.0 + tl.exp(-u))
        r = s * (1.0 + u * (1.0 - s))
    elif ACT == 2:
        r = 0.5 * (1.0 + tl.math.erf(u * tl.load(c_ptr))) + u * tl.exp(-0.5 * u * u) * tl.load(c_ptr + 1)
    else:
        r = u * 0.0 + 1.0
    return r


@triton.jit
def _silu_grad(q):
    s = 1.0 / (1.0 + tl.exp(-q))
    return s * (1.0 + q * (1.0 - s))


@triton.jit
def _expand_at(x_ptr, xoff, ok, sxc, wexp_ptr, bexp_ptr, c, c_ok, CIN,
               HAS_EXP: tl.constexpr, HAS_BEXP: tl.constexpr, NATIVE_DOT: tl.constexpr,
               BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
               ACC_DT: tl.constexpr):
    """u (pre-activation) at pixels ``xoff`` (BLOCK_P offsets into x, channel 0) for channels c.

    With HAS_EXP=False (identity expansion) u is x itself at channels c. Rows with ok=False
    read x as 0 (callers mask v themselves: act(b_exp) != 0).
    """
    if HAS_EXP:
        u = tl.zeros([BLOCK_P, BLOCK_C], dtype=ACC_DT)
        for k0 in range(0, CIN, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_ok = k < CIN
            xa = tl.load(x_ptr + xoff[:, None] + k[None, :].to(tl.int64) * sxc,
                         mask=ok[:, None] & k_ok[None, :], other=0.0)
            wa = tl.load(wexp_ptr + c[None, :] * CIN + k[:, None],
                         mask=k_ok[:, None] & c_ok[None, :], other=0.0)
            if NATIVE_DOT:  # fp16/bf16 on GPU: tensor cores, fp32 accumulation (exact products)
                u = tl.dot(xa, wa.to(xa.dtype), u)
            else:
                u = tl.dot(xa.to(ACC_DT), wa.to(ACC_DT), u, input_precision="ieee",
                           out_dtype=ACC_DT)
        if HAS_BEXP:
            u += tl.load(bexp_ptr + c, mask=c_ok, other=0.0).to(ACC_DT)[None, :]
    else:
        u = tl.load(x_ptr + xoff[:, None] + c[None, :].to(tl.int64) * sxc,
                    mask=ok[:, None] & c_ok[None, :], other=0.0).to(ACC_DT)
    return u


# ----------------------------------------------------------------------------------- forward
@triton.jit
def _fwd_kernel(v_ptr, wdw_ptr, bdw_ptr, z_ptr, p_ptr, pmean_ptr, pm2_ptr,
                CMID, H, W, HO, WO, NT,
                svb, svc, svh, svw, szb, szc, szh, szw,
                K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr,
                HAS_BDW: tl.constexpr, SKIP: tl.constexpr, STORE_Z: tl.constexpr,
                STORE_P: tl.constexpr, STATS: tl.constexpr,
                BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ACC_DT: tl.constexpr):
    """B1 (the training forward's depthwise pass) on v, the expansion output K_A wrote once:
    p = dwconv(v) + b_dw (zero padding) for an output tile; stores p and/or, with per-tile
    BatchNorm statistics, or z = silu(p) (+ v) when no BatchNorm follows."""
    pid, b, o, o_ok, oh, ow, c, c_ok = _tile(NT, HO, WO, CMID, BLOCK_P, BLOCK_C)
    cv = c[None, :].to(tl.int64) * svc
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=ACC_DT)
    for tap in range(K * K):
        kh = tap // K
        kw = tap % K
        ih = oh * STRIDE - PAD + kh
        iw = ow * STRIDE - PAD + kw
        ok = o_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        voff = b * svb + ih.to(tl.int64) * svh + iw.to(tl.int64) * svw
        v = tl.load(v_ptr + voff[:, None] + cv, mask=ok[:, None] & c_ok[None, :],
                    other=0.0).to(ACC_DT)
        wt = tl.load(wdw_ptr + c * (K * K) + tap, mask=c_ok, other=0.0).to(ACC_DT)
        acc += v * wt[None, :]
    if HAS_BDW:
        acc += tl.load(bdw_ptr + c, mask=c_ok, other=0.0).to(ACC_DT)[None, :]
    m2d = o_ok[:, None] & c_ok[None, :]
    if STORE_P:  # p: contiguous (B, CMID, HO*WO), x's dtype (fp16/bf16) or the ACC dtype
        tl.store(p_ptr + (b * CMID + c[None, :]) * (HO * WO) + o[:, None],
                 acc.to(p_ptr.dtype.element_ty), mask=m2d)
    if STATS:  # per-tile mean and sum of squared deviations (Chan merge on the host)
        cnt = tl.sum(o_ok.to(ACC_DT), axis=0)
        tmean = tl.sum(tl.where(m2d, acc, 0.0), axis=0) / cnt
        dev = tl.where(m2d, acc - tmean[None, :], 0.0)
        tl.store(pmean_ptr + pid * CMID + c, tmean, mask=c_ok)
        tl.store(pm2_ptr + pid * CMID + c, tl.sum(dev * dev, axis=0), mask=c_ok)
    if STORE_Z:
        d = acc / (1.0 + tl.exp(-acc))
        if SKIP:  # stride 1: v at the output pixel
            d += tl.load(v_ptr + (b * svb + oh.to(tl.int64) * svh + ow.to(tl.int64) * svw)[:, None]
                         + cv, mask=m2d, other=0.0).to(ACC_DT)
        zoff = b * szb + c[None, :].to(tl.int64) * szc + oh[:, None].to(tl.int64) * szh \
            + ow[:, None].to(tl.int64) * szw
        tl.store(z_ptr + zoff, d.to(z_ptr.dtype.element_ty), mask=m2d)


@triton.jit
def _bn_apply_kernel(v_ptr, p_ptr, mean_ptr, rstd_ptr, gamma_ptr, beta_ptr, z_ptr,
                     CMID, HO, WO, NT,
                     svb, svc, svh, svw, szb, szc, szh, szw,
                     SKIP: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
                     ACC_DT: tl.constexpr):
    """B2: z = silu(BN(p)) (+ v at the output pixel: stride 1 when SKIP)."""
    pid, b, o, o_ok, oh, ow, c, c_ok = _tile(NT, HO, WO, CMID, BLOCK_P, BLOCK_C)
    m2d = o_ok[:, None] & c_ok[None, :]
    p = tl.load(p_ptr + (b * CMID + c[None, :]) * (HO * WO) + o[:, None], mask=m2d,
                other=0.0).to(ACC_DT)
    mean = tl.load(mean_ptr + c, mask=c_ok, other=0.0)
    rstd = tl.load(rstd_ptr + c, mask=c_ok, other=0.0)
    gamma = tl.load(gamma_ptr + c, mask=c_ok, other=0.0)
    beta = tl.load(beta_ptr + c, mask=c_ok, other=0.0)
    q = (p - mean[None, :]) * rstd[None, :] * gamma[None, :] + beta[None, :]
    d = q / (1.0 + tl.exp(-q))
    if SKIP:
        d += tl.load(v_ptr + (b * svb + oh.to(tl.int64) * svh + ow.to(tl.int64) * svw)[:, None]
                     + c[None, :].to(tl.int64) * svc, mask=m2d, other=0.0).to(ACC_DT)
    zoff = b * szb + c[None, :].to(tl.int64) * szc + oh[:, None].to(tl.int64) * szh \
        + ow[:, None].to(tl.int64) * szw
    tl.store(z_ptr + zoff, d.to(z_ptr.dtype.element_ty), mask=m2d)


# ---------------------------------------------------------------------------------- backward
@triton.jit
def _bwd_stats_kernel(gz_ptr, p_ptr, mean_ptr, rstd_ptr, gamma_ptr, beta_ptr,
                      s1_ptr, s2_ptr, s3_ptr,
                      CMID, HO, WO, NT, sgb, sgc, sgh, sgw,
                      BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ACC_DT: tl.constexpr):
    """Per-tile partial sums of gq, gq*xhat and xhat (gq = gz * silu'(q), q = BN(p))."""
    pid, b, o, o_ok, oh, ow, c, c_ok = _tile(NT, HO, WO, CMID, BLOCK_P, BLOCK_C)
    m2d = o_ok[:, None] & c_ok[None, :]
    p = tl.load(p_ptr + (b * CMID + c[None, :]) * (HO * WO) + o[:, None], mask=m2d,
                other=0.0).to(ACC_DT)
    g = tl.load(gz_ptr + b * sgb + c[None, :].to(tl.int64) * sgc + oh[:, None].to(tl.int64) * sgh
                + ow[:, None].to(tl.int64) * sgw, mask=m2d, other=0.0).to(ACC_DT)
    mean = tl.load(mean_ptr + c, mask=c_ok, other=0.0)
    rstd = tl.load(rstd_ptr + c, mask=c_ok, other=0.0)
    gamma = tl.load(gamma_ptr + c, mask=c_ok, other=0.0)
    beta = tl.load(beta_ptr + c, mask=c_ok, other=0.0)
    xhat = (p - mean[None, :]) * rstd[None, :]
    q = xhat * gamma[None, :] + beta[None, :]
    gq = tl.where(m2d, g * _silu_grad(q), 0.0)
    xhat = tl.where(m2d, xhat, 0.0)
    tl.store(s1_ptr + pid * CMID + c, tl.sum(gq, axis=0), mask=c_ok)
    tl.store(s2_ptr + pid * CMID + c, tl.sum(gq * xhat, axis=0), mask=c_ok)
    tl.store(s3_ptr + pid * CMID + c, tl.sum(xhat, axis=0), mask=c_ok)


@triton.jit
def _bwd_gp_kernel(gz_ptr, p_ptr, mean_ptr, rstd_ptr, gamma_ptr, beta_ptr, ca_ptr, cb_ptr,
                   cc_ptr, gp_ptr, CMID, HO, WO, NT, sgb, sgc, sgh, sgw,
                   BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ACC_DT: tl.constexpr):
    """Output tile: gp = dL/dp = ca * gz * silu'(q) + cb + cc * xhat (the BatchNorm backward
    with the batch sums folded into ca/cb/cc; q = p, ca = 1, cb = cc = 0 without BatchNorm),
    once per output pixel, written (x's dtype, (B, CMID, HO*WO)) for the depthwise backward."""
    pid, b, o, o_ok, oh, ow, c, c_ok = _tile(NT, HO, WO, CMID, BLOCK_P, BLOCK_C)
    m2d = o_ok[:, None] & c_ok[None, :]
    off = (b * CMID + c[None, :]) * (HO * WO) + o[:, None]
    p = tl.load(p_ptr + off, mask=m2d, other=0.0).to(ACC_DT)
    g = tl.load(gz_ptr + b * sgb + c[None, :].to(tl.int64) * sgc + oh[:, None].to(tl.int64) * sgh
                + ow[:, None].to(tl.int64) * sgw, mask=m2d, other=0.0).to(ACC_DT)
    mean = tl.load(mean_ptr + c, mask=c_ok, other=0.0)[None, :]
    rstd = tl.load(rstd_ptr + c, mask=c_ok, other=0.0)[None, :]
    gamma = tl.load(gamma_ptr + c, mask=c_ok, other=0.0)[None, :]
    beta = tl.load(beta_ptr + c, mask=c_ok, other=0.0)[None, :]
    ca = tl.load(ca_ptr + c, mask=c_ok, other=0.0)[None, :]
    cb = tl.load(cb_ptr + c, mask=c_ok, other=0.0)[None, :]
    cc = tl.load(cc_ptr + c, mask=c_ok, other=0.0)[None, :]
    xhat = (p - mean) * rstd
    q = xhat * gamma + beta
    gp = ca * (g * _silu_grad(q)) + cb + cc * xhat
    tl.store(gp_ptr + off, gp.to(gp_ptr.dtype.element_ty), mask=m2d)


@triton.jit
def _bwd_dv_kernel(x_ptr, wexp_ptr, bexp_ptr, wdw_ptr, cst_ptr, gz_ptr, gp_ptr,
                   gu_ptr, gx_ptr, gwdw_ptr, gbexp_ptr,
                   CIN, CMID, H, W, HO, WO, NT,
                   sxb, sxc, sxh, sxw, sgb, sgc, sgh, sgw, sob, soc, soh, sow,
                   K: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr,
                   HAS_EXP: tl.constexpr, HAS_BEXP: tl.constexpr, ACT: tl.constexpr,
                   SKIP: tl.constexpr, NATIVE_DOT: tl.constexpr,
                   BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
                   ACC_DT: tl.constexpr):
    """Input-pixel tile: gv = sum_taps gp(o(i, tap)) * w_dw[tap] (+ gz), gu = gv * act'(u)
    (the transposed depthwise conv over gp, which ``_bwd_gp`` wrote once per output pixel).
    Stride 2: the tile holds one parity class of input pixels and loops over the taps that
    reach an output from it (~k^2/4); the g_w_dw partials of the other taps stay as the host
    zeroed them."""
    if STRIDE == 1:
        pid, b, i, i_ok, ih, iw, c, c_ok = _tile(NT, H, W, CMID, BLOCK_P, BLOCK_C)
        kh0 = 0
        kw0 = 0
    else:
        pid, b, i, i_ok, ih, iw, c, c_ok, ph, pw = _tile_parity(NT, H, W, CMID, BLOCK_P,
                                                                BLOCK_C)
        kh0 = (ph + PAD) % 2
        kw0 = (pw + PAD) % 2
    m2d = i_ok[:, None] & c_ok[None, :]
    xoff = b * sxb + ih.to(tl.int64) * sxh + iw.to(tl.int64) * sxw
    u = _expand_at(x_ptr, xoff, i_ok, sxc, wexp_ptr, bexp_ptr, c, c_ok, CIN,
                   HAS_EXP, HAS_BEXP, NATIVE_DOT, BLOCK_P, BLOCK_C, BLOCK_K, ACC_DT)
    v = tl.where(m2d, _act_fwd(u, cst_ptr, ACT), 0.0)

    if SKIP:  # stride 1: z and x share the pixel grid
        gv = tl.load(gz_ptr + b * sgb + c[None, :].to(tl.int64) * sgc + ih[:, None].to(tl.int64) * sgh
                     + iw[:, None].to(tl.int64) * sgw, mask=m2d, other=0.0).to(ACC_DT)
    else:
        gv = tl.zeros([BLOCK_P, BLOCK_C], dtype=ACC_DT)
    for kh in range(kh0, K, STRIDE):
        for kw in range(kw0, K, STRIDE):
            th = ih + PAD - kh  # a multiple of STRIDE for every pixel of the tile
            tw = iw + PAD - kw
            oh = th // STRIDE
            ow = tw // STRIDE
            ok = i_ok & (th >= 0) & (tw >= 0) & (oh < HO) & (ow < WO)
            mk = ok[:, None] & c_ok[None, :]
            gp = tl.load(gp_ptr + (b * CMID + c[None, :]) * (HO * WO) + (oh * WO + ow)[:, None],
                         mask=mk, other=0.0).to(ACC_DT)
            tap = kh * K + kw
            wt = tl.load(wdw_ptr + c * (K * K) + tap, mask=c_ok, other=0.0).to(ACC_DT)
            gv += gp * wt[None, :]
            tl.store(gwdw_ptr + (pid * (K * K) + tap) * CMID + c, tl.sum(gp * v, axis=0),
                     mask=c_ok)
    gu = tl.where(m2d, gv * _act_grad(u, cst_ptr, ACT), 0.0)
    if HAS_EXP:  # gu: contiguous (B, CMID, H*W), x's dtype (the backward GEMMs' operand)
        tl.store(gu_ptr + (b * CMID + c[None, :]) * (H * W) + i[:, None],
                 gu.to(gu_ptr.dtype.element_ty), mask=m2d)
        tl.store(gbexp_ptr + pid * CMID + c, tl.sum(gu, axis=0), mask=c_ok)
    else:  # identity expansion: gx = gv
        tl.store(gx_ptr + b * sob + c[None, :].to(tl.int64) * soc + ih[:, None].to(tl.int64) * soh
                 + iw[:, None].to(tl.int64) * sow, gu.to(gx_ptr.dtype.element_ty), mask=m2d)


@triton.jit
def _gemm_gx_kernel(gu_ptr, wexp_ptr, gx_ptr, CIN, CMID, H, W, NT, sob, soc, soh, sow,
                    NATIVE_DOT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
                    BLOCK_K: tl.constexpr, ACC_DT: tl.constexpr):
    """gx[b, k, i] = sum_c gu[b, c, i] * w_exp[c, k]: fp16/bf16 tensor-core dots with fp32
    accumulation (NATIVE_DOT), exact ACC-dtype dots otherwise."""
    pid = tl.program_id(0)
    pk = tl.program_id(1)
    b = (pid // NT).to(tl.int64)
    t = pid % NT
    i = t * BLOCK_P + tl.arange(0, BLOCK_P)
    i_ok = i < H * W
    k = pk * BLOCK_K + tl.arange(0, BLOCK_K)
    k_ok = k < CIN
    acc = tl.zeros([BLOCK_P, BLOCK_K], dtype=ACC_DT)
    for c0 in range(0, CMID, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < CMID
        a = tl.load(gu_ptr + (b * CMID + c[None, :]) * (H * W) + i[:, None],
                    mask=i_ok[:, None] & c_ok[None, :], other=0.0)
        w = tl.load(wexp_ptr + c[:, None] * CIN + k[None, :], mask=c_ok[:, None] & k_ok[None, :],
                    other=0.0)
        if NATIVE_DOT:
            acc = tl.dot(a, w.to(a.dtype), acc)
        else:
            acc = tl.dot(a.to(ACC_DT), w.to(ACC_DT), acc, input_precision="ieee",
                         out_dtype=ACC_DT)
    ih = i // W
    iw = i % W
    tl.store(gx_ptr + b * sob + k[None, :].to(tl.int64) * soc + ih[:, None].to(tl.int64) * soh
             + iw[:, None].to(tl.int64) * sow, acc.to(gx_ptr.dtype.element_ty),
             mask=i_ok[:, None] & k_ok[None, :])


@triton.jit
def _gemm_gw_kernel(gu_ptr, x_ptr, gw_ptr, B, CIN, CMID, H, W, sxb, sxc, sxh, sxw, CHUNK,
                    NATIVE_DOT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
                    BLOCK_K: tl.constexpr, ACC_DT: tl.constexpr):
    """Split-K partial of g_w_exp[c, k] = sum_{b, i} gu[b, c, i] * x[b, k, i]: program
    (c tile, k tile, split s) sums the flattened pixels [s*CHUNK, (s+1)*CHUNK) and writes its
    partial (ACC dtype) to gw[s]; the host adds the splits. Tensor-core dots for fp16/bf16."""
    pc = tl.program_id(0)
    pk = tl.program_id(1)
    ps = tl.program_id(2)
    c = pc * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < CMID
    k = pk * BLOCK_K + tl.arange(0, BLOCK_K)
    k_ok = k < CIN
    acc = tl.zeros([BLOCK_C, BLOCK_K], dtype=ACC_DT)
    HW = H * W
    NPIX = B * HW
    for n0 in range(ps * CHUNK, tl.minimum(ps * CHUNK + CHUNK, NPIX), BLOCK_P):
        n = n0 + tl.arange(0, BLOCK_P)
        n_ok = n < NPIX
        bb = (n // HW).to(tl.int64)
        i = n % HW
        a = tl.load(gu_ptr + (bb[None, :] * CMID + c[:, None]) * HW + i[None, :],
                    mask=c_ok[:, None] & n_ok[None, :], other=0.0)
        xx = tl.load(x_ptr + bb[:, None] * sxb + k[None, :].to(tl.int64) * sxc
                     + (i // W)[:, None].to(tl.int64) * sxh + (i % W)[:, None].to(tl.int64) * sxw,
                     mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        if NATIVE_DOT:
            acc = tl.dot(a, xx.to(a.dtype), acc)
        else:
            acc = tl.dot(a.to(ACC_DT), xx.to(ACC_DT), acc, input_precision="ieee",
                         out_dtype=ACC_DT)
    tl.store(gw_ptr + ps.to(tl.int64) * CMID * CIN + c[:, None] * CIN + k[None, :], acc,
             mask=c_ok[:, None] & k_ok[None, :])


# ------------------------------------------------------------------------------ launch helpers
def _p2(n, lo, hi):
    return max(lo, min(hi, triton.next_power_of_2(max(int(n), 1))))


# Largest (BLOCK_P pixels, BLOCK_C mid channels, BLOCK_K input channels) per program. The
# interpreter pays ~0.25 ms per op per program, so it gets few, large programs; tests lower
# these to exercise the multi-tile / multi-block / multi-chunk paths on small shapes.
MAX_BLOCKS_GPU = (64, 32, 32)
MAX_BLOCKS_INTERPRETER = (256, 1024, 256)


# Split-K of the weight-gradient GEMM: at least this many programs (2 per SM of an H200) where
# the pixels allow; the interpreter runs 2 splits where it can (the split path, cheaply).
GW_MIN_PROGRAMS = 264


def gw_splits(npix, cmid, cin, bp, bc, bk):
    """(splits, pixels per split: a multiple of bp) of ``_gemm_gw`` over ``npix`` pixels."""
    tiles = triton.cdiv(cmid, bc) * triton.cdiv(cin, bk)
    want = 2 if interpreted() else triton.cdiv(GW_MIN_PROGRAMS, tiles)
    steps = triton.cdiv(npix, bp)
    chunk = max(1, steps // want) * bp  # (rounded down: at least ``want`` splits)
    return triton.cdiv(npix, chunk), chunk


def gemm_blocks(npix, cmid, cin):
    """(BLOCK_P, BLOCK_C, BLOCK_K) of the backward GEMMs: on a GPU 64 pixels x 64 mid channels
    (wgmma wants M >= 64: g_w_exp's M is Cmid) x the input channels up to 128 (gx's N: gu is
    read once per 128 of them)."""
    if interpreted():
        return _blocks(npix, cmid, cin)
    return 64, _p2(cmid, 16, 64), _p2(cin, 16, 128)


def gw_blocks(bp, bk):
    """g_w_exp's (K, N) tiles from ``gemm_blocks``' (BLOCK_P, BLOCK_K): on a GPU 32 pixels per
    step and at most 64 input channels (larger tiles spill on sm_90 where Cin is not a multiple
    of 16 and the x tile is loaded in 16-bit pieces)."""
    return (bp, bk) if interpreted() else (min(bp, 32), min(bk, 64))


def _blocks(npix, cmid, cin):
    mp, mc, mk = MAX_BLOCKS_INTERPRETER if interpreted() else MAX_BLOCKS_GPU
    return _p2(npix, 16, mp), _p2(cmid, 16, mc), _p2(cin, 16, mk)


def _tl_acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _native_dot(dtype):
    return dtype in (torch.float16, torch.bfloat16) and not interpreted()


def out_memory_format(x):
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


_CONSTS = {}


def _consts(device, acc):
    """[1/sqrt(2), 1/sqrt(2*pi)] for GELU in the accumulation dtype, loaded by the kernels (a
    float literal in a kernel would be rounded to fp32, too coarse for fp64 gradcheck)."""
    key = (device, acc)
    if key not in _CONSTS:
        _CONSTS[key] = torch.tensor([math.sqrt(0.5), 1.0 / math.sqrt(2.0 * math.pi)],
                                    dtype=acc, device=device)
    return _CONSTS[key]


def _dummy(device, acc):
    return torch.zeros(1, dtype=acc, device=device)


def forward(x, w_exp, b_exp, w_dw, b_dw, bn_weight, bn_bias, act, stride, skip, bn_training,
            eps, save, bn_group=""):
    """Returns (z, p, mean, rstd, var, n); p is saved (x's dtype) when ``save`` or BN training;
    mean, rstd and the biased variance are the batch statistics when ``bn_training`` (else
    empty), over the process group ``bn_group`` names (SyncBatchNorm: the per-channel moments
    are all-reduced between the depthwise kernel and the normalisation kernel); n is their
    count (0-d). The running-stat update is the caller's (functional op)."""
    B, cin, H, W = x.shape
    cmid = w_dw.shape[0]
    k = w_dw.shape[-1]
    pad = dw_padding(k, stride)
    Ho, Wo = dw_out_size(H, k, stride), dw_out_size(W, k, stride)
    acc = acc_dtype(x.dtype)
    dev = x.device
    wdw = w_dw.reshape(cmid, k * k).contiguous()
    bdw = b_dw.contiguous() if b_dw is not None else _dummy(dev, acc)
    if not (save or bn_training):  # inference: nothing saved, z straight from v
        return _forward_d1(x, w_exp, b_exp, w_dw, b_dw, act, stride, skip)
    v = _expanded(x, w_exp, b_exp, act)  # K_A: v written once (x itself for the stem)
    z = torch.empty((B, cmid, Ho, Wo), dtype=x.dtype, device=dev,
                    memory_format=out_memory_format(x))
    BP, BC, _ = _blocks(Ho * Wo, cmid, cin)
    NT = triton.cdiv(Ho * Wo, BP)
    grid = (B * NT, triton.cdiv(cmid, BC))
    p = torch.empty((B, cmid, Ho, Wo), dtype=x.dtype, device=dev)
    if bn_training:
        pmean = torch.empty((B * NT, cmid), dtype=acc, device=dev)
        pm2 = torch.empty((B * NT, cmid), dtype=acc, device=dev)
    else:
        pmean = pm2 = _dummy(dev, acc)
    common = dict(SKIP=bool(skip), BLOCK_P=BP, BLOCK_C=BC, ACC_DT=_tl_acc(x.dtype))
    _fwd_kernel[grid](v, wdw, bdw, z, p, pmean, pm2, cmid, H, W, Ho, Wo, NT, *v.stride(),
                      *z.stride(), K=k, STRIDE=stride, PAD=pad, HAS_BDW=b_dw is not None,
                      STORE_Z=not bn_training, STORE_P=True, STATS=bool(bn_training), **common)
    if not bn_training:
        return z, p, *(torch.empty(0, dtype=acc, device=dev) for _ in range(4))
    # Chan merge of the per-tile statistics, then of the processes' (SyncBatchNorm)
    n = B * Ho * Wo
    group = resolve_group(bn_group)
    if n < 2 and group is None:
        raise bn_count_error(f"input size {(B, cmid, Ho, Wo)}")
    cnt = torch.full((NT,), float(BP), dtype=acc, device=dev)
    cnt[-1] = Ho * Wo - (NT - 1) * BP
    cnt = cnt.repeat(B)[:, None]
    mean = (pmean * cnt).sum(0) / n
    m2 = (pm2 + cnt * (pmean - mean) ** 2).sum(0)
    N, mean, m2 = merge_moments(n, mean, m2, group)
    if group is not None and float(N) < 2:
        raise bn_count_error(f"{int(N)} in the process group")
    var = m2 / N
    rstd = torch.rsqrt(var + eps)
    gamma = bn_weight.to(acc).contiguous() if bn_weight is not None else torch.ones(cmid, dtype=acc, device=dev)
    beta = bn_bias.to(acc).contiguous() if bn_bias is not None else torch.zeros(cmid, dtype=acc, device=dev)
    _bn_apply_kernel[grid](v, p, mean, rstd, gamma, beta, z, cmid, Ho, Wo, NT, *v.stride(),
                           *z.stride(), **common)
    return z, p, mean, rstd, var, N


def _expanded(x, w_exp, b_exp, act, nhwc=False):
    """v = act(x @ w_exp^T + b_exp), written once by K_A (``irmb_inference.expand``: a GEMM
    over the flattened pixels, channels_last, x's dtype); x itself (as channels_last when
    ``nhwc``) for the identity expansion."""
    from . import irmb_inference as d1
    if w_exp is None:
        return d1.nhwc(x) if nhwc else x
    cmid = w_exp.shape[0]
    return d1.expand(d1.nhwc(x), w_exp.reshape(cmid, -1).t().to(x.dtype).contiguous(), b_exp,
                     act, d1.consts(x.device, x.dtype))


def _forward_d1(x, w_exp, b_exp, w_dw, b_dw, act, stride, skip):
    """The inference forward (nothing saved, no batch statistics): the expansion GEMM writes v
    once, the depthwise kernel reads it and writes z (``irmb_inference.expand`` and
    ``dwproj(store_z=True)``). Returns forward()'s tuple with empty p and statistics."""
    from . import irmb_inference as d1
    cmid, k = w_dw.shape[0], w_dw.shape[-1]
    v = _expanded(x, w_exp, b_exp, act, nhwc=True)
    z = d1.dwproj(v, w_dw.reshape(cmid, k * k).t().contiguous(), b_dw, None, k, stride, skip,
                  store_z=True)
    if out_memory_format(x) is not torch.channels_last:
        z = z.contiguous()
    acc = acc_dtype(x.dtype)
    return (z, x.new_empty(0), *(torch.empty(0, dtype=acc, device=x.device) for _ in range(4)))


def backward(gz, x, w_exp, b_exp, w_dw, p, mean, rstd, bn_weight, bn_bias, act, stride, skip,
             bn_training, bn_group=""):
    """Returns (gx, g_w_exp, g_b_exp, g_w_dw, g_b_dw, g_bn_weight, g_bn_bias) with None for
    absent inputs. w_exp is (Cmid, Cin) or None; p as saved by ``forward``. Under a process
    group (SyncBatchNorm) the sums that the input gradient needs are the group's; the
    BatchNorm's and the depthwise bias's gradients are this process's sums."""
    B, cin, H, W = x.shape
    cmid = w_dw.shape[0]
    k = w_dw.shape[-1]
    pad = dw_padding(k, stride)
    Ho, Wo = p.shape[2], p.shape[3]
    acc = acc_dtype(x.dtype)
    dev = x.device
    has_exp = w_exp is not None
    wexp = w_exp.reshape(cmid, cin).contiguous() if has_exp else _dummy(dev, acc)
    bexp = b_exp.contiguous() if b_exp is not None else _dummy(dev, acc)
    wdw = w_dw.reshape(cmid, k * k).contiguous()
    cst = _consts(dev, acc)
    if bn_training:
        gamma = bn_weight.to(acc).contiguous() if bn_weight is not None else torch.ones(cmid, dtype=acc, device=dev)
        beta = bn_bias.to(acc).contiguous() if bn_bias is not None else torch.zeros(cmid, dtype=acc, device=dev)
    else:  # q = p
        mean = torch.zeros(cmid, dtype=acc, device=dev)
        rstd = torch.ones(cmid, dtype=acc, device=dev)
        gamma, beta = rstd, mean

    # 1. per-channel sums over the output: S1 = sum gq, S2 = sum gq * xhat, S3 = sum xhat
    BP, BC, BK = _blocks(Ho * Wo, cmid, cin)
    NT = triton.cdiv(Ho * Wo, BP)
    grid = (B * NT, triton.cdiv(cmid, BC))
    s = torch.empty((3, B * NT, cmid), dtype=acc, device=dev)
    _bwd_stats_kernel[grid](gz, p, mean, rstd, gamma, beta, s[0], s[1], s[2],
                            cmid, Ho, Wo, NT, *gz.stride(), BLOCK_P=BP, BLOCK_C=BC,
                            ACC_DT=_tl_acc(x.dtype))
    S1, S2, S3 = (t.clone() for t in s.sum(1))  # distinct tensors: op outputs may not alias
    n = B * Ho * Wo
    if bn_training:  # gp = gamma*rstd*(gq - S1/N - xhat*S2/N), sums and N over the group
        group = resolve_group(bn_group)
        N, G1, G2 = n, S1, S2
        if group is not None:
            N = all_reduce_sum(torch.tensor(float(n), dtype=acc, device=dev), group)
            G1, G2 = all_reduce_sum(torch.stack([S1, S2]), group)
        ca = gamma * rstd
        cb = -ca * G1 / N
        cc = -ca * G2 / N
        g_bdw = ca * S1 + cb * n + cc * S3
        g_bnw = S2.to(bn_weight.dtype) if bn_weight is not None else None
        g_bnb = S1.to(bn_bias.dtype) if bn_bias is not None else None
    else:
        ca, cb, cc = rstd, mean, mean  # ones, zeros, zeros
        g_bdw = S1
        g_bnw = g_bnb = None

    # 2. output tiles: gp = dL/dp once per output pixel
    gp = torch.empty((B, cmid, Ho, Wo), dtype=x.dtype, device=dev)
    _bwd_gp_kernel[grid](gz, p, mean, rstd, gamma, beta, ca, cb, cc, gp, cmid, Ho, Wo, NT,
                         *gz.stride(), BLOCK_P=BP, BLOCK_C=BC, ACC_DT=_tl_acc(x.dtype))

    # 3. input-pixel tiles: gu (or gx for the identity stem), partial g_w_dw, g_b_exp; at
    # stride 2 four parity classes of tiles, each doing ~1/4 of the taps
    if stride == 1:
        BP, BC, BK = _blocks(H * W, cmid, cin)
        NT = triton.cdiv(H * W, BP)
    else:
        nq = triton.cdiv(H, 2) * triton.cdiv(W, 2)
        BP, BC, BK = _blocks(nq, cmid, cin)
        NT = 4 * triton.cdiv(nq, BP)
    grid = (B * NT, triton.cdiv(cmid, BC))
    gx = torch.empty(x.shape, dtype=x.dtype, device=dev, memory_format=out_memory_format(x))
    gu = torch.empty((B, cmid, H, W) if has_exp else (1,), dtype=x.dtype, device=dev)
    gwdw_part = (torch.empty if stride == 1 else torch.zeros)((B * NT, k * k, cmid), dtype=acc,
                                                              device=dev)
    gbexp_part = torch.empty((B * NT, cmid) if has_exp else (1,), dtype=acc, device=dev)
    _bwd_dv_kernel[grid](x, wexp, bexp, wdw, cst, gz, gp, gu, gx, gwdw_part, gbexp_part,
                         cin, cmid, H, W, Ho, Wo, NT, *x.stride(), *gz.stride(), *gx.stride(),
                         K=k, STRIDE=stride, PAD=pad, HAS_EXP=has_exp,
                         HAS_BEXP=b_exp is not None, ACT=ACTS[act], SKIP=bool(skip),
                         NATIVE_DOT=_native_dot(x.dtype), BLOCK_P=BP, BLOCK_C=BC, BLOCK_K=BK,
                         ACC_DT=_tl_acc(x.dtype))
    g_wdw = gwdw_part.sum(0).t().reshape(w_dw.shape).to(w_dw.dtype).contiguous()
    g_wexp = g_bexp = None
    if has_exp:
        g_bexp = gbexp_part.sum(0).to(b_exp.dtype) if b_exp is not None else None
        native = _native_dot(x.dtype)
        GP, GC, GK = gemm_blocks(H * W, cmid, cin)
        GT = triton.cdiv(H * W, GP)
        # 4. gx = gu . w_exp
        _gemm_gx_kernel[(B * GT, triton.cdiv(cin, GK))](
            gu, wexp, gx, cin, cmid, H, W, GT, *gx.stride(), NATIVE_DOT=native,
            BLOCK_P=GP, BLOCK_C=GC, BLOCK_K=GK, ACC_DT=_tl_acc(x.dtype))
        # 5. g_w_exp = gu . x over every pixel: split-K partials, then their sum
        GP, GK = gw_blocks(GP, GK)
        splits, chunk = gw_splits(B * H * W, cmid, cin, GP, GC, GK)
        gw = torch.empty((splits, cmid, cin), dtype=acc, device=dev)
        _gemm_gw_kernel[(triton.cdiv(cmid, GC), triton.cdiv(cin, GK), splits)](
            gu, x, gw, B, cin, cmid, H, W, *x.stride(), chunk, NATIVE_DOT=native,
            BLOCK_P=GP, BLOCK_C=GC, BLOCK_K=GK, ACC_DT=_tl_acc(x.dtype))
        g_wexp = gw.sum(0).to(w_exp.dtype)
    return gx, g_wexp, g_bexp, g_wdw, g_bdw, g_bnw, g_bnb


# -------------------------------------------------------------- torch.library ops + autograd
from typing import List, Optional, Tuple  # noqa: E402

Tensor = torch.Tensor


# Functional (mutates_args=()): torch.library cannot attach autograd to a mutating op, so the
# op returns the batch mean/var and the wrapper updates the running stats in place, outside.
@torch.library.custom_op("emo_kernels::expand_dwconv_act_triton", mutates_args=())
def expand_dwconv_act_triton_op(
        x: Tensor, w_exp: Optional[Tensor], b_exp: Optional[Tensor], w_dw: Tensor,
        b_dw: Optional[Tensor], bn_weight: Optional[Tensor], bn_bias: Optional[Tensor],
        act: str, stride: int, skip: bool, bn_training: bool, eps: float,
        save: bool, bn_group: str = "") -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(z, p, mean, rstd, var, n). w_exp is (Cmid, Cin) or None. BatchNorm only in training
    mode (the wrapper folds eval-mode BN into w_dw/b_dw); p is saved for backward when ``save``;
    ``bn_group`` names the process group of a SyncBatchNorm ('' for none:
    emo_kernels/distributed.py)."""
    return forward(x, w_exp, b_exp, w_dw, b_dw, bn_weight, bn_bias, act, stride, skip,
                   bn_training, eps, save, bn_group)


@expand_dwconv_act_triton_op.register_fake
def _(x, w_exp, b_exp, w_dw, b_dw, bn_weight, bn_bias, act, stride, skip, bn_training, eps,
      save, bn_group=""):
    B, _, H, W = x.shape
    cmid, k = w_dw.shape[0], w_dw.shape[-1]
    Ho, Wo = dw_out_size(H, k, stride), dw_out_size(W, k, stride)
    acc = acc_dtype(x.dtype)
    z = torch.empty((B, cmid, Ho, Wo), dtype=x.dtype, device=x.device,
                    memory_format=out_memory_format(x))
    p = x.new_empty((B, cmid, Ho, Wo) if (save or bn_training) else (0,))
    stat = (cmid,) if bn_training else (0,)
    return (z, p, *(x.new_empty(stat, dtype=acc) for _ in range(3)),
            x.new_empty(() if bn_training else (0,), dtype=acc))


@torch.library.custom_op("emo_kernels::expand_dwconv_act_triton_backward", mutates_args=())
def expand_dwconv_act_triton_backward_op(
        gz: Tensor, x: Tensor, w_exp: Optional[Tensor], b_exp: Optional[Tensor], w_dw: Tensor,
        p: Tensor, mean: Tensor, rstd: Tensor, bn_weight: Optional[Tensor],
        bn_bias: Optional[Tensor], act: str, stride: int, skip: bool,
        bn_training: bool, bn_group: str = "") -> List[Tensor]:
    """[gx, g_w_exp, g_b_exp, g_w_dw, g_b_dw (ACC dtype), g_bn_weight, g_bn_bias]; an empty
    tensor stands for the gradient of an absent (None) input."""
    grads = backward(gz, x, w_exp, b_exp, w_dw, p, mean, rstd, bn_weight, bn_bias, act,
                     stride, skip, bn_training, bn_group)
    return [g if g is not None else x.new_empty(0) for g in grads]


@expand_dwconv_act_triton_backward_op.register_fake
def _(gz, x, w_exp, b_exp, w_dw, p, mean, rstd, bn_weight, bn_bias, act, stride, skip,
      bn_training, bn_group=""):
    def like(t):
        return torch.empty_like(t) if t is not None else x.new_empty(0)
    bn = bn_training
    return [torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=out_memory_format(x)),
            like(w_exp), like(b_exp), torch.empty_like(w_dw),
            x.new_empty((w_dw.shape[0],), dtype=acc_dtype(x.dtype)),
            like(bn_weight if bn else None), like(bn_bias if bn else None)]


def _setup_context(ctx, inputs, output):
    (x, w_exp, b_exp, w_dw, b_dw, bn_weight, bn_bias, act, stride, skip, bn_training,
     _eps, _save, bn_group) = inputs
    _z, p, mean, rstd, _var, _n = output
    ctx.save_for_backward(x, w_exp, b_exp, w_dw, p, mean, rstd, bn_weight, bn_bias)
    ctx.cfg = (act, stride, skip, bn_training, bn_group)
    ctx.b_dw_dtype = None if b_dw is None else b_dw.dtype


def _backward(ctx, gz, _gp, _gmean, _grstd, _gvar, _gn):
    x, w_exp, b_exp, w_dw, p, mean, rstd, bn_weight, bn_bias = ctx.saved_tensors
    if p.numel() == 0 and x.numel() > 0:
        raise RuntimeError("expand_dwconv_act_triton: backward needs p, which the forward did "
                           "not save (it ran with save=False)")
    g = torch.ops.emo_kernels.expand_dwconv_act_triton_backward(
        gz, x, w_exp, b_exp, w_dw, p, mean, rstd, bn_weight, bn_bias, *ctx.cfg)
    gx, gwe, gbe, gwd, gbd, gbw, gbb = g
    bn_training = ctx.cfg[3]
    return (gx,
            gwe if w_exp is not None else None,
            gbe if b_exp is not None else None,
            gwd,
            gbd.to(ctx.b_dw_dtype) if ctx.b_dw_dtype is not None else None,
            gbw if (bn_training and bn_weight is not None) else None,
            gbb if (bn_training and bn_bias is not None) else None,
            None, None, None, None, None, None, None)


expand_dwconv_act_triton_op.register_autograd(_backward, setup_context=_setup_context)


def expand_dwconv_act_triton(x, w_exp, b_exp, w_dw, b_dw=None, *, act="silu", stride=1,
                             skip=False, bn_weight=None, bn_bias=None, running_mean=None,
                             running_var=None, bn_training=False, momentum=0.1, eps=1e-6,
                             bn_process_group=None):
    """The ``triton`` backend of ``emo_kernels.expand_dwconv_act`` (arguments validated there).

    Eval-mode BatchNorm (running stats, bn_training=False) is folded here into w_dw / b_dw
    with differentiable torch ops (in the accumulation dtype), so the kernels only know
    training-mode BN."""
    if w_exp is not None and w_exp.dim() == 4:
        w_exp = w_exp.flatten(1)
    use_bn = bn_weight is not None or running_mean is not None or bn_training
    if use_bn and not bn_training:
        acc = acc_dtype(x.dtype)
        scale, shift = bn_scale_shift(
            None if bn_weight is None else bn_weight.to(acc),
            None if bn_bias is None else bn_bias.to(acc), running_mean.to(acc),
            running_var.to(acc), eps)
        w_dw, b_dw = fold_affine(w_dw.to(acc), None if b_dw is None else b_dw.to(acc), scale,
                                 shift)
        bn_weight = bn_bias = running_mean = running_var = None
    save = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, w_exp, b_exp, w_dw, b_dw, bn_weight, bn_bias))
    group = group_key(bn_process_group) if bn_training else ""
    if bn_training and not group:  # (here too, not only in the kernel path: fake tensors)
        k = w_dw.shape[-1]
        Ho, Wo = dw_out_size(x.shape[2], k, stride), dw_out_size(x.shape[3], k, stride)
        if x.shape[0] * Ho * Wo < 2:
            raise bn_count_error(f"input size {(x.shape[0], w_dw.shape[0], Ho, Wo)}")
    z, p, mean, _rstd, var, n = torch.ops.emo_kernels.expand_dwconv_act_triton(
        x, w_exp, b_exp, w_dw, b_dw, bn_weight, bn_bias, act, int(stride), bool(skip),
        bool(bn_training), float(eps), save, group)
    if bn_training and running_mean is not None:  # as F.batch_norm: unbiased var for the update
        update_running_stats(running_mean, running_var, mean, var,
                             n if group else p.numel() // p.shape[1], momentum)
    return z
