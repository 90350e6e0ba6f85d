"""Triton kernels of ``window_attention``: EMO strided-window attention, fused softmax, and
EMOv2's forms (contiguous windows, the hybrid sum of both partitions, wide value heads,
padded values).

Program mapping: one program per (image, window, head); grid = (B * n1 * n2, heads).
A program holds its window's ws*ws tokens (49, padded to BLOCK_L = 64), head_dim q/k
channels (padded to BLOCK_D = next power of two >= 16) and its value head's DV = Cv / heads
channels (BLOCK_DV) on chip. Window membership is index arithmetic -- token t = (i, j) of
window (a, b) is pixel (i*n1 + a, j*n2 + b) (strided, EMO's), or (a*ws + i, b*ws + j) with
CLOSE (contiguous, EMOv2's) -- so there is no padded copy and no partition/unpartition copy:
q, k, v are read and the output written in place in (B, C, H, W) through their strides
(contiguous, channels_last, or channel slices of one qk tensor). The hybrid form is two
launches: the strided windows, then the contiguous ones adding into the output (ACCUM).

Masks, per token t of the BLOCK_L lanes:
    tok     = t < ws*ws                       a real token of the window
    in_map  = tok & row < H & col < W         a pixel of the unpadded map
    pad_key = tok & ~in_map                   a padded pixel: key = k_pad, value = v_pad or 0
Lanes t >= ws*ws are masked out of the softmax (score -inf); padded pixels are NOT masked
(EMO's quirk). Query rows of padded pixels are computed (q = 0) but never stored.

Backward (flash-style): the forward saves the per-row log-sum-exp (LSE) of the scaled
scores, one per partition; the backward recomputes P = exp(S - LSE), dP = dO V^T,
delta = rowsum(P * dP) (= rowsum(dO * O): the whole window is one tile, so O is neither
saved nor read, and the hybrid form needs no per-partition output), then dV = P^T dO,
dS = P * (dP - delta), dQ = scale dS K, dK = scale dS^T Q (the hybrid form's second launch
adds into dQ, dK, dV). The k_pad / v_pad gradients are the sums of dK / dV over padded key
lanes: each program writes its partial sum (one row of a (passes, B * n1 * n2, C) buffer, no
atomics) and the launcher sums the rows.

Memory traffic per partition: reads q, k (C) and v (Cv) once per pixel, writes the output
(Cv; the hybrid form's second pass reads it back); the backward reads q, k, v, dO and writes
dq, dk, dv (the second pass of the hybrid form reads them back too).

Precision: scores, softmax and accumulation are fp32 (fp64 for fp64 inputs); dot operands
are the input dtype (fp16/bf16 use tensor cores; fp32 uses input_precision="ieee", not TF32).
Under the Triton interpreter bf16 operands are upcast to fp32 before tl.dot (the
interpreter's bf16 dot is broken upstream). The scale is passed as an fp32 hi + lo pair so
fp64 runs keep full precision (Triton float arguments are fp32).
Only APIs available in Triton 3.6 .. 3.8 are used.
"""
import torch
import triton
import triton.language as tl

from . import interpreted

from ...formulas import acc_dtype

MAX_HEAD_DIM = 64
MAX_VALUE_DIM = 128   # channels of one value head (EMOv2's are wider than q/k's: 60-128)
MAX_WINDOW_TOKENS = 64


