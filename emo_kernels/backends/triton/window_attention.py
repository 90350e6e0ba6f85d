"""Triton kernels of ``window_attention``: EMO strided-window attention, fused softmax.

Program mapping: one program per (image, window, head); grid = (B * n1 * n2, heads).
A program holds its window's ws*ws tokens (49, padded to BLOCK_L = 64) and head_dim
channels (padded to BLOCK_D = next power of two >= 16) on chip. Window membership is
index arithmetic -- token t = (i, j) of window (a, b) is pixel (i*n1 + a, j*n2 + b) -- so
there is no padded copy and no partition/unpartition copy: q, k, v are read and the output
written in place in (B, C, H, W) through their strides (contiguous, channels_last, or
channel slices of one qk tensor).

Masks, per token t of the BLOCK_L lanes:
    tok     = t < ws*ws                       a real token of the window
    in_map  = tok & row < H & col < W         a pixel of the unpadded map
    pad_key = tok & ~in_map                   a padded pixel: key = k_pad, value = 0
Lanes t >= ws*ws are masked out of the softmax (score -inf); padded pixels are NOT masked
(EMO's quirk). Query rows of padded pixels are computed (q = 0) but never stored.

Backward (flash-style): the forward saves the per-row log-sum-exp (LSE) of the scaled
scores; the backward recomputes P = exp(S - LSE), delta = rowsum(dO * O), then
dV = P^T dO, dS = P * (dO V^T - delta), dQ = scale dS K, dK = scale dS^T Q. The k_pad
gradient is the sum of dK over padded key lanes: each program writes its partial sum
(one row of a (B * n1 * n2, C) buffer, no atomics) and the launcher sums the rows.

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
MAX_WINDOW_TOKENS = 64


@triton.jit
def _window_tokens(pid_w, H, W, n1, n2, WS: tl.constexpr, BLOCK_L: tl.constexpr):
    """Image index (int64), pixel row/col of each token lane, and the token masks."""
    nw = n1 * n2
    img = pid_w // nw
    r = pid_w % nw
    a = r // n2
    b = r % n2
    t = tl.arange(0, BLOCK_L)
    row = (t // WS) * n1 + a
    col = (t % WS) * n2 + b
    tok = t < WS * WS
    in_map = tok & (row < H) & (col < W)
    return img.to(tl.int64), row, col, tok, in_map


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
def _load_qkv(Q, K, V, KPAD, img, row, col, ch, cmask, tok, in_map,
              sqb, sqc, sqh, sqw, skb, skc, skh, skw, svb, svc, svh, svw, skp,
              HAS_KPAD: tl.constexpr, UPCAST: tl.constexpr):
    m2 = in_map[:, None] & cmask[None, :]
    q = tl.load(Q + _tile_offsets(img, row, col, ch, sqb, sqc, sqh, sqw), mask=m2, other=0.0)
    k = tl.load(K + _tile_offsets(img, row, col, ch, skb, skc, skh, skw), mask=m2, other=0.0)
    v = tl.load(V + _tile_offsets(img, row, col, ch, svb, svc, svh, svw), mask=m2, other=0.0)
    if HAS_KPAD:
        kp = tl.load(KPAD + ch * skp, mask=cmask, other=0.0)
        pad_key = tok & (in_map == 0)
        k = tl.where(pad_key[:, None], kp[None, :].to(k.dtype), k)
    if UPCAST:
        q = q.to(tl.float32)
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    return q, k, v


@triton.jit
def _window_attention_fwd(
        Q, K, V, KPAD, O, LSE,
        sqb, sqc, sqh, sqw, skb, skc, skh, skw, svb, svc, svh, svw, sob, soc, soh, sow, skp,
        H, W, n1, n2, scale_hi, scale_lo,
        D: tl.constexpr, WS: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
        HAS_KPAD: tl.constexpr, UPCAST: tl.constexpr, IS_F64: tl.constexpr):
    pid_w = tl.program_id(0)
    head = tl.program_id(1)
    img, row, col, tok, in_map = _window_tokens(pid_w, H, W, n1, n2, WS, BLOCK_L)
    c = tl.arange(0, BLOCK_D)
    cmask = c < D
    ch = head * D + c
    q, k, v = _load_qkv(Q, K, V, KPAD, img, row, col, ch, cmask, tok, in_map,
                        sqb, sqc, sqh, sqw, skb, skc, skh, skw, svb, svc, svh, svw, skp,
                        HAS_KPAD, UPCAST)

    s = _scaled(tl.dot(q, tl.trans(k), input_precision="ieee"), scale_hi, scale_lo, IS_F64)
    s = tl.where(tok[None, :], s, float("-inf"))
    m = tl.max(s, 1)
    p = tl.exp(s - m[:, None])
    l = tl.sum(p, 1)
    o = tl.dot(p.to(v.dtype), v, input_precision="ieee") / l[:, None]

    m2 = in_map[:, None] & cmask[None, :]
    tl.store(O + _tile_offsets(img, row, col, ch, sob, soc, soh, sow),
             o.to(O.dtype.element_ty), mask=m2)
    t = tl.arange(0, BLOCK_L)
    lse_base = (pid_w.to(tl.int64) * tl.num_programs(1) + head) * BLOCK_L
    tl.store(LSE + lse_base + t, m + tl.log(l))


@triton.jit
def _window_attention_bwd(
        Q, K, V, KPAD, O, DO, LSE, DQ, DK, DV, DKPAD,
        sqb, sqc, sqh, sqw, skb, skc, skh, skw, svb, svc, svh, svw, sob, soc, soh, sow, skp,
        sdob, sdoc, sdoh, sdow, sdqb, sdqc, sdqh, sdqw, sdkb, sdkc, sdkh, sdkw,
        sdvb, sdvc, sdvh, sdvw,
        H, W, n1, n2, C, scale_hi, scale_lo,
        D: tl.constexpr, WS: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
        HAS_KPAD: tl.constexpr, UPCAST: tl.constexpr, IS_F64: tl.constexpr):
    pid_w = tl.program_id(0)
    head = tl.program_id(1)
    img, row, col, tok, in_map = _window_tokens(pid_w, H, W, n1, n2, WS, BLOCK_L)
    c = tl.arange(0, BLOCK_D)
    cmask = c < D
    ch = head * D + c
    q, k, v = _load_qkv(Q, K, V, KPAD, img, row, col, ch, cmask, tok, in_map,
                        sqb, sqc, sqh, sqw, skb, skc, skh, skw, svb, svc, svh, svw, skp,
                        HAS_KPAD, UPCAST)
    m2 = in_map[:, None] & cmask[None, :]
    o = tl.load(O + _tile_offsets(img, row, col, ch, sob, soc, soh, sow), mask=m2, other=0.0)
    do = tl.load(DO + _tile_offsets(img, row, col, ch, sdob, sdoc, sdoh, sdow),
                 mask=m2, other=0.0)
    t = tl.arange(0, BLOCK_L)
    lse_base = (pid_w.to(tl.int64) * tl.num_programs(1) + head) * BLOCK_L
    lse = tl.load(LSE + lse_base + t)
    acc_t = lse.dtype
    delta = tl.sum(do.to(acc_t) * o.to(acc_t), 1)
    if UPCAST:
        do = do.to(tl.float32)

    s = _scaled(tl.dot(q, tl.trans(k), input_precision="ieee"), scale_hi, scale_lo, IS_F64)
    p = tl.exp(s - lse[:, None])
    p = tl.where(tok[None, :], p, 0.0)
    dv = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision="ieee")
    dp = tl.dot(do, tl.trans(v), input_precision="ieee")
    ds = (p * (dp - delta[:, None])).to(q.dtype)
    dq = _scaled(tl.dot(ds, k, input_precision="ieee"), scale_hi, scale_lo, IS_F64)
    dk = _scaled(tl.dot(tl.trans(ds), q, input_precision="ieee"), scale_hi, scale_lo, IS_F64)

    tl.store(DQ + _tile_offsets(img, row, col, ch, sdqb, sdqc, sdqh, sdqw),
             dq.to(DQ.dtype.element_ty), mask=m2)
    tl.store(DK + _tile_offsets(img, row, col, ch, sdkb, sdkc, sdkh, sdkw),
             dk.to(DK.dtype.element_ty), mask=m2)
    tl.store(DV + _tile_offsets(img, row, col, ch, sdvb, sdvc, sdvh, sdvw),
             dv.to(DV.dtype.element_ty), mask=m2)
    if HAS_KPAD:
        pad_key = tok & (in_map == 0)
        dkp = tl.sum(tl.where(pad_key[:, None], dk, 0.0), 0)
        tl.store(DKPAD + pid_w.to(tl.int64) * C + ch, dkp.to(DKPAD.dtype.element_ty), mask=cmask)


# ----- launch helpers ------------------------------------------------------------------------
def window_geometry(H, W, window_size):
    """(n1, n2, BLOCK_L): windows along H and W, token lanes per program."""
    n1 = (H + window_size - 1) // window_size
    n2 = (W + window_size - 1) // window_size
    return n1, n2, max(16, triton.next_power_of_2(window_size * window_size))


def lse_shape(q, head_dim, window_size):
    B, C, H, W = q.shape
    n1, n2, block_l = window_geometry(H, W, window_size)
    return (B * n1 * n2, C // head_dim, block_l)


def _meta(q, head_dim, window_size, scale, has_kpad):
    B, C, H, W = q.shape
    n1, n2, block_l = window_geometry(H, W, window_size)
    scale_hi = float(torch.tensor(scale, dtype=torch.float32))
    meta = dict(D=head_dim, WS=window_size, BLOCK_L=block_l,
                BLOCK_D=max(16, triton.next_power_of_2(head_dim)), HAS_KPAD=has_kpad,
                UPCAST=q.dtype == torch.bfloat16 and interpreted(),
                IS_F64=q.dtype == torch.float64, num_warps=4)
    return (B * n1 * n2, C // head_dim), (H, W, n1, n2), (scale_hi, scale - scale_hi), meta


def window_attention_fwd(q, k, v, k_pad, head_dim, window_size, scale):
    """(out, lse): out like ``v`` (same strides when v is dense), lse (B*n1*n2, heads, BLOCK_L)."""
    grid, geo, sc, meta = _meta(q, head_dim, window_size, scale, k_pad is not None)
    out = torch.empty_like(v)
    lse = torch.empty(lse_shape(q, head_dim, window_size), dtype=acc_dtype(q.dtype),
                      device=q.device)
    kp = k_pad if k_pad is not None else q
    skp = k_pad.stride(0) if k_pad is not None else 0
    _window_attention_fwd[grid](
        q, k, v, kp, out, lse, *q.stride(), *k.stride(), *v.stride(), *out.stride(), skp,
        *geo, *sc, **meta)
    return out, lse


def window_attention_bwd(grad_out, q, k, v, k_pad, out, lse, head_dim, window_size, scale):
    """(dq, dk, dv, dk_pad); dk_pad is zeros when k_pad is None."""
    grid, geo, sc, meta = _meta(q, head_dim, window_size, scale, k_pad is not None)
    C = q.shape[1]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if k_pad is not None:
        partial = torch.empty((grid[0], C), dtype=acc_dtype(q.dtype), device=q.device)
        kp, skp = k_pad, k_pad.stride(0)
    else:
        partial, kp, skp = q, q, 0  # unused (HAS_KPAD=False)
    _window_attention_bwd[grid](
        q, k, v, kp, out, grad_out, lse, dq, dk, dv, partial,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), skp,
        *grad_out.stride(), *dq.stride(), *dk.stride(), *dv.stride(),
        *geo, C, *sc, **meta)
    if k_pad is not None:
        dk_pad = partial.sum(0).to(q.dtype)
    else:
        dk_pad = torch.zeros((C,), dtype=q.dtype, device=q.device)
    return dq, dk, dv, dk_pad


# ----- the torch.library custom op and its autograd ---------------------------------------
# custom_op (not triton_op): the op is opaque to tracing and its fake functions are plain
# Python, so opcheck and torch.compile(fullgraph=True) work on CPU (interpreter) and GPU alike.
from typing import Optional, Tuple  # noqa: E402


@torch.library.custom_op("emo_kernels::window_attention_triton", mutates_args=())
def _wa_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               k_pad: Optional[torch.Tensor], head_dim: int, window_size: int,
               scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    return window_attention_fwd(q, k, v, k_pad, head_dim, window_size, scale)


@_wa_triton.register_fake
def _(q, k, v, k_pad, head_dim, window_size, scale):
    lse = q.new_empty(lse_shape(q, head_dim, window_size), dtype=acc_dtype(q.dtype))
    return torch.empty_like(v), lse


@torch.library.custom_op("emo_kernels::window_attention_triton_backward", mutates_args=())
def _wa_triton_bwd(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                   v: torch.Tensor, k_pad: Optional[torch.Tensor], out: torch.Tensor,
                   lse: torch.Tensor, head_dim: int, window_size: int, scale: float
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return window_attention_bwd(grad_out, q, k, v, k_pad, out, lse, head_dim, window_size,
                                scale)


@_wa_triton_bwd.register_fake
def _(grad_out, q, k, v, k_pad, out, lse, head_dim, window_size, scale):
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v),
            q.new_empty((q.shape[1],)))


def _setup_context(ctx, inputs, output):
    q, k, v, k_pad, head_dim, window_size, scale = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, k_pad, out, lse)
    ctx.has_kpad = k_pad is not None
    ctx.args = (head_dim, window_size, scale)


def _backward(ctx, grad_out, _grad_lse):
    q, k, v, k_pad, out, lse = ctx.saved_tensors
    dq, dk, dv, dk_pad = _wa_triton_bwd(grad_out, q, k, v, k_pad, out, lse, *ctx.args)
    return dq, dk, dv, (dk_pad if ctx.has_kpad else None), None, None, None


_wa_triton.register_autograd(_backward, setup_context=_setup_context)


def window_attention_triton(q, k, v, k_pad=None, *, head_dim, window_size=7, scale=None):
    """The triton backend of ``window_attention`` (forward and backward kernels)."""
    scale = head_dim ** -0.5 if scale is None else float(scale)
    return torch.ops.emo_kernels.window_attention_triton(
        q, k, v, k_pad, head_dim, window_size, scale)[0]
