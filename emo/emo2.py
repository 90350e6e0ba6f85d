"""EMOv2 ("EMOv2: Pushing 5M Vision Model Frontier", zhangzjn/EMOv2) in plain PyTorch,
operation for operation equal to the official code (``model/lib_emo/emo2.py``, read at commit
582a96f; ../shared/docs/emov2-architecture.md), with the official checkpoint key layout.

Read top to bottom: the two partitions of the hybrid attention, the expansion
operators (eop 0: a 1x1 conv; eop 3: the hybrid window attention), the iiRMB, the EMOv2
network. The variant configs and factories sit beside EMO v1's in emo/model.py
(``create_model("emo2_5m")``, ``emo.emo2_5m(...)``); the model API is EMO v1's (``EMO2`` is an
``EMO``: ``forward_intermediates``, ``features_only``, ``reset_classifier``, timm's hooks).

``fused=True``: every block runs through the ``emo_kernels`` ops. A block whose expansion is
the plain 1x1 conv (every block of stages 1-2 and the first block of stages 3-4) is an EMO v1
iRMB without squeeze-excite plus LayerScale, and runs as v1's (``expand_dwconv_act`` in
training, ``irmb_inference`` in eval, LayerScale folded into the projection there). A hybrid
attention block, in training, runs the qk and v 1x1 convs (torch), ``window_attention`` in its
hybrid form (padded keys b_k, padded values act(b_v), wide value heads),
``expand_dwconv_act`` without expansion, the projection and LayerScale; in inference it is one
``irmb_inference`` call in EMOv2's form (``attn_pre=False, partition="hybrid"``). In eval with
no grad, the whole network after the stem is one prepared ``IRMBChain`` (emo/inference.py),
and ``emo.prepare_inference`` makes a frozen plan of it, as for EMO v1. A block with a replaced
part runs this reference computation (``iiRMB.fused_reason`` says why).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

import emo_kernels
from emo_kernels.reference import close_partition as _close_partition
from emo_kernels.reference import close_unpartition as _close_unpartition
from emo_kernels.reference import window_partition, window_unpartition

from .inference import cna_ok
from .layers import ConvNormAct, DropPath, LayerScale2d, make_norm
from .model import EMO, _has_fixed_stats, autocast_cast, fold_cna_norm, iRMB


# ----- the two window partitions of a (B, C, n1*ws, n2*ws) map -> (B*n1*n2, C, ws, ws) -------
# (emo_kernels.reference's partitions, in the official code's window-batch layout)
def remote_partition(x, ws):
    """'b c (h1 n1) (w1 n2) -> (b n1 n2) c h1 w1': window (i, j) holds the pixels
    (i + n1*a, j + n2*b) (strided, EMO v1's partition)."""
    return window_partition(x, ws).reshape(-1, x.shape[1], ws, ws)


def remote_unpartition(y, n1, n2):
    """The inverse of :func:`remote_partition`."""
    Bw, C, ws, _ = y.shape
    return window_unpartition(y.reshape(Bw // (n1 * n2), n1 * n2, C, ws * ws), n1, n2, ws)


def close_partition(x, ws):
    """'b c (n1 h1) (n2 w1) -> (b n1 n2) c h1 w1': contiguous ws x ws blocks (Swin-like)."""
    return _close_partition(x, ws).reshape(-1, x.shape[1], ws, ws)


def close_unpartition(y, n1, n2):
    """The inverse of :func:`close_partition`."""
    Bw, C, ws, _ = y.shape
    return _close_unpartition(y.reshape(Bw // (n1 * n2), n1 * n2, C, ws * ws), n1, n2, ws)


# ----- expansion operators ---------------------------------------------------------------------
class ExpandConv(nn.Module):
    """eop 0: act(conv1x1(x) + b), dim_in -> dim_mid (keys: net.conv.*)."""

    def __init__(self, dim_in, dim_mid, act):
        super().__init__()
        self.net = ConvNormAct(dim_in, dim_mid, 1, bias=True, act=act)

    def forward(self, x):
        return self.net(x)


class HybridWindowAttention(nn.Module):
    """eop 3 (``EW_MHSA_Hybrid``, attn_pre=False): the map zero-padded at the right and bottom
    to multiples of ``ws``; qk = conv1x1(x_pad) (bias) and v = act(conv1x1(x_pad) + b_v) on
    the PADDED map (padded pixels carry qk = b_qk and v = act(b_v)); per partition (remote,
    close) and head, softmax(q k^T * dim_head^-0.5) over the window's ws^2 tokens (padded
    tokens are unmasked keys) times v, whose heads are dim_mid / heads wide; the two results
    summed and cropped. Keys: qk.conv.*, v.conv.*."""

    def __init__(self, dim_in, dim_mid, act, head_dim, window_size):
        super().__init__()
        if dim_in % head_dim:
            raise ValueError(f"dim_in {dim_in} must be divisible by head_dim {head_dim}")
        self.head_dim = head_dim
        self.num_heads = dim_in // head_dim
        if dim_mid % self.num_heads:
            raise ValueError(f"dim_mid {dim_mid} must be divisible by the {self.num_heads} heads")
        self.window_size = window_size
        self.scale = head_dim ** -0.5
        self.qk = ConvNormAct(dim_in, dim_in * 2, 1, bias=True)
        self.v = ConvNormAct(dim_in, dim_mid, 1, bias=True, act=act)

    def _attend(self, qk, v):
        """softmax(q k^T * scale) v per window and head; qk (b, 2C, ws, ws), v (b, Cmid, ws,
        ws) -> (b, Cmid, ws, ws)."""
        b, _, ws, _ = qk.shape
        heads, d = self.num_heads, self.head_dim
        qk = qk.reshape(b, 2, heads, d, ws * ws).permute(1, 0, 2, 4, 3)
        attn = ((qk[0] @ qk[1].transpose(-2, -1)) * self.scale).softmax(dim=-1)
        vals = v.reshape(b, heads, v.shape[1] // heads, ws * ws).transpose(-1, -2)
        return (attn @ vals).transpose(-1, -2).reshape(b, v.shape[1], ws, ws)

    def forward(self, x):
        B, C, H, W = x.shape
        ws = self.window_size
        pad_r, pad_b = (ws - W % ws) % ws, (ws - H % ws) % ws
        x = F.pad(x, (0, pad_r, 0, pad_b))
        n1, n2 = (H + pad_b) // ws, (W + pad_r) // ws
        qk, v = self.qk(x), self.v(x)
        o = (remote_unpartition(self._attend(remote_partition(qk, ws), remote_partition(v, ws)),
                                n1, n2)
             + close_unpartition(self._attend(close_partition(qk, ws), close_partition(v, ws)),
                                 n1, n2))
        return o[:, :, :H, :W]


# ----- the block ---------------------------------------------------------------------------------
class iiRMB(iRMB):
    """EMOv2's improved inverted residual mobile block:

        out = shortcut + drop_path(ls(proj(z)))  (skip)  or  ls(proj(z))
        z = silu(BN(dwconv(y))) (+ y if skip),   y = eop(norm(x))

    ``norm`` BN or LN2d (always present); ``eop`` the plain 1x1 expansion (``hybrid=False``)
    or the hybrid window attention; the depthwise conv has no bias, the projection neither
    bias, norm nor activation; LayerScale ``ls`` after it. Keys: norm.*, eops.0.*,
    conv_local.{conv.weight, norm.*}, proj.conv.weight, ls.gamma.

    An ``iRMB`` for the fused machinery: with the plain expansion it is v1's non-attention,
    SE-free iRMB (``v`` is ``eops[0].net``) with LayerScale applied after the projection
    (``_project``; folded into the projection weights for inference)."""

    def __init__(self, dim_in, dim_out, *, norm="bn", act="silu", exp_ratio=1.0, kernel_size=5,
                 stride=1, skip=True, hybrid=False, head_dim=16, window_size=7,
                 drop_path=0.0, ls_init=1e-6, fused=False):
        nn.Module.__init__(self)
        dim_mid = int(dim_in * exp_ratio)
        self.norm = make_norm(norm, dim_in)
        self.norm_channels = dim_in
        self.has_skip = dim_in == dim_out and stride == 1 and skip
        self.attn = False  # v1's attention (on x before v) is not EMOv2's
        self.hybrid = hybrid
        self.act = act
        self.stride = stride
        self.fused = fused
        eop = (HybridWindowAttention(dim_in, dim_mid, act, head_dim, window_size) if hybrid
               else ExpandConv(dim_in, dim_mid, act))
        self.eops = nn.ModuleList([eop])
        self.conv_local = ConvNormAct(dim_mid, dim_mid, kernel_size, stride, groups=dim_mid,
                                      norm="bn", act="silu")
        self.se = nn.Identity()
        self.proj = ConvNormAct(dim_mid, dim_out, 1)
        self.ls = LayerScale2d(dim_out, ls_init)
        self.drop_path = DropPath(drop_path) if drop_path else nn.Identity()

    @property
    def v(self):
        """The 1x1 expansion (v1's ``v``) of a plain block; the hybrid attention's value
        projection otherwise (never used as an expansion of x: such a block is not fused)."""
        eop = self.eops[0]
        return eop.v if isinstance(eop, HybridWindowAttention) else eop.net

    def _forward_reference(self, x):
        shortcut = x
        y = self.eops[0](self.norm(x))
        d = self.conv_local(y)
        z = y + d if self.has_skip else d
        z = self.ls(self.proj(z))
        return shortcut + self.drop_path(z) if self.has_skip else z

    def _project(self, z):
        return self.ls(self.proj(z))

    @property
    def fused_reason(self):
        """Why ``fused=True`` runs this block's reference computation, or None when it runs
        the fused ops."""
        if len(self.eops) != 1:
            return "more than one expansion operator (a sum of eops): reference computation"
        eop = self.eops[0]
        if type(eop) is HybridWindowAttention:
            if not (cna_ok(eop.qk, 1, bias=True) and cna_ok(eop.v, 1, bias=True, act=self.act)):
                return ("the hybrid attention's qk / v convolutions are not the plain 1x1 convs "
                        "with bias (and v's activation the block's): reference computation")
        elif type(eop) is not ExpandConv:
            return "the expansion operator was replaced: reference computation"
        if type(self.ls) is not LayerScale2d:
            return "the LayerScale was replaced: reference computation"
        if not super()._fused_ok():
            return ("the depthwise conv, its norm or activation, or the expansion is not one "
                    "the fused ops compute: reference computation")
        return None

    def _fused_ok(self):
        return self.fused_reason is None

    def _forward_fused(self, x):
        """The plain block: v1's fused forward (``_project`` adds LayerScale). The hybrid one:
        norm, the qk and v convs (torch), ``window_attention`` in its hybrid form (padded keys
        b_k, padded values act(b_v)), then ``expand_dwconv_act`` without expansion (depthwise,
        its BatchNorm, SiLU, the skip), the projection and LayerScale."""
        if not self.hybrid:
            return super()._forward_fused(x)
        shortcut = x
        cast = autocast_cast(x)
        attn = self.eops[0]
        y = self.norm(x)
        C = y.shape[1]
        qk = F.conv2d(y, attn.qk.conv.weight, attn.qk.conv.bias)
        v = attn.v(y)
        o = emo_kernels.window_attention(
            cast(qk[:, :C]), cast(qk[:, C:]), cast(v), cast(attn.qk.conv.bias[C:]),
            head_dim=attn.head_dim, window_size=attn.window_size, scale=attn.scale,
            v_pad=cast(attn.v.act(attn.v.conv.bias)), partition="hybrid")
        w_dw, b_dw, bn = self._dw_args()
        z = emo_kernels.expand_dwconv_act(cast(o), None, None, cast(w_dw), cast(b_dw),
                                          act="none", stride=self.stride, skip=self.has_skip,
                                          **bn)
        z = self._project(z)
        return shortcut + self.drop_path(z) if self.has_skip else z

    @torch.no_grad()
    def reparameterize(self):
        """Fold the depthwise BN into its conv and, for a plain block, an input BN into the
        1x1 expansion (their running statistics; LayerNorms and LayerScale stay)."""
        if not self.hybrid:
            return iRMB.reparameterize(self)
        cl = self.conv_local  # the input norm also feeds qk: it stays
        if _has_fixed_stats(cl.norm):
            fold_cna_norm(cl)


# ----- the network -------------------------------------------------------------------------------
class EMO2(EMO):
    """The EMOv2 backbone: a three-layer stem (conv 3x3 s2 + BN + SiLU, depthwise 3x3 + BN +
    SiLU, conv 1x1), four stages of iiRMBs (block 0 of each: stride 2, no skip, 2x the
    expansion ratio, the plain 1x1 expansion; the others: the stage's ``hybrids`` flag), LN2d,
    mean pool, linear head. Same API as ``EMO``."""

    def __init__(self, depths, embed_dims, exp_ratios, head_dims, *, drop_path_rate=0.05,
                 num_classes=1000, in_chans=3, norms=("bn", "bn", "ln", "ln"),
                 acts=("silu", "silu", "gelu", "gelu"), kernel_sizes=(5, 5, 5, 5),
                 hybrids=(False, False, True, True), window_size=7, ls_init=1e-6, fused=False,
                 features_only=False, out_indices=(0, 1, 2, 3), drop_rate=0.0,
                 global_pool="avg"):
        nn.Module.__init__(self)
        self._init_api(in_chans, num_classes, global_pool, drop_rate, len(depths))
        stem_dim = embed_dims[0] // 2
        self.stage0 = nn.Sequential(
            ConvNormAct(in_chans, stem_dim, 3, 2, bias=True, norm="bn", act="silu"),
            ConvNormAct(stem_dim, stem_dim, 3, 1, groups=stem_dim, norm="bn", act="silu"),
            ConvNormAct(stem_dim, stem_dim, 1))
        def block(i, first, dim_in, drop_path):
            return iiRMB(dim_in, embed_dims[i], norm=norms[i], act=acts[i],
                         exp_ratio=exp_ratios[i] * 2 if first else exp_ratios[i],
                         kernel_size=kernel_sizes[i], stride=2 if first else 1, skip=not first,
                         hybrid=hybrids[i] and not first, head_dim=head_dims[i],
                         window_size=window_size, drop_path=drop_path, ls_init=ls_init, fused=fused)

        dim_prev = self._init_stages(depths, embed_dims, stem_dim, drop_path_rate, block)
        self._init_head(embed_dims, dim_prev, num_classes, features_only, out_indices)

    @torch.no_grad()
    def reparameterize(self):
        """Fold every BatchNorm with fixed statistics into the adjacent conv for inference, in
        place (sets eval): the stem's two, each block's depthwise one, and the input BN of the
        plain blocks into their 1x1 expansion."""
        self.eval()
        for cna in list(self.stage0)[:2]:
            if _has_fixed_stats(cna.norm):
                fold_cna_norm(cna)
        for m in self.modules():
            if isinstance(m, iiRMB):
                m.reparameterize()
        return self

    fuse = reparameterize


__all__ = ["EMO2", "iiRMB", "HybridWindowAttention", "ExpandConv", "LayerScale2d",
           "remote_partition", "remote_unpartition", "close_partition", "close_unpartition"]
