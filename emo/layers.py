"""Small layers of EMO, named so that the official checkpoint keys load with strict=True."""
import torch
import torch.nn as nn

from emo_kernels.distributed import batch_norm_sync
from emo_kernels.formulas import (bn_scale_shift, dw_padding, fold_affine,
                                  fold_affine_into_next_1x1)

EPS = 1e-6  # every BatchNorm and LayerNorm in EMO


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an NCHW map (keys: norm.weight, norm.bias)."""

    def __init__(self, dim, eps=EPS):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def make_norm(kind, dim):
    if kind == "bn":
        return nn.BatchNorm2d(dim, eps=EPS)
    if kind == "ln":
        return LayerNorm2d(dim)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


def make_act(kind):
    return {"silu": nn.SiLU(), "gelu": nn.GELU(), "none": nn.Identity()}[kind]


class ConvNormAct(nn.Module):
    """conv -> norm -> act, padding ceil((k - stride) / 2) (keys: conv.*, norm.*)."""

    def __init__(self, dim_in, dim_out, kernel_size, stride=1, groups=1, bias=False,
                 norm="none", act="none"):
        super().__init__()
        padding = dw_padding(kernel_size, stride)
        self.conv = nn.Conv2d(dim_in, dim_out, kernel_size, stride, padding, groups=groups,
                              bias=bias)
        self.norm = make_norm(norm, dim_out)
        self.act = make_act(act)
        self.act_name = act

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))


class SE(nn.Module):
    """Squeeze-excite: mean -> 1x1 (bias) -> act -> 1x1 (bias) -> sigmoid -> multiply."""

    def __init__(self, dim, rd_dim, act="silu"):
        super().__init__()
        self.conv_reduce = nn.Conv2d(dim, rd_dim, 1, bias=True)
        self.act = make_act(act)
        self.act_name = act
        self.conv_expand = nn.Conv2d(rd_dim, dim, 1, bias=True)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        s = self.conv_expand(self.act(self.conv_reduce(s)))
        return x * torch.sigmoid(s)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval or when p == 0)."""

    def __init__(self, p=0.0):
        super().__init__()
        self.p = p

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self):
        return f"p={self.p}"


class LayerScale2d(nn.Module):
    """EMOv2's LayerScale: x * gamma, gamma of shape (1, C, 1, 1) (key: ls.gamma)."""

    def __init__(self, dim, init_values=1e-6):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(1, dim, 1, 1))

    def forward(self, x):
        return x * self.gamma


class StemConv(nn.Module):
    """The official MSPatchEmb with one dilation: convs.0 = Sequential(conv3x3 s2 (bias), BN)."""

    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.convs = nn.ModuleList([nn.Sequential(
            nn.Conv2d(dim_in, dim_out, 3, 2, 1, bias=True), nn.BatchNorm2d(dim_out, eps=EPS))])

    def forward(self, x):
        return self.convs[0](x)


# ----- norms: what kind a norm module is, and how the fused path may fold or apply it ---------
# The fused iRMB folds a norm only when its output is a fixed per-channel affine map of its
# input (``norm_is_affine``): nn.Identity, an eval-mode BatchNorm that uses its running
# statistics, or a frozen BatchNorm (torchvision / timm ``FrozenBatchNorm2d``, in train and
# eval alike). A BatchNorm that uses batch statistics goes to the fused op as arguments
# (``batch_norm_args``); any other norm is called as a module, or, where the fused op would need
# to apply it (the depthwise norm), the block runs the reference computation.

IDENTITY, BATCHNORM, FROZEN_BN, LAYERNORM, UNKNOWN = (
    "identity", "batchnorm", "frozen_bn", "layernorm", "unknown")

_FROZEN_BN_NAMES = ("FrozenBatchNorm2d", "FrozenBatchNormAct2d")
_BN_BUFFERS = ("weight", "bias", "running_mean", "running_var")


def _is_frozen_bn(m):
    """torchvision's / timm's (/ detectron2's) FrozenBatchNorm2d, and timm's
    FrozenBatchNormAct2d without activation or dropout: ``x * scale + shift`` from four buffers
    and ``eps``, the same in train and eval. Recognised by class name and layout (the packages
    are not imported): a class with another name is an unknown norm (run as a module)."""
    if type(m).__name__ not in _FROZEN_BN_NAMES or not isinstance(getattr(m, "eps", None), float):
        return False
    if any(m._buffers.get(n) is None for n in _BN_BUFFERS) or m._parameters:
        return False
    return all(type(c) is nn.Identity for c in m.children())


