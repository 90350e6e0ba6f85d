"""cuda backend of ``window_attention``: the csrc/cuda/window_attention.cu kernels.

Forward: one kernel per partition, online softmax over the window's keys, saves the
log-sum-exp. Backward: wa_bwd recomputes the probabilities (dq per query, then dk/dv per key);
the gradients of k_pad and v_pad are the sums of the padded keys' gradients. q, k, v may have
any strides. EMOv2's forms: the contiguous partition (``close``), value heads wider than the
q/k heads (up to 128 channels), padded values ``v_pad``; the hybrid form is the strided and the
contiguous call summed (each partition's output kept for its backward).
"""
import torch

from ._common import contig, device_reason, ops

MAX_HEAD_DIM = 64
MAX_VALUE_DIM = 128
PASSES = {"remote": (0,), "close": (1,), "hybrid": (0, 1)}  # the kernels' close flag per call


def can_run_window_attention(q, k, v, k_pad=None, *, head_dim, window_size=7, scale=None,
                             v_pad=None, partition="remote"):
    if head_dim > MAX_HEAD_DIM:
        return f"the CUDA kernels support head_dim <= {MAX_HEAD_DIM}, got {head_dim}"
    dv = v.shape[1] // (q.shape[1] // head_dim)
    if dv > MAX_VALUE_DIM:
        return f"the CUDA kernels support value heads of <= {MAX_VALUE_DIM} channels, got {dv}"
    return device_reason(q, k, v, k_pad, v_pad)


class _WindowAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, k_pad, v_pad, head_dim, window_size, scale, partition, emulate):
        k_pad, v_pad = contig(k_pad), contig(v_pad)
        runs = [ops(emulate).wa_fwd(q, k, v, k_pad, v_pad, head_dim, window_size, scale, close)
                for close in PASSES[partition]]
        ctx.save_for_backward(q, k, v, k_pad, v_pad, *(t for run in runs for t in run))
        ctx.cfg = (head_dim, window_size, scale, partition, emulate)
        out = runs[0][0]
        for o, _ in runs[1:]:
            out = out + o
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gout):
        q, k, v, k_pad, v_pad, *runs = ctx.saved_tensors
        head_dim, ws, scale, partition, emulate = ctx.cfg
        gout = gout.contiguous()
        grads = None
        for i, close in enumerate(PASSES[partition]):
            out, lse = runs[2 * i], runs[2 * i + 1]
            g = ops(emulate).wa_bwd(q, k, v, k_pad, v_pad, out, gout, lse, head_dim, ws, scale,
                                    close)
            grads = g if grads is None else [a + b for a, b in zip(grads, g)]
        dq, dk, dv, dkp, dvp = grads
        padded = q.shape[2] % ws or q.shape[3] % ws  # without padding the pads are unused
        return (dq, dk, dv, dkp if k_pad is not None and padded else None,
                dvp if v_pad is not None and padded else None, None, None, None, None, None)


def window_attention_cuda(q, k, v, k_pad=None, *, head_dim, window_size=7, scale=None,
                          v_pad=None, partition="remote", emulate=False):
    """Same contract as emo_kernels.window_attention (validated there). emulate=True runs the
    kernels' element functions on CPU tensors (testing only)."""
    scale = head_dim ** -0.5 if scale is None else float(scale)
    return _WindowAttention.apply(q, k, v, k_pad, v_pad, head_dim, window_size, scale,
                                  partition, emulate)
