"""Public op ``expand_dwconv_act``: the non-attention iRMB hot path.

    v = act(conv1x1(x, w_exp) + b_exp)     (v = x when w_exp is None: the stem block)
    p = dwconv_kxk(v, w_dw, stride, padding=ceil((k - stride)/2)) + b_dw
    p = batch_norm(p)                      (only when BN parameters/stats are passed)
    z = silu(p) + v   if skip   else silu(p)

Arguments
    x        (B, Cin, H, W), fp16/bf16/fp32/fp64, any memory format.
    w_exp    (Cmid, Cin) or (Cmid, Cin, 1, 1), or None for the identity (then act='none').
    b_exp    (Cmid,) or None.
    w_dw     (Cmid, 1, k, k), k odd (kernels: 3 or 5).
    b_dw     (Cmid,) or None: the depthwise bias (eval: the folded BatchNorm shift).
    act      'silu' | 'gelu' | 'none' (exact erf GELU).
    stride   1 or 2.  skip: add v (needs stride 1).
    bn_*     optional BatchNorm applied to p, as ``F.batch_norm(p, running_mean, running_var,
             bn_weight, bn_bias, bn_training, momentum, eps)``: in training it uses batch
             statistics and updates the running stats in place, exactly like nn.BatchNorm2d.
             Their dtype: x's, or float32 with fp16/bf16 x (mixed precision, as under autocast).
    bn_process_group  a torch.distributed ProcessGroup or None: in training, the batch
             statistics are those of the union of the batches of the group's processes, as
             ``nn.SyncBatchNorm`` computes them (emo_kernels/distributed.py: the statistics and,
             in backward, the input gradient's sums are all-reduced; the BatchNorm's own
             gradients stay local). Ignored outside BatchNorm training and for a group of one.
Returns z: (B, Cmid, Ho, Wo), Ho = floor((H + 2*pad - k)/stride) + 1.

Backends (emo_kernels/backends/): ``torch`` (the reference), ``cpu`` (C++, inference, k in
{1, 3, 5, 7}), ``triton`` (fused kernels that never store v, k in {3, 5}, CUDA tensors or CPU
tensors under TRITON_INTERPRET=1; ``auto`` does not pick it on CPU), ``cuda``
(csrc/cuda/expand_dwconv_act.cu).

Memory traffic (per image, element size e): the reference reads x and writes v, reads v and
writes p, reads p / writes the BN output, reads it / writes d, reads d and v / writes z --
about e*(Cin*H*W + 6*Cmid*H*W). A fused kernel reads x and the weights and writes z:
e*(Cin*H*W + Cmid*Ho*Wo).
"""
from .. import dispatch
from ..distributed import check_group
from ..formulas import dw_out_size
from ._checks import (ACTS, bn_dtypes, check_bool, check_channels, check_choice, check_int_in,
                      check_number, check_tensor, check_weight_1x1)

OP = "expand_dwconv_act"
BN_NAMES = ("bn_weight", "bn_bias", "running_mean", "running_var")


def _validate_bn(x, cmid, bn):
    """BatchNorm parameters/statistics: (Cmid,) on x's device, each of x's dtype or, when x is
    fp16/bf16, float32 (mixed precision: nn.BatchNorm2d keeps its running statistics, and under
    autocast its parameters too, in fp32)."""
    for name, t in zip(BN_NAMES, bn):
        if t is not None:
            check_tensor(name, t, shape=(cmid,), device=x.device, dtype=bn_dtypes(x.dtype),
                         like=x)


def _validate(x, w_exp, b_exp, w_dw, b_dw, act, stride, skip, bn_weight, bn_bias,
              running_mean, running_var, bn_training, momentum=0.1, eps=1e-6,
              bn_process_group=None):
    check_tensor("x", x, dim=4)
    cin = x.shape[1]
    check_channels("x", cin)
    check_choice("act", act, ACTS)
    check_int_in("stride", stride, (1, 2))
    check_bool("skip", skip)
    check_bool("bn_training", bn_training)
    check_number("momentum", momentum)
    check_number("eps", eps)
    check_group(bn_process_group)
    if w_exp is None:
        if act != "none":
            raise ValueError(f"w_exp=None (identity expansion) needs act='none', got act={act!r}")
        if b_exp is not None:
            raise ValueError("b_exp must be None when w_exp is None")
        cmid = cin
    else:
        cmid, _ = check_weight_1x1("w_exp", w_exp, x, cols=cin)
        check_tensor("b_exp", b_exp, shape=(cmid,), like=x, optional=True)
    check_tensor("w_dw", w_dw, dim=4, like=x)
    k = w_dw.shape[-1]
    if tuple(w_dw.shape) != (cmid, 1, k, k) or k % 2 == 0:
        raise ValueError(f"w_dw must be (Cmid={cmid}, 1, k, k) with odd k, got {tuple(w_dw.shape)}")
    check_tensor("b_dw", b_dw, shape=(cmid,), like=x, optional=True)
    if skip and stride != 1:
        raise ValueError("skip=True needs stride=1 (the skip adds the expansion output)")
    _validate_bn(x, cmid, (bn_weight, bn_bias, running_mean, running_var))
    if (running_mean is None) != (running_var is None):
        raise ValueError("pass both running_mean and running_var, or neither")
    if not bn_training and (bn_weight is not None or bn_bias is not None) and running_mean is None:
        raise ValueError("BatchNorm in eval mode (bn_training=False) needs running_mean/running_var")
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"x must have a non-empty spatial map, got {tuple(x.shape)}")


def z_shape(x, w_dw, stride):
    """The shape of z (the depthwise output) for validated arguments."""
    k = w_dw.shape[-1]
    return (x.shape[0], w_dw.shape[0], dw_out_size(x.shape[2], k, stride),
            dw_out_size(x.shape[3], k, stride))


def expand_dwconv_act(x, w_exp, b_exp, w_dw, b_dw=None, *, act="silu", stride=1, skip=False,
                      bn_weight=None, bn_bias=None, running_mean=None, running_var=None,
                      bn_training=False, momentum=0.1, eps=1e-6, bn_process_group=None):
    """See the module docstring."""
    _validate(x, w_exp, b_exp, w_dw, b_dw, act, stride, skip, bn_weight, bn_bias,
              running_mean, running_var, bn_training, momentum, eps, bn_process_group)
    kwargs = dict(act=act, stride=stride, skip=skip, bn_weight=bn_weight, bn_bias=bn_bias,
                  running_mean=running_mean, running_var=running_var, bn_training=bn_training,
                  momentum=momentum, eps=eps)
    if bn_process_group is not None and bn_training:  # backends without it keep their signature
        kwargs["bn_process_group"] = bn_process_group
    fn = dispatch.resolve(OP, x, w_exp, b_exp, w_dw, b_dw, **kwargs)
    return fn(x, w_exp, b_exp, w_dw, b_dw, **kwargs)