def _sync_bn_syncs(m):
    """SyncBatchNorm in training inside an initialised process group: its batch statistics are
    the group's (the fused ops take the group as ``bn_process_group``)."""
    return (isinstance(m, (nn.SyncBatchNorm, SyncBatchNorm)) and m.training
            and torch.distributed.is_available() and torch.distributed.is_initialized())


def sync_bn_group(m):
    """The process group whose batch a syncing SyncBatchNorm normalises over (its own, or the
    default group, as ``nn.SyncBatchNorm`` picks), or None when it does not synchronise."""
    if not _sync_bn_syncs(m):
        return None
    return m.process_group if m.process_group is not None else torch.distributed.group.WORLD


class SyncBatchNorm(nn.BatchNorm2d):
    """A BatchNorm2d whose batch statistics in training, inside an initialised process group,
    are those of the whole group (``process_group``, or the default group), on any device and
    any torch.distributed backend: PyTorch's ``nn.SyncBatchNorm`` takes accelerator tensors
    only, and DistributedDataParallel refuses it on CPU. Computed by
    ``emo_kernels.distributed.batch_norm_sync`` (torch ops; its backward all-reduces the
    gradient sums as ``nn.SyncBatchNorm``'s does); outside a process group or in eval it is
    ``nn.BatchNorm2d``. Same state dict. Made by ``convert_sync_batchnorm``; on CUDA PyTorch's
    own conversion serves as well (the fused path treats both alike)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, process_group=None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.process_group = process_group

    def forward(self, x):
        if not _sync_bn_syncs(self):
            return super().forward(x)
        self._check_input_dim(x)
        args = batch_norm_args(self)
        return batch_norm_sync(x, args["running_mean"], args["running_var"], self.weight,
                               self.bias, args["momentum"], self.eps, sync_bn_group(self))


def convert_sync_batchnorm(module, process_group=None):
    """Like ``nn.SyncBatchNorm.convert_sync_batchnorm``, with this package's ``SyncBatchNorm``
    (which also runs on CPU tensors, e.g. DistributedDataParallel over gloo): every
    ``nn.BatchNorm2d`` (or ``nn.SyncBatchNorm``) of ``module`` becomes one, weights, buffers and
    ``requires_grad`` kept. Under either conversion a fused EMO normalises its depthwise
    BatchNorms inside the fused op with the group's statistics. Returns the converted module
    (``module`` itself, changed in place, when it is not a BatchNorm)."""
    if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)) and not isinstance(
            module, SyncBatchNorm) and type(module).forward in (nn.BatchNorm2d.forward,
                                                                nn.SyncBatchNorm.forward):
        group = process_group if process_group is not None else getattr(
            module, "process_group", None)  # (an nn.SyncBatchNorm keeps its own group)
        out = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats, group)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
        return out
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, process_group))
    return module


def norm_kind(m):
    """Classify a norm module of an EMO block for the fused path:

    * ``identity``  -- nn.Identity (e.g. after ``reparameterize()``);
    * ``batchnorm`` -- nn.BatchNorm2d, nn.SyncBatchNorm (this package's too), or a subclass
      that keeps their forward (affine or not, with or without running statistics, any
      momentum); a SyncBatchNorm that synchronises (training with torch.distributed
      initialised) passes its process group to the ops (``batch_norm_args``);
    * ``frozen_bn`` -- a frozen BatchNorm (see ``_is_frozen_bn``);
    * ``layernorm`` -- EMO's LayerNorm2d;
    * ``unknown``   -- anything else, and any norm with forward hooks (they must fire): the
      fused path calls it as a module or runs the reference computation of its block.
    """
    if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks:
        return UNKNOWN
    t = type(m)
    if t is nn.Identity:
        return IDENTITY
    if isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        if t.forward not in (nn.BatchNorm2d.forward, nn.SyncBatchNorm.forward,
                             SyncBatchNorm.forward):
            return UNKNOWN  # e.g. timm's BatchNormAct2d (an activation inside)
        return BATCHNORM
    if _is_frozen_bn(m):
        return FROZEN_BN
    if t is LayerNorm2d and type(m.norm) is nn.LayerNorm and not (
            m.norm._forward_hooks or m.norm._forward_pre_hooks):
        return LAYERNORM
    return UNKNOWN


def bn_uses_batch_stats(bn):
    """What ``_BatchNorm.forward`` decides: batch statistics in training, and in eval when
    there are no running statistics."""
    return bn.training or (bn.running_mean is None and bn.running_var is None)


def norm_is_affine(m):
    """True when ``m(x)`` is now a fixed per-channel ``x * scale + shift`` (foldable into an
    adjacent conv): identity, frozen BN, BatchNorm in eval with running statistics."""
    kind = norm_kind(m)
    return kind in (IDENTITY, FROZEN_BN) or kind == BATCHNORM and not bn_uses_batch_stats(m)


def norm_scale_shift(m):
    """(scale, shift) of a BatchNorm/frozen BN's eval map ``x * scale + shift`` (through
    autograd: gradients reach the BN weight and bias where they are parameters). For
    ``affine=False`` the weight is 1 and the bias 0."""
    return bn_scale_shift(m.weight, m.bias, m.running_mean, m.running_var, m.eps)


def fold_bn(weight, bias, bn):
    """Fold a following norm (``norm_is_affine``) into a conv's (weight, bias): returns new
    tensors (the same ones for an identity)."""
    if norm_kind(bn) == IDENTITY:
        return weight, bias
    return fold_affine(weight, bias, *norm_scale_shift(bn))


def fold_bn_into_next_1x1(bn, weight, bias):
    """Fold a preceding norm (``norm_is_affine``) into a 1x1 conv:
    W (s x + t) + b = (W s) x + (W t + b)."""
    if norm_kind(bn) == IDENTITY:
        return weight, bias
    return fold_affine_into_next_1x1(weight, bias, *norm_scale_shift(bn))


def batch_norm_args(bn):
    """The ``F.batch_norm`` arguments ``bn.forward`` would use now, as keyword arguments of the
    emo_kernels ops (bn_weight, bn_bias, running_mean, running_var, bn_training, momentum, eps),
    for a ``batchnorm``-kind norm, plus ``bn_process_group`` for a SyncBatchNorm that
    synchronises (``sync_bn_group``). Like ``bn.forward`` it counts the batch
    (``num_batches_tracked``) in training: call it once per forward."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            momentum = 1.0 / float(bn.num_batches_tracked)
    use_running = not bn.training or bn.track_running_stats
    args = dict(bn_weight=bn.weight, bn_bias=bn.bias,
                running_mean=bn.running_mean if use_running else None,
                running_var=bn.running_var if use_running else None,
                bn_training=bn_uses_batch_stats(bn), momentum=momentum, eps=bn.eps)
    group = sync_bn_group(bn)
    if group is not None:
        args["bn_process_group"] = group
    return args


# ----- tracers ---------------------------------------------------------------------------------
def is_tracing(x=None):
    """True when the computation is being recorded for export rather than just run:
    torch.export (Dynamo or not), torch.jit.trace, the ONNX exporters, torch.fx symbolic
    tracing, a TorchDispatchMode (fake tensors, proxy tracing, FlopCounterMode), or an input
    that is not a plain tensor (a Proxy, a FakeTensor, a tensor subclass). The fused model runs
    its reference computation then: an exported graph must be the portable ``fused=False``
    graph, not one holding this package's kernels. ``torch.compile`` (Dynamo, not exporting) is
    not one of them: the ops are ``torch.library`` custom ops with fake functions, which it keeps
    opaque in its graph and runs."""
    if torch.compiler.is_compiling():  # first: Dynamo folds it and skips the rest
        return torch.compiler.is_exporting()
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return True
    from torch.fx import _symbolic_trace as fx_trace
    from torch.utils._python_dispatch import _get_current_dispatch_mode
    fx_tracing = getattr(fx_trace, "is_fx_symbolic_tracing", fx_trace.is_fx_tracing)
    if fx_tracing() or _get_current_dispatch_mode() is not None:
        return True
    return x is not None and type(x) not in (torch.Tensor, nn.Parameter)
