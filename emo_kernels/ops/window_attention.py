"""Public op ``window_attention``: EMO's strided-window multi-head attention.

    out = crop(unpartition(softmax(q k^T * scale) v))   per head, per strided window

Arguments
    q, k, v  (B, C, H, W), same dtype/device, any strides (q and k may be channel slices of
             one (B, 2C, H, W) qk tensor). C = heads * head_dim.
    k_pad    (C,) or None (zeros): the key vector of a padded pixel -- the qk conv's bias
             for the k half, since the official code runs that conv on the zero-padded map.
             Padded pixels are unmasked keys with zero values.
    head_dim channels per head; window_size: 7 in EMO; scale defaults to head_dim ** -0.5.
Windows: the map is padded right/bottom to Hp, Wp (multiples of ws), n1 = Hp/ws,
n2 = Wp/ws; token (i, j) of window (a, b) is pixel (i*n1 + a, j*n2 + b).
Returns (B, C, H, W).

Backends: ``torch`` (the reference), ``triton`` (emo_kernels/triton/window_attention.py, the
custom op ``emo_kernels::window_attention_triton`` with a Triton backward: CUDA tensors, or
CPU tensors under TRITON_INTERPRET=1 for tests; head_dim <= 64, window_size <= 8).

Memory traffic: the reference writes the padded copy, two window/head-order copies of q, k
and v, the (ws^2 x ws^2) scores and probabilities per window and head, and two copies of the
output; a fused kernel reads q, k and v once and writes the output once: 4*B*C*H*W elements.
"""
from typing import Optional, Tuple

import torch

from .. import backends, cpu
from ..reference import window_attention_ref
from ._checks import check_channels, check_int, check_number, check_tensor

OP = "window_attention"


def _validate(q, k, v, k_pad, head_dim, window_size, scale=None):
    check_tensor("q", q, dim=4)
    check_tensor("k", k, shape=q.shape, like=q)
    check_tensor("v", v, shape=q.shape, like=q)
    C = q.shape[1]
    check_channels("q", C)
    check_tensor("k_pad", k_pad, shape=(C,), like=q, optional=True)
    check_head_dim(head_dim, C)
    check_int("window_size", window_size, min=1)
    check_number("scale", scale, optional=True)
    if q.shape[2] < 1 or q.shape[3] < 1:
        raise ValueError(f"q must have a non-empty spatial map, got {tuple(q.shape)}")


def check_head_dim(head_dim, C):
    check_int("head_dim", head_dim, min=1)
    if C % head_dim:
        raise ValueError(f"head_dim must divide the channels C={C}, got {head_dim}")


def window_attention(q, k, v, k_pad=None, *, head_dim, window_size=7, scale=None):
    _validate(q, k, v, k_pad, head_dim, window_size, scale)
    kwargs = dict(head_dim=head_dim, window_size=window_size, scale=scale)
    fn = backends.resolve(OP, q, k, v, k_pad, **kwargs)
    return fn(q, k, v, k_pad, **kwargs)


backends.register(OP, "torch", window_attention_ref)


# ----- triton backend: torch.library custom op + autograd -----------------------------------
# custom_op (not triton_op): the op is opaque to tracing and its fake functions are plain
# Python, so opcheck and torch.compile(fullgraph=True) work on CPU (interpreter) and GPU alike.
try:
    from ..triton import window_attention as _tk
except ImportError as e:  # triton missing: the backend only reports why
    _tk, _TRITON_ERROR = None, f"triton is not importable ({e})"


def _can_run_triton(q, k, v, k_pad=None, *, head_dim, window_size=7, scale=None):
    if _tk is None:
        return _TRITON_ERROR
    if q.device.type != "cuda" and not backends.triton_interpreted():
        return (f"tensors are on {q.device.type}; the Triton kernels need CUDA tensors "
                "(or TRITON_INTERPRET=1, the interpreter, for tests)")
    if head_dim > _tk.MAX_HEAD_DIM:
        return f"head_dim={head_dim} > {_tk.MAX_HEAD_DIM} (one head's channels stay on chip)"
    if window_size * window_size > _tk.MAX_WINDOW_TOKENS:
        return (f"window_size={window_size}: {window_size ** 2} tokens > "
                f"{_tk.MAX_WINDOW_TOKENS} (a whole window stays on chip)")
    return None


if _tk is not None:
    @torch.library.custom_op("emo_kernels::window_attention_triton", mutates_args=())
    def _wa_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   k_pad: Optional[torch.Tensor], head_dim: int, window_size: int,
                   scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
        return _tk.window_attention_fwd(q, k, v, k_pad, head_dim, window_size, scale)

    @_wa_triton.register_fake
    def _(q, k, v, k_pad, head_dim, window_size, scale):
        lse = q.new_empty(_tk.lse_shape(q, head_dim, window_size), dtype=_tk.acc_dtype(q.dtype))
        return torch.empty_like(v), lse

    @torch.library.custom_op("emo_kernels::window_attention_triton_backward", mutates_args=())
    def _wa_triton_bwd(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                       v: torch.Tensor, k_pad: Optional[torch.Tensor], out: torch.Tensor,
                       lse: torch.Tensor, head_dim: int, window_size: int, scale: float
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return _tk.window_attention_bwd(grad_out, q, k, v, k_pad, out, lse, head_dim,
                                        window_size, scale)

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


backends.register(OP, "triton", window_attention_triton, _can_run_triton, gpu_kernel=True)


# ---- cuda backend (csrc/window_attention.cu via emo_kernels.cuda) --------------------------
# A GPU kernel: auto picks it only where a committed GPU measurement shows it faster
# (emo_kernels.measured); today there is none, so auto never picks it. can_run refuses
# CPU tensors, head_dim > 64 and an unbuilt extension (with the build hint).
from .. import cuda as _cuda_backend  # noqa: E402

backends.register(OP, "cuda", _cuda_backend.window_attention_cuda,
                  _cuda_backend.can_run_window_attention, gpu_kernel=True)


# ----- cpu backend (csrc/cpu/, inference only; emo_kernels/cpu.py)
backends.register(OP, "cpu", cpu.window_attention_cpu, cpu.window_attention_can_run)
