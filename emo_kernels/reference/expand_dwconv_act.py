"""Pure-PyTorch reference of ``expand_dwconv_act``: the CPU fallback and the test oracle.

Computes, for an NCHW input ``x``::

    v = act(conv1x1(x, w_exp) + b_exp)        # or v = x when w_exp is None (stem block)
    p = dwconv_kxk(v, w_dw, stride, padding=ceil((k - stride) / 2)) + b_dw
    p = batch_norm(p, ...)                     # only when bn_weight is given
    d = silu(p)
    z = v + d  if skip else d

Eager PyTorch reads and writes every intermediate (v, p, the BN output, d) to memory;
this is the composition the fused kernels must reproduce.
"""
import torch.nn.functional as F

from ..distributed import batch_norm_sync
from ..formulas import dw_padding


def activation(x, act):
    if act == "silu":
        return F.silu(x)
    if act == "gelu":
        return F.gelu(x)
    if act == "none":
        return x
    raise ValueError(f"act must be 'silu', 'gelu' or 'none', got {act!r}")


def expand_dwconv_act_ref(x, w_exp, b_exp, w_dw, b_dw=None, *, act="silu", stride=1,
                          skip=False, bn_weight=None, bn_bias=None, running_mean=None,
                          running_var=None, bn_training=False, momentum=0.1, eps=1e-6,
                          bn_process_group=None):
    if w_exp is None:
        v = x
    else:
        w = w_exp if w_exp.dim() == 4 else w_exp[:, :, None, None]
        v = activation(F.conv2d(x, w, b_exp), act)
    k = w_dw.shape[-1]
    p = F.conv2d(v, w_dw, b_dw, stride=stride, padding=dw_padding(k, stride), groups=v.shape[1])
    if bn_weight is not None or running_mean is not None or bn_training:
        # mixed precision: F.batch_norm wants the affine parameters in the dtype of the running
        # statistics (fp32 beside fp16/bf16 activations); the upcast is exact
        stats = running_mean if running_mean is not None else bn_weight
        if stats is not None:
            bn_weight = None if bn_weight is None else bn_weight.to(stats.dtype)
            bn_bias = None if bn_bias is None else bn_bias.to(stats.dtype)
        if bn_training and bn_process_group is not None:  # SyncBatchNorm
            p = batch_norm_sync(p, running_mean, running_var, bn_weight, bn_bias, momentum, eps,
                                bn_process_group)
        else:
            p = F.batch_norm(p, running_mean, running_var, bn_weight, bn_bias,
                             training=bn_training, momentum=momentum, eps=eps)
    d = F.silu(p)
    return v + d if skip else d
