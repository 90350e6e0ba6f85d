"""BatchNorm statistics across processes (SyncBatchNorm) for the fused ops.

A BatchNorm in training normalises with the mean and variance of its batch. Under
``torch.nn.SyncBatchNorm`` that batch is the union of every process's batch in a process group.
The fused ops take the group as ``bn_process_group`` and all-reduce, at the one point where a
BatchNorm's statistics are complete and nothing has been normalised yet:

* forward: per-channel (count, mean, M2) of the local batch -> the group's (N, mean, M2)
  (``merge_moments``: two all-reduces of (Cmid,) vectors and one of the count);
* backward: the per-channel sums the input gradient needs (sum of the incoming gradient and of
  its product with the normalised input) over the group (``all_reduce_sum``), while the
  BatchNorm's weight and bias gradients stay local sums, as ``nn.SyncBatchNorm``'s backward
  leaves them: DistributedDataParallel averages parameter gradients itself.

``batch_norm_sync`` is the reference of that computation in torch ops (any device, CPU
included, autograd through an all-reduce whose backward is the same all-reduce); the Triton backend
does the same between its kernels. Running statistics are updated from the group's statistics
(unbiased variance over the group's N), as ``nn.SyncBatchNorm`` updates them.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from .formulas import update_running_stats

_GROUPS = {}


def group_world_size(group) -> int:
    """The number of processes in ``group``; 1 when there is nothing to synchronise with."""
    if group is None:
        return 1
    return torch.distributed.get_world_size(group)


def bn_count_error(got):
    """The error ``F.batch_norm`` raises in training with fewer than 2 values per channel."""
    return ValueError(f"Expected more than 1 value per channel when training, got {got}")


def check_group(group):
    """Validate a ``bn_process_group`` argument: None, or a process group of an initialised
    ``torch.distributed``."""
    if group is None:
        return
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("bn_process_group was given but torch.distributed is not initialised "
                         "(call torch.distributed.init_process_group first)")
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"bn_process_group must be a torch.distributed.ProcessGroup or None, "
                        f"got {type(group).__name__}")


def group_key(group) -> str:
    """A string naming ``group`` in this process (custom ops take no ProcessGroup arguments):
    '' for None or a group of one process, else a key ``resolve_group`` maps back."""
    if group_world_size(group) == 1:
        return ""
    key = f"pg{id(group)}"
    _GROUPS[key] = group
    return key


def resolve_group(key: str):
    if not key:
        return None
    try:
        return _GROUPS[key]
    except KeyError:
        raise RuntimeError(f"unknown process group key {key!r} (keys name groups of this process "
                           f"only)") from None


def all_reduce_sum(t: torch.Tensor, group) -> torch.Tensor:
    """Sum of ``t`` over the group, out of place and without autograd (identity for None)."""
    if group is None:
        return t
    out = t.detach().clone()
    torch.distributed.all_reduce(out, group=group)
    return out


class _AllReduceSum(torch.autograd.Function):
    """Sum over the group with autograd: the gradient of every process's input is the sum of
    the gradients of every process's output (the backward is the same all-reduce)."""

    @staticmethod
    def forward(ctx, t, group):
        ctx.group = group
        return all_reduce_sum(t, group)

    @staticmethod
    def backward(ctx, g):
        return all_reduce_sum(g.contiguous(), ctx.group), None


def merge_moments(n, mean, m2, group):
    """The group's per-channel (N, mean, M2) from this process's (n, mean, M2) (Chan's merge):
    N = sum n_i, mean = sum n_i mean_i / N, M2 = sum (M2_i + n_i (mean_i - mean)^2). ``n`` is a
    number or a 0-d tensor; the results are tensors of ``mean``'s dtype and device."""
    n = torch.as_tensor(n, dtype=mean.dtype, device=mean.device)
    if group is None:
        return n, mean, m2
    N = all_reduce_sum(n, group)
    gmean = all_reduce_sum(n * mean, group) / N
    gm2 = all_reduce_sum(m2 + n * (mean - gmean) ** 2, group)
    return N, gmean, gm2


def batch_norm_sync(p, running_mean, running_var, weight, bias, momentum, eps,
                    group: Optional[torch.distributed.ProcessGroup]):
    """``F.batch_norm(p, ..., training=True)`` with the statistics of the whole process group
    (the reference of the fused ops' SyncBatchNorm). Two passes over ``p`` (the mean, then the
    squared deviations), each all-reduced with autograd: the backward all-reduces the gradient
    sums exactly as ``nn.SyncBatchNorm`` does. fp16/bf16 ``p`` is normalised in float32 and
    cast back, as ``F.batch_norm`` computes."""
    if group_world_size(group) == 1:
        return F.batch_norm(p, running_mean, running_var, weight, bias, training=True,
                            momentum=momentum, eps=eps)
    dt = p.dtype
    x = p.float() if dt in (torch.float16, torch.bfloat16) else p
    dims = [0] + list(range(2, x.dim()))
    shape = [1, -1] + [1] * (x.dim() - 2)
    n = torch.tensor(float(x.numel() // x.shape[1]), dtype=x.dtype, device=x.device)
    N = all_reduce_sum(n, group)
    if float(N) < 2:
        raise bn_count_error(f"{int(N)} in the process group")
    mean = _AllReduceSum.apply(x.sum(dims), group) / N
    d = x - mean.view(shape)
    var = _AllReduceSum.apply((d * d).sum(dims), group) / N
    y = d * torch.rsqrt(var + eps).view(shape)
    if weight is not None:
        y = y * weight.to(x.dtype).view(shape)
    if bias is not None:
        y = y + bias.to(x.dtype).view(shape)
    if running_mean is not None:
        update_running_stats(running_mean, running_var, mean.detach(), var.detach(), N, momentum)
    return y.to(dt)
