"""cuda backend of ``window_attention``: the csrc/cuda/window_attention.cu kernels.

Forward: one kernel, online softmax over the window's keys, saves the log-sum-exp.
Backward: wa_bwd recomputes the probabilities (dq per query, then dk/dv per key); the
gradient of k_pad is the sum of the padded keys' gradients. q, k, v may have any strides.
"""
import torch

from ...ops.window_attention import emo2_form
from ._common import contig, device_reason, ops

MAX_HEAD_DIM = 64


def can_run_window_attention(q, k, v, k_pad=None, *, head_dim, window_size=7, scale=None,
                             **emo2):
    reason = emo2_form(q, v, **emo2)
    if reason is not None:
        return reason
    if head_dim > MAX_HEAD_DIM:
        return f"the CUDA kernels support head_dim <= {MAX_HEAD_DIM}, got {head_dim}"
    return device_reason(q, k, v, k_pad)


class _WindowAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, k_pad, head_dim, window_size, scale, emulate):
        k_pad = contig(k_pad)
        out, lse = ops(emulate).wa_fwd(q, k, v, k_pad, head_dim, window_size, scale)
        ctx.save_for_backward(q, k, v, k_pad, out, lse)
        ctx.cfg = (head_dim, window_size, scale, emulate)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gout):
        q, k, v, k_pad, out, lse = ctx.saved_tensors
        head_dim, ws, scale, emulate = ctx.cfg
        dq, dk, dv, dkp = ops(emulate).wa_bwd(q, k, v, k_pad, out, gout.contiguous(), lse,
                                              head_dim, ws, scale)
        padded = q.shape[2] % ws or q.shape[3] % ws  # without padding k_pad is unused
        return dq, dk, dv, (dkp if k_pad is not None and padded else None), None, None, None, None


def window_attention_cuda(q, k, v, k_pad=None, *, head_dim, window_size=7, scale=None,
                          emulate=False):
    """Same contract as emo_kernels.window_attention (validated there). emulate=True runs the
    kernels' element functions on CPU tensors (testing only)."""
    scale = head_dim ** -0.5 if scale is None else float(scale)
    return _WindowAttention.apply(q, k, v, k_pad, head_dim, window_size, scale, emulate)