@triton.jit
def _window_tokens(pid_w, H, W, n1, n2, WS: tl.constexpr, BLOCK_L: tl.constexpr,
                   CLOSE: tl.constexpr):
    """Image index (int64), pixel row/col of each token lane, and the token masks. Token
    t = (i, j) of window (a, b): pixel (i*n1 + a, j*n2 + b) (strided, EMO's), or with CLOSE
    (a*WS + i, b*WS + j) (EMOv2's contiguous windows)."""
    nw = n1 * n2
    img = pid_w // nw
    r = pid_w % nw
    a = r // n2
    b = r % n2
    t = tl.arange(0, BLOCK_L)
    if CLOSE:
        row = a * WS + t // WS
        col = b * WS + t % WS
    else:
        row = (t // WS) * n1 + a
        col = (t % WS) * n2 + b
    tok = t < WS * WS
    in_map = tok & (row < H) & (col < W)
    return img.to(tl.int64), row, col, tok, in_map


@triton.jit
def _head_channels(head, D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_DV: tl.constexpr):
    """The channel lanes of a head: its q/k channels (and their mask), its value channels."""
    c = tl.arange(0, BLOCK_D)
    cv = tl.arange(0, BLOCK_DV)
    return head * D + c, c < D, head * DV + cv, cv < DV


@triton.jit
def _tile_offsets(img, row, col, ch, sb, sc, sh, sw):
    """(BLOCK_L, BLOCK_D) element offsets of a (token, channel) tile in a (B, C, H, W) tensor."""
    return img * sb + ch[None, :] * sc + row[:, None] * sh + col[:, None] * sw


@triton.jit
def _scaled(x, scale_hi, scale_lo, IS_F64: tl.constexpr):
    if IS_F64:
        return x * scale_hi + x * scale_lo
    else:
        return x * scale_hi


@triton.jit
def _load_qkv(Q, K, V, KPAD, VPAD, img, row, col, ch, cmask, chv, vmask, tok, in_map,
              sqb, sqc, sqh, sqw, skb, skc, skh, skw, svb, svc, svh, svw, skp, svp,
              HAS_KPAD: tl.constexpr, HAS_VPAD: tl.constexpr, UPCAST: tl.constexpr):
    """The window's q, k (head_dim channels ch) and v (the value head's channels chv) tiles;
    padded pixels: k = k_pad, v = v_pad (or 0), q = 0."""
    m2 = in_map[:, None] & cmask[None, :]
    q = tl.load(Q + _tile_offsets(img, row, col, ch, sqb, sqc, sqh, sqw), mask=m2, other=0.0)
    k = tl.load(K + _tile_offsets(img, row, col, ch, skb, skc, skh, skw), mask=m2, other=0.0)
    mv = in_map[:, None] & vmask[None, :]
    v = tl.load(V + _tile_offsets(img, row, col, chv, svb, svc, svh, svw), mask=mv, other=0.0)
    pad_key = tok & (in_map == 0)
    if HAS_KPAD:
        kp = tl.load(KPAD + ch * skp, mask=cmask, other=0.0)
        k = tl.where(pad_key[:, None], kp[None, :].to(k.dtype), k)
    if HAS_VPAD:
        vp = tl.load(VPAD + chv * svp, mask=vmask, other=0.0)
        v = tl.where(pad_key[:, None], vp[None, :].to(v.dtype), v)
    if UPCAST:
        q = q.to(tl.float32)
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    return q, k, v


@triton.jit
def _window_attention_fwd(
        Q, K, V, KPAD, VPAD, O, LSE,
        sqb, sqc, sqh, sqw, skb, skc, skh, skw, svb, svc, svh, svw, sob, soc, soh, sow, skp, svp,
        H, W, n1, n2, scale_hi, scale_lo,
        D: tl.constexpr, DV: tl.constexpr, WS: tl.constexpr, BLOCK_L: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, HAS_KPAD: tl.constexpr,
        HAS_VPAD: tl.constexpr, CLOSE: tl.constexpr, ACCUM: tl.constexpr,
        UPCAST: tl.constexpr, IS_F64: tl.constexpr):
    pid_w = tl.program_id(0)
    head = tl.program_id(1)
    img, row, col, tok, in_map = _window_tokens(pid_w, H, W, n1, n2, WS, BLOCK_L, CLOSE)
    ch, cmask, chv, vmask = _head_channels(head, D, DV, BLOCK_D, BLOCK_DV)
    q, k, v = _load_qkv(Q, K, V, KPAD, VPAD, img, row, col, ch, cmask, chv, vmask, tok, in_map,
                        sqb, sqc, sqh, sqw, skb, skc, skh, skw, svb, svc, svh, svw, skp, svp,
                        HAS_KPAD, HAS_VPAD, UPCAST)

    s = _scaled(tl.dot(q, tl.trans(k), input_precision="ieee"), scale_hi, scale_lo, IS_F64)
    s = tl.where(tok[None, :], s, float("-inf"))
    m = tl.max(s, 1)
    p = tl.exp(s - m[:, None])
    l = tl.sum(p, 1)
    o = tl.dot(p.to(v.dtype), v, input_precision="ieee") / l[:, None]

    mv = in_map[:, None] & vmask[None, :]
    o_ptr = O + _tile_offsets(img, row, col, chv, sob, soc, soh, sow)
    if ACCUM:  # the second partition of the hybrid form: add to the first one's output
        o = o + tl.load(o_ptr, mask=mv, other=0.0).to(o.dtype)
    tl.store(o_ptr, o.to(O.dtype.element_ty), mask=mv)
    t = tl.arange(0, BLOCK_L)
    lse_base = (pid_w.to(tl.int64) * tl.num_programs(1) + head) * BLOCK_L
    tl.store(LSE + lse_base + t, m + tl.log(l))


@triton.jit
def _accumulate_store(ptr, x, mask, ACCUM: tl.constexpr):
    if ACCUM:
        x = x + tl.load(ptr, mask=mask, other=0.0).to(x.dtype)
    tl.store(ptr, x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _window_attention_bwd(
        Q, K, V, KPAD, VPAD, DO, LSE, DQ, DK, DV_, DKPAD, DVPAD,
        sqb, sqc, sqh, sqw, skb, skc, skh, skw, svb, svc, svh, svw, skp, svp,
        sdob, sdoc, sdoh, sdow, sdqb, sdqc, sdqh, sdqw, sdkb, sdkc, sdkh, sdkw,
        sdvb, sdvc, sdvh, sdvw,
        H, W, n1, n2, C, CV, scale_hi, scale_lo,
        D: tl.constexpr, DV: tl.constexpr, WS: tl.constexpr, BLOCK_L: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, HAS_KPAD: tl.constexpr,
        HAS_VPAD: tl.constexpr, CLOSE: tl.constexpr, ACCUM: tl.constexpr,
        UPCAST: tl.constexpr, IS_F64: tl.constexpr):
    pid_w = tl.program_id(0)
    head = tl.program_id(1)
    img, row, col, tok, in_map = _window_tokens(pid_w, H, W, n1, n2, WS, BLOCK_L, CLOSE)
    ch, cmask, chv, vmask = _head_channels(head, D, DV, BLOCK_D, BLOCK_DV)
    q, k, v = _load_qkv(Q, K, V, KPAD, VPAD, img, row, col, ch, cmask, chv, vmask, tok, in_map,
                        sqb, sqc, sqh, sqw, skb, skc, skh, skw, svb, svc, svh, svw, skp, svp,
                        HAS_KPAD, HAS_VPAD, UPCAST)
    m2 = in_map[:, None] & cmask[None, :]
    mv = in_map[:, None] & vmask[None, :]
    do = tl.load(DO + _tile_offsets(img, row, col, chv, sdob, sdoc, sdoh, sdow),
                 mask=mv, other=0.0)
    t = tl.arange(0, BLOCK_L)
    lse_base = (pid_w.to(tl.int64) * tl.num_programs(1) + head) * BLOCK_L
    lse = tl.load(LSE + lse_base + t)
    if UPCAST:
        do = do.to(tl.float32)

    s = _scaled(tl.dot(q, tl.trans(k), input_precision="ieee"), scale_hi, scale_lo, IS_F64)
    p = tl.exp(s - lse[:, None])
    p = tl.where(tok[None, :], p, 0.0)
    dv = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision="ieee")
    dp = tl.dot(do, tl.trans(v), input_precision="ieee")
    # delta_i = rowsum(dO_i * O_i) = sum_j P_ij dP_ij: from the tile on chip (the whole window
    # is one tile), so O is not read -- and the hybrid form needs no per-partition output
    delta = tl.sum(p * dp, 1)
    ds = (p * (dp - delta[:, None])).to(q.dtype)
    dq = _scaled(tl.dot(ds, k, input_precision="ieee"), scale_hi, scale_lo, IS_F64)
    dk = _scaled(tl.dot(tl.trans(ds), q, input_precision="ieee"), scale_hi, scale_lo, IS_F64)

    _accumulate_store(DQ + _tile_offsets(img, row, col, ch, sdqb, sdqc, sdqh, sdqw), dq, m2,
                      ACCUM)
    _accumulate_store(DK + _tile_offsets(img, row, col, ch, sdkb, sdkc, sdkh, sdkw), dk, m2,
                      ACCUM)
    _accumulate_store(DV_ + _tile_offsets(img, row, col, chv, sdvb, sdvc, sdvh, sdvw), dv, mv,
                      ACCUM)
    pad_key = tok & (in_map == 0)
    if HAS_KPAD:
        dkp = tl.sum(tl.where(pad_key[:, None], dk, 0.0), 0)
        tl.store(DKPAD + pid_w.to(tl.int64) * C + ch, dkp.to(DKPAD.dtype.element_ty), mask=cmask)
    if HAS_VPAD:
        dvp = tl.sum(tl.where(pad_key[:, None], dv, 0.0), 0)
        tl.store(DVPAD + pid_w.to(tl.int64) * CV + chv, dvp.to(DVPAD.dtype.element_ty),
                 mask=vmask)


# ----- launch helpers ------------------------------------------------------------------------
PASSES = {"remote": (False,), "close": (True,), "hybrid": (False, True)}  # CLOSE per launch


def window_geometry(H, W, window_size):
    """(n1, n2, BLOCK_L): windows along H and W, token lanes per program."""
    n1 = (H + window_size - 1) // window_size
    n2 = (W + window_size - 1) // window_size
    return n1, n2, max(16, triton.next_power_of_2(window_size * window_size))


def lse_shape(q, head_dim, window_size, partition="remote"):
    """(passes, B*n1*n2, heads, BLOCK_L): one log-sum-exp row per query lane and partition."""
    B, C, H, W = q.shape
    n1, n2, block_l = window_geometry(H, W, window_size)
    return (len(PASSES[partition]), B * n1 * n2, C // head_dim, block_l)


def _meta(q, v, head_dim, window_size, scale, has_kpad, has_vpad):
    B, C, H, W = q.shape
    n1, n2, block_l = window_geometry(H, W, window_size)
    dv = v.shape[1] // (C // head_dim)
    block_dv = max(16, triton.next_power_of_2(dv))
    scale_hi = float(torch.tensor(scale, dtype=torch.float32))
    meta = dict(D=head_dim, DV=dv, WS=window_size, BLOCK_L=block_l,
                BLOCK_D=max(16, triton.next_power_of_2(head_dim)), BLOCK_DV=block_dv,
                HAS_KPAD=has_kpad, HAS_VPAD=has_vpad,
                UPCAST=q.dtype == torch.bfloat16 and interpreted(),
                IS_F64=q.dtype == torch.float64, num_warps=4 if block_dv <= 64 else 8)
    return (B * n1 * n2, C // head_dim), (H, W, n1, n2), (scale_hi, scale - scale_hi), meta


def _pad_arg(t, like):
    """(pointer, stride) of an optional pad vector (a dummy pointer when absent)."""
    return (t, t.stride(0)) if t is not None else (like, 0)


def window_attention_fwd(q, k, v, k_pad, head_dim, window_size, scale, v_pad=None,
                         partition="remote"):
    """(out, lse): out like ``v`` (same strides when v is dense), lse (``lse_shape``). The
    hybrid form launches the kernel twice: the strided windows, then the contiguous ones
    adding into the output."""
    grid, geo, sc, meta = _meta(q, v, head_dim, window_size, scale, k_pad is not None,
                                v_pad is not None)
    out = torch.empty_like(v)
    lse = torch.empty(lse_shape(q, head_dim, window_size, partition), dtype=acc_dtype(q.dtype),
                      device=q.device)
    kp, skp = _pad_arg(k_pad, q)
    vp, svp = _pad_arg(v_pad, q)
    for i, close in enumerate(PASSES[partition]):
        _window_attention_fwd[grid](
            q, k, v, kp, vp, out, lse[i], *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            skp, svp, *geo, *sc, CLOSE=close, ACCUM=i > 0, **meta)
    return out, lse


def window_attention_bwd(grad_out, q, k, v, k_pad, lse, head_dim, window_size, scale,
                         v_pad=None, partition="remote"):
    """(dq, dk, dv, dk_pad, dv_pad); a pad's gradient is zeros when the pad is None. The
    hybrid form: two launches, the second adding into dq, dk, dv."""
    grid, geo, sc, meta = _meta(q, v, head_dim, window_size, scale, k_pad is not None,
                                v_pad is not None)
    C, Cv = q.shape[1], v.shape[1]
    passes = PASSES[partition]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    acc = acc_dtype(q.dtype)
    # per-window partial sums of the pads' gradients: rows, no atomics; summed below
    kpart = torch.empty((len(passes), grid[0], C), dtype=acc, device=q.device) \
        if k_pad is not None else None
    vpart = torch.empty((len(passes), grid[0], Cv), dtype=acc, device=q.device) \
        if v_pad is not None else None
    kp, skp = _pad_arg(k_pad, q)
    vp, svp = _pad_arg(v_pad, q)
    for i, close in enumerate(passes):
        _window_attention_bwd[grid](
            q, k, v, kp, vp, grad_out, lse[i], dq, dk, dv,
            q if kpart is None else kpart[i], q if vpart is None else vpart[i],
            *q.stride(), *k.stride(), *v.stride(), skp, svp,
            *grad_out.stride(), *dq.stride(), *dk.stride(), *dv.stride(),
            *geo, C, Cv, *sc, CLOSE=close, ACCUM=i > 0, **meta)
    dk_pad = kpart.sum((0, 1)).to(q.dtype) if kpart is not None else q.new_zeros((C,))
    dv_pad = vpart.sum((0, 1)).to(q.dtype) if vpart is not None else q.new_zeros((Cv,))
    return dq, dk, dv, dk_pad, dv_pad


# ----- the torch.library custom op and its autograd ---------------------------------------
# custom_op (not triton_op): the op is opaque to tracing and its fake functions are plain
# Python, so opcheck and torch.compile(fullgraph=True) work on CPU (interpreter) and GPU alike.
from typing import Optional, Tuple  # noqa: E402


PARTITION_CODES = {"remote": 0, "close": 1, "hybrid": 2}
_PARTITIONS = tuple(PARTITION_CODES)


@torch.library.custom_op("emo_kernels::window_attention_triton", mutates_args=())
def _wa_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               k_pad: Optional[torch.Tensor], v_pad: Optional[torch.Tensor], head_dim: int,
               window_size: int, scale: float, partition: int
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    return window_attention_fwd(q, k, v, k_pad, head_dim, window_size, scale, v_pad,
                                _PARTITIONS[partition])


@_wa_triton.register_fake
def _(q, k, v, k_pad, v_pad, head_dim, window_size, scale, partition):
    lse = q.new_empty(lse_shape(q, head_dim, window_size, _PARTITIONS[partition]),
                      dtype=acc_dtype(q.dtype))
    return torch.empty_like(v), lse


@torch.library.custom_op("emo_kernels::window_attention_triton_backward", mutates_args=())
def _wa_triton_bwd(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                   v: torch.Tensor, k_pad: Optional[torch.Tensor],
                   v_pad: Optional[torch.Tensor], lse: torch.Tensor, head_dim: int,
                   window_size: int, scale: float, partition: int
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                              torch.Tensor]:
    return window_attention_bwd(grad_out, q, k, v, k_pad, lse, head_dim, window_size, scale,
                                v_pad, _PARTITIONS[partition])


@_wa_triton_bwd.register_fake
def _(grad_out, q, k, v, k_pad, v_pad, lse, head_dim, window_size, scale, partition):
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v),
            q.new_empty((q.shape[1],)), q.new_empty((v.shape[1],)))


def _setup_context(ctx, inputs, output):
    q, k, v, k_pad, v_pad, head_dim, window_size, scale, partition = inputs
    _, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, k_pad, v_pad, lse)  # not the output: see the backward
    ctx.pads = (k_pad is not None, v_pad is not None)
    ctx.args = (head_dim, window_size, scale, partition)


def _backward(ctx, grad_out, _grad_lse):
    q, k, v, k_pad, v_pad, lse = ctx.saved_tensors
    dq, dk, dv, dk_pad, dv_pad = _wa_triton_bwd(grad_out, q, k, v, k_pad, v_pad, lse,
                                                *ctx.args)
    return (dq, dk, dv, dk_pad if ctx.pads[0] else None, dv_pad if ctx.pads[1] else None,
            None, None, None, None)


_wa_triton.register_autograd(_backward, setup_context=_setup_context)


def window_attention_triton(q, k, v, k_pad=None, *, head_dim, window_size=7, scale=None,
                            v_pad=None, partition="remote"):
    """The triton backend of ``window_attention`` (forward and backward kernels), EMO's form
    and EMOv2's (contiguous / hybrid partitions, wide value heads, padded values)."""
    scale = head_dim ** -0.5 if scale is None else float(scale)
    return torch.ops.emo_kernels.window_attention_triton(
        q, k, v, k_pad, v_pad, head_dim, window_size, scale, PARTITION_CODES[partition])[0]
