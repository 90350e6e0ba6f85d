"""Small layers of EMO, named so that the official checkpoint keys load with strict=True."""
import torch
import torch.nn as nn
import torch.nn.functional as F

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
        padding = -(-(kernel_size - stride) // 2)
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


class StemConv(nn.Module):
    """The official MSPatchEmb with one dilation: convs.0 = Sequential(conv3x3 s2 (bias), BN)."""

    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.convs = nn.ModuleList([nn.Sequential(
            nn.Conv2d(dim_in, dim_out, 3, 2, 1, bias=True), nn.BatchNorm2d(dim_out, eps=EPS))])

    def forward(self, x):
        return self.convs[0](x)


def fold_bn(weight, bias, bn):
    """Fold a following eval BatchNorm into a conv's (weight, bias): returns new tensors."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    w = weight * scale.reshape(shape)
    b = bn.bias - bn.running_mean * scale
    if bias is not None:
        b = b + bias * scale
    return w, b


def fold_bn_into_next_1x1(bn, weight, bias):
    """Fold a preceding eval BatchNorm into a 1x1 conv: W (s x + t) + b = (W s) x + (W t + b)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    w2 = weight.reshape(weight.shape[0], weight.shape[1])
    b = w2 @ shift
    if bias is not None:
        b = b + bias
    return (w2 * scale[None, :]).reshape(weight.shape), b
