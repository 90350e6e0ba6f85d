"""EMO (ICCV 2023) in plain PyTorch, operation for operation equal to the official code.

Read top to bottom: the iRMB block, the EMO network, the variant configs and factories.
``fused=True`` routes every iRMB through the ``emo_kernels`` ops (the state dict is the same);
inference (BatchNorm folds, the prepared chain, the frozen plan) is prepared in emo/inference.py.
"""
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import emo_kernels
from emo_kernels.reference import window_partition, window_unpartition

from . import inference
from ._features import FeatureInfo
from .layers import (BATCHNORM, FROZEN_BN, IDENTITY, SE, ConvNormAct, DropPath,
                     LayerNorm2d, StemConv, batch_norm_args, fold_bn, fold_bn_into_next_1x1,
                     is_tracing, make_norm, norm_is_affine, norm_kind)


def _has_fixed_stats(m):
    """A BatchNorm with running statistics or a frozen BN: what ``reparameterize`` folds."""
    kind = norm_kind(m)
    return kind == FROZEN_BN or kind == BATCHNORM and m.running_mean is not None


def fold_cna_norm(cna):
    """A ConvNormAct's BatchNorm (fixed statistics) folded into its conv, in place."""
    w, b = fold_bn(cna.conv.weight, cna.conv.bias, cna.norm)
    cna.conv.weight.copy_(w)
    if cna.conv.bias is None:
        cna.conv.bias = nn.Parameter(b)
    else:
        cna.conv.bias.copy_(b)
    cna.norm = nn.Identity()


def autocast_cast(x):
    """Under torch.autocast, the cast autocast applies for the convolutions the fused ops
    replace (weights and activations to the low-precision dtype; BatchNorm statistics and
    parameters stay float32, as nn.BatchNorm2d keeps them); the identity otherwise."""
    dt = (torch.get_autocast_dtype(x.device.type)
          if torch.is_autocast_enabled(x.device.type) else None)
    return (lambda t: t) if dt is None else (lambda t: None if t is None else t.to(dt))


def _script_error():
    return RuntimeError(
        "EMO models cannot be compiled with torch.jit.script (their forward uses Python that "
        "TorchScript does not support: dynamic window padding, the fused kernel dispatch). "
        "Use torch.jit.trace, torch.export, torch.onnx.export or torch.compile instead: with "
        "fused=True they record the reference computation (see README, 'Tracing and export').")

GLOBAL_POOLS = ("avg", "max", "avgmax", "")


def _take_indices(n, indices):
    """timm's ``feature_take_indices``: (absolute indices, their max) of n stages for indices
    None (all), an int k (the last k) or a sequence (negative from the end)."""
    if indices is None:
        indices = n
    if isinstance(indices, int):
        if not 0 < indices <= n:
            raise ValueError(f"last-n indices {indices} out of range (1 to {n})")
        take = list(range(n - indices, n))
    else:
        take = []
        for i in indices:
            j = n + i if i < 0 else i
            if not 0 <= j < n:
                raise ValueError(f"stage index {i} out of range (0 to {n - 1}, or negative)")
            take.append(j)
        if not take:
            raise ValueError("indices is empty")
    return take, max(take)


class iRMB(nn.Module):
    """Inverted residual mobile block (attention variant when ``attn=True``). With
    ``fused=True`` every form of EMO runs through emo_kernels; squeeze-excite together with the
    skip (no EMO block has both) runs the reference computation."""

    def __init__(self, dim_in, dim_out, *, norm="bn", act="silu", exp_ratio=1.0, v_proj=True,
                 kernel_size=3, stride=1, skip=True, se=False, attn=False, head_dim=16,
                 window_size=7, drop_path=0.0, fused=False):
        super().__init__()
        dim_mid = int(dim_in * exp_ratio)
        self.norm = make_norm(norm, dim_in)
        self.norm_channels = dim_in
        self.has_skip = dim_in == dim_out and stride == 1 and skip
        self.attn = attn
        self.act = act
        self.stride = stride
        self.fused = fused
        if attn:
            assert dim_in % head_dim == 0, "dim must be divisible by head_dim"
            self.head_dim = head_dim
            self.num_heads = dim_in // head_dim
            self.window_size = window_size
            self.scale = head_dim ** -0.5
            self.qk = ConvNormAct(dim_in, dim_in * 2, 1, bias=True)
        if v_proj:
            self.v = ConvNormAct(dim_in, dim_mid, 1, bias=True, act=act)
        else:
            self.v = nn.Identity()
        self.conv_local = ConvNormAct(dim_mid, dim_mid, kernel_size, stride, groups=dim_mid,
                                      norm="bn", act="silu")
        self.se = SE(dim_mid, dim_mid, act=act) if se else nn.Identity()
        self.proj = ConvNormAct(dim_mid, dim_out, 1)
        self.drop_path = DropPath(drop_path) if drop_path else nn.Identity()

    # ----- the official computation -------------------------------------------------------
    def _attention(self, y):
        B, C, H, W = y.shape
        ws, heads, d = self.window_size, self.num_heads, self.head_dim
        pad_r, pad_b = (ws - W % ws) % ws, (ws - H % ws) % ws
        y = F.pad(y, (0, pad_r, 0, pad_b))
        n1, n2 = (H + pad_b) // ws, (W + pad_r) // ws
        # 'b c (h1 n1) (w1 n2) -> (b n1 n2) c h1 w1'
        y = window_partition(y, ws).reshape(B * n1 * n2, C, ws, ws)
        qk = self.qk(y).reshape(B * n1 * n2, 2, heads, d, ws * ws).permute(1, 0, 2, 4, 3)
        q, k = qk[0], qk[1]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        vals = y.reshape(B * n1 * n2, heads, d, ws * ws).transpose(-1, -2)
        o = (attn @ vals).transpose(-1, -2).reshape(B * n1 * n2, C, ws, ws)
        o = self.v(o)
        o = window_unpartition(o.reshape(B, n1 * n2, o.shape[1], ws * ws), n1, n2, ws)
        return o[:, :, :H, :W]

    def _forward_reference(self, x):
        shortcut = x
        x = self.norm(x)
        x = self._attention(x) if self.attn else self.v(x)
        d = self.se(self.conv_local(x))
        x = x + d if self.has_skip else d
        x = self.proj(x)
        return shortcut + self.drop_path(x) if self.has_skip else x

    # ----- the fused computation (emo_kernels ops) ----------------------------------------
    def _dw_args(self):
        """Depthwise weights + either the folded norm (an identity, an eval BatchNorm with
        running statistics, a frozen BN) or BatchNorm arguments (batch statistics). Only for
        a depthwise norm that ``_fused_ok`` accepts."""
        conv, bn = self.conv_local.conv, self.conv_local.norm
        if norm_is_affine(bn):
            w, b = fold_bn(conv.weight, conv.bias, bn)
            return w, b, {}
        return conv.weight, conv.bias, batch_norm_args(bn)

    def _fused_ok(self):
        """Whether the fused ops can express this block exactly: the depthwise norm must be
        one they fold or apply (identity, BatchNorm, frozen BN); squeeze-excite with the skip
        (not in EMO's configs: its only SE block, the stem's, has no skip) puts SE between the
        depthwise pass and the skip, which they cannot express. The input norm is always
        either folded or called as a module. The modules the ops replace must be the plain ones
        they compute (``inference.fused_structure_ok``): the depthwise conv and its SiLU, the
        1x1 expansion and its activation, the qk conv -- a replaced or reconfigured one runs
        the reference computation."""
        return (norm_kind(self.conv_local.norm) in (IDENTITY, BATCHNORM, FROZEN_BN)
                and not (isinstance(self.se, SE) and self.has_skip)
                and inference.fused_structure_ok(self))

    def _forward_fused(self, x):
        shortcut = x
        cast = autocast_cast(x)
        if self.attn:
            y = self.norm(x)
            C = y.shape[1]
            qk = F.conv2d(y, self.qk.conv.weight, self.qk.conv.bias)
            x_in = emo_kernels.window_attention(
                cast(qk[:, :C]), cast(qk[:, C:]), cast(y), cast(self.qk.conv.bias[C:]),
                head_dim=self.head_dim, window_size=self.window_size, scale=self.scale)
            w_exp, b_exp = self.v.conv.weight, self.v.conv.bias
        elif isinstance(self.v, nn.Identity):
            x_in, w_exp, b_exp = self.norm(x), None, None
        else:
            w_exp, b_exp = self.v.conv.weight, self.v.conv.bias
            if norm_is_affine(self.norm):
                x_in = x
                w_exp, b_exp = fold_bn_into_next_1x1(self.norm, w_exp, b_exp)
            else:
                x_in = self.norm(x)
        w_dw, b_dw, bn = self._dw_args()
        z = emo_kernels.expand_dwconv_act(
            cast(x_in), cast(w_exp), cast(b_exp), cast(w_dw), cast(b_dw),
            act=self.act if w_exp is not None else "none",
            stride=self.stride, skip=self.has_skip, **bn)
        z = self._project(z)
        return shortcut + self.drop_path(z) if self.has_skip else z

    def _project(self, z):
        """What follows the depthwise pass (and its skip) before the residual: SE (an
        identity but in the stem block) and the projection; EMOv2 adds LayerScale."""
        return self.proj(self.se(z))

    def forward(self, x):
        # tracers and exporters see the reference computation, the portable graph;
        # torch.compile keeps the ops (torch.library custom ops) opaque in its graph (see
        # README, "Tracing and export")
        if not self.fused or is_tracing(x) or not self._fused_ok():
            return self._forward_reference(x)
        if inference.active(self, x):  # eval, no grad: prepared now (emo/inference.py)
            return inference.irmb_forward(self, x)
        return self._forward_fused(x)

    def __prepare_scriptable__(self):
        raise _script_error()

    @torch.no_grad()
    def reparameterize(self):
        """Fold the depthwise BN into its conv and an input BN into the 1x1 expansion (their
        running statistics, or a frozen BN's; other norms stay)."""
        if _has_fixed_stats(self.conv_local.norm):
            fold_cna_norm(self.conv_local)
        if _has_fixed_stats(self.norm) and not self.attn and not isinstance(self.v, nn.Identity):
            w, b = fold_bn_into_next_1x1(self.norm, self.v.conv.weight, self.v.conv.bias)
            self.v.conv.weight.copy_(w)
            self.v.conv.bias.copy_(b)
            self.norm = nn.Identity()


class EMO(nn.Module):
    """The EMO backbone: stem (stage0), four stages of iRMBs, LN2d, mean pool, linear head."""

    def __init__(self, depths, embed_dims, exp_ratios, head_dims, *, drop_path_rate=0.05,
                 num_classes=1000, in_chans=3, stem_dim=24, norms=("bn", "bn", "ln", "ln"),
                 acts=("silu", "silu", "gelu", "gelu"), kernel_sizes=(3, 3, 5, 5),
                 attns=(False, False, True, True), window_size=7, fused=False,
                 features_only=False, out_indices=(0, 1, 2, 3), drop_rate=0.0,
                 global_pool="avg"):
        super().__init__()
        self._init_api(in_chans, num_classes, global_pool, drop_rate, len(depths))
        self.stage0 = nn.Sequential(
            StemConv(in_chans, stem_dim),
            iRMB(stem_dim, stem_dim, norm="none", act=acts[0], exp_ratio=1, v_proj=False,
                 kernel_size=kernel_sizes[0], skip=False, se=True, fused=fused))

        def block(i, first, dim_in, drop_path):
            return iRMB(dim_in, embed_dims[i], norm=norms[i], act=acts[i],
                        exp_ratio=exp_ratios[i] * 2 if first else exp_ratios[i],
                        kernel_size=kernel_sizes[i], stride=2 if first else 1, skip=not first,
                        attn=attns[i] and not first, head_dim=head_dims[i],
                        window_size=window_size, drop_path=drop_path, fused=fused)

        dim_prev = self._init_stages(depths, embed_dims, stem_dim, drop_path_rate, block)
        self._init_head(embed_dims, dim_prev, num_classes, features_only, out_indices)

    def _init_stages(self, depths, embed_dims, stem_dim, drop_path_rate, block):
        """stage1..stageN: ``block(stage, first, dim_in, drop_path)`` per block (the first of a
        stage downsamples), drop path rising linearly over all blocks; returns the last width."""
        dprs = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        dim_prev, idx = stem_dim, 0
        for i, depth in enumerate(depths):
            blocks = []
            for j in range(depth):
                blocks.append(block(i, j == 0, dim_prev, dprs[idx]))
                dim_prev = embed_dims[i]
                idx += 1
            setattr(self, f"stage{i + 1}", nn.Sequential(*blocks))
        return dim_prev

    def _init_api(self, in_chans, num_classes, global_pool, drop_rate, num_stages):
        """The attributes of the model API (shared with EMOv2's ``EMO2``)."""
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.features_only = False
        self.out_indices = (0, 1, 2, 3)
        self.num_stages = num_stages  # stages 1..num_stages run; pruning lowers it
        self.grad_checkpointing = False

    def _init_head(self, embed_dims, dim_prev, num_classes, features_only, out_indices):
        """Feature info, final LN2d and classifier, weight init, ``features_only`` (after the
        stages are built; shared with ``EMO2``)."""
        self.feature_info = FeatureInfo([
            dict(num_chs=c, reduction=2 ** (i + 2), module=f"stage{i + 1}")
            for i, c in enumerate(embed_dims)])
        self.num_features = self.head_hidden_size = dim_prev
        self.norm = LayerNorm2d(dim_prev)
        self.head = nn.Linear(dim_prev, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        if features_only:
            self._to_features_only(out_indices)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ----- public API ----------------------------------------------------------------------
    @property
    def fused(self):
        return any(m.fused for m in self.modules() if isinstance(m, iRMB))

    def set_fused(self, fused=True):
        for m in self.modules():
            if isinstance(m, iRMB):
                m.fused = fused
        return self

    def set_grad_checkpointing(self, enable=True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self):
        return self.head

    def reset_classifier(self, num_classes, global_pool=None):
        """A new classifier for ``num_classes`` (0: none, ``forward`` returns the pooled
        features); ``global_pool`` one of GLOBAL_POOLS ('': no pooling)."""
        if global_pool is not None:
            if global_pool not in GLOBAL_POOLS:
                raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got "
                                 f"{global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        w = next(self.stage0.parameters())  # the new head on the model's device and dtype
        self.head = nn.Linear(self.num_features, num_classes, device=w.device, dtype=w.dtype) \
            if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            self._init_weights(self.head)

    @torch.jit.ignore
    def group_matcher(self, coarse=False):
        """Parameter groups for timm's layer-wise lr decay (``layer_decay``) and its
        ``group_parameters``: the stem, then each stage (coarse) or each block, then the
        final norm; the head comes last."""
        return dict(stem=r"^stage0\.", blocks=r"^stage(\d+)\." if coarse else [
            (r"^stage(\d+)\.(\d+)\.", None), (r"^norm\.", (99999,))])

    def prune_intermediate_layers(self, indices=1, prune_norm=False, prune_head=True):
        """Drop the stages after the last of ``indices`` (timm's convention: an int n means
        the last n stages, a sequence picks stages, negative from the end), and the final norm
        and the head when asked (always when stages were dropped: they fit the last stage
        only). Returns the absolute indices taken."""
        take, max_index = _take_indices(self.num_stages, indices)
        if max_index < self.num_stages - 1:
            for i in range(max_index + 2, self.num_stages + 1):
                setattr(self, f"stage{i}", nn.Sequential())
            self.num_stages = max_index + 1
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            prune_norm = prune_head = True
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take

    def _to_features_only(self, out_indices=(0, 1, 2, 3)):
        """The backbone alone: stages up to the last of ``out_indices``, no norm, no head;
        ``forward`` returns the chosen stage outputs (a list)."""
        self.out_indices = tuple(self.prune_intermediate_layers(out_indices, prune_norm=True))
        self.feature_info = self.feature_info.from_other(self.out_indices)
        self.features_only = True
        return self

    def _check_input(self, x):
        if isinstance(x, torch.fx.Proxy):  # torch.fx symbolic tracing: no values to check
            return
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"EMO expects a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"EMO expects a 4-D input (B, {self.in_chans}, H, W), got shape "
                             f"{tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"EMO expects {self.in_chans} input channels (B, {self.in_chans}, "
                             f"H, W), got shape {tuple(x.shape)}")
        if x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(f"EMO expects an image of at least 1x1 pixels, got shape "
                             f"{tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"EMO expects a floating-point input, got {x.dtype}")

    def _run_stage(self, stage, x):
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            for blk in stage:
                x = checkpoint(blk, x, use_reentrant=False)
            return x
        return stage(x)

    def __prepare_scriptable__(self):
        raise _script_error()

    def forward_intermediates(self, x, indices=None, norm=False, stop_early=False,
                              output_fmt="NCHW", intermediates_only=False):
        """timm's ``forward_intermediates``: the stage outputs (strides 4, 8, 16, 32) for
        detection/segmentation heads.

        indices: None for all stages, an int n for the last n, or a sequence of stage indices
        (0-3, negative from the end). norm: apply the final norm to the last stage's output when
        it is taken (its channels only fit that stage). stop_early: stop after the last stage
        taken. output_fmt: 'NCHW' or 'NHWC'. Returns ``(final, intermediates)`` where final is
        what ``forward_features`` returns (the last stage run, before the norm), or the list
        alone when ``intermediates_only``.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        self._check_input(x)
        take, max_index = _take_indices(self.num_stages, indices)
        last = max_index if stop_early else self.num_stages - 1
        feats = None
        if self.num_stages == 4:  # fused, eval, no grad: one prepared chain (emo/inference.py)
            feats = inference.intermediates(self, x)
        if feats is None:
            x = self._run_stage(self.stage0, x)
            feats = []
            for i in range(1, last + 2):
                x = self._run_stage(getattr(self, f"stage{i}"), x)
                feats.append(x)
        feats = feats[:last + 1]
        out = []
        for i in take:
            f = feats[i]
            if norm and i == 3 and isinstance(self.norm, LayerNorm2d):
                f = self.norm(f)
            out.append(f.permute(0, 2, 3, 1) if output_fmt == "NHWC" else f)
        if intermediates_only:
            return out
        return feats[-1], out

    def forward_features(self, x):
        return self.forward_intermediates(x, intermediates_only=True)[-1]

    def forward_head(self, x, pre_logits=False):
        x = self.norm(x)
        gp = self.global_pool
        if gp == "avg":
            x = x.mean((2, 3))
        elif gp == "max":
            x = x.amax((2, 3))
        elif gp == "avgmax":
            x = 0.5 * (x.mean((2, 3)) + x.amax((2, 3)))
        if self.drop_rate:
            x = F.dropout(x, self.drop_rate, self.training)
        if pre_logits:
            return x
        if not gp:  # no pooling: the classifier at every pixel
            return self.head(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.head(x)

    def forward(self, x):
        if self.features_only:
            return self.forward_intermediates(x, self.out_indices, intermediates_only=True)
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def reparameterize(self):
        """Fold every BatchNorm into the adjacent conv for inference, in place (sets eval)."""
        self.eval()
        stem = self.stage0[0].convs[0]
        if _has_fixed_stats(stem[1]):
            w, b = fold_bn(stem[0].weight, stem[0].bias, stem[1])
            stem[0].weight.copy_(w)
            stem[0].bias.copy_(b)
            stem[1] = nn.Identity()
        for m in self.modules():
            if isinstance(m, iRMB):
                m.reparameterize()
        return self

    fuse = reparameterize

    def prepare_inference(self, example=None):
        """A frozen ``emo.inference.InferencePlan`` of this eval-mode model: later edits of the
        model do not reach it (make a new one); see emo/inference.py. With an ``example``
        input: the plan captured in a CUDA graph (``emo.inference.GraphedPlan``)."""
        return inference.prepare_inference(self, example)


# ----- variants ----------------------------------------------------------------------------
CONFIGS = {
    "emo_1m": dict(depths=(2, 2, 8, 3), embed_dims=(32, 48, 80, 168),
                   exp_ratios=(2.0, 2.5, 3.0, 3.5), head_dims=(16, 16, 20, 21),
                   drop_path_rate=0.04036),
    "emo_2m": dict(depths=(3, 3, 9, 3), embed_dims=(32, 48, 120, 200),
                   exp_ratios=(2.0, 2.5, 3.0, 3.5), head_dims=(16, 16, 20, 20),
                   drop_path_rate=0.05),
    "emo_5m": dict(depths=(3, 3, 9, 3), embed_dims=(48, 72, 160, 288),
                   exp_ratios=(2.0, 3.0, 4.0, 4.0), head_dims=(24, 24, 32, 32),
                   drop_path_rate=0.05),
    "emo_6m": dict(depths=(3, 3, 9, 3), embed_dims=(48, 72, 160, 320),
                   exp_ratios=(2.0, 3.0, 4.0, 5.0), head_dims=(16, 24, 20, 32),
                   drop_path_rate=0.05),
}


# Evaluation preprocessing and weights of each variant, in timm's ``pretrained_cfg`` form
# (emo/_timm.py registers them with timm). Preprocessing: the official evaluation transform
# (zhangzjn/EMO, configs/mobile/cls_emo.py: resize to int(224 / 0.875) = 256 with bicubic
# interpolation, centre crop 224, timm's ImageNet default mean/std). Weights: the official
# README publishes them as ``resources/EMO_<n>M/net.pth`` in the official repository; ``url``
# is that file on its main branch. The URL is derived from the README's relative link and has
# not been downloaded by this project (its machines have no network): if it moves, give the
# file with ``pretrained=path`` or timm's ``pretrained_cfg_overlay=dict(file=...)``.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OFFICIAL_REPO = "https://github.com/zhangzjn/EMO"
PRETRAINED_CFGS = {name: dict(
    url=f"{OFFICIAL_REPO}/raw/main/resources/EMO_{size}/net.pth", num_classes=1000,
    input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875, crop_mode="center",
    interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD,
    first_conv="stage0.0.convs.0.0", classifier="head", license="apache-2.0",
    origin_url=OFFICIAL_REPO,
    notes=(f"ImageNet-1k top-1 {top1} (official README); weights: resources/EMO_{size}/net.pth "
           "of the official repository (URL derived from its README, not downloaded here)",))
    for name, size, top1 in (("emo_1m", "1M", 71.5), ("emo_2m", "2M", 75.1),
                             ("emo_5m", "5M", 78.4), ("emo_6m", "6M", 79.0))}


# EMOv2 (emo/emo2.py): the official ``EMO2_<n>M_k5_hybrid`` configs (window 7) and their
# ``_256`` forms (window 8; the same weights' shapes). Every stage: depthwise 5x5; stages 3-4:
# hybrid attention after their first block. head_dims of stages 1-2 are unused (no attention).
_V2 = dict(
    emo2_1m=dict(depths=(2, 2, 8, 3), embed_dims=(32, 48, 80, 180),
                 exp_ratios=(2.0, 2.5, 3.0, 3.5), head_dims=(16, 16, 20, 20),
                 drop_path_rate=0.04036),
    emo2_2m=dict(depths=(3, 3, 9, 3), embed_dims=(32, 48, 120, 200),
                 exp_ratios=(2.0, 2.5, 3.0, 3.5), head_dims=(16, 16, 20, 20),
                 drop_path_rate=0.05),
    emo2_5m=dict(depths=(3, 3, 9, 3), embed_dims=(48, 72, 160, 288),
                 exp_ratios=(2.0, 3.0, 4.0, 4.0), head_dims=(16, 24, 32, 32),
                 drop_path_rate=0.05),
    emo2_20m=dict(depths=(3, 3, 13, 3), embed_dims=(64, 128, 320, 448),
                  exp_ratios=(2.0, 3.0, 4.0, 4.0), head_dims=(16, 32, 32, 32),
                  drop_path_rate=0.1))
CONFIGS_V2 = {**{n: dict(c, window_size=7) for n, c in _V2.items()},
              **{f"{n}_256": dict(c, window_size=8) for n, c in _V2.items()}}

# The official EMOv2 README publishes ImageNet-1k weights of EMOv2-1M/2M/5M at 224 (without
# distillation) in github.com/zhangzjn/data, emov2_pretrained_weights/EMOv2_<n>M_224.pth; the
# URLs below are those files' raw links, derived from the README and not downloaded here. No
# classification weights are published for EMOv2-20M or the window-8 ``_256`` configs (the
# README's 512x512 EMOv2-5M file belongs to a ``_512`` config, not in this zoo): their ``url``
# is empty and ``pretrained=True`` raises (give a file instead).
_V2_WEIGHTS = "https://github.com/zhangzjn/data/raw/main/emov2_pretrained_weights"
_V2_TOP1 = {"emo2_1m": 72.3, "emo2_2m": 75.8, "emo2_5m": 79.4}
OFFICIAL_REPO_V2 = "https://github.com/zhangzjn/EMOv2"


def _v2_pretrained_cfg(name):
    base = name.removesuffix("_256")
    size = 256 if name.endswith("_256") else 224
    file = f"EMOv2_{base[len('emo2_'):].upper()}_224.pth"
    url = f"{_V2_WEIGHTS}/{file}" if size == 224 and base in _V2_TOP1 else ""
    return dict(
        url=url, num_classes=1000, input_size=(3, size, size), pool_size=(size // 32, size // 32),
        crop_pct=0.875 if size == 224 else 1.0, crop_mode="center", interpolation="bicubic",
        mean=IMAGENET_MEAN, std=IMAGENET_STD, first_conv="stage0.0.conv", classifier="head",
        license="apache-2.0", origin_url=OFFICIAL_REPO_V2,
        notes=(f"ImageNet-1k top-1 {_V2_TOP1[base]} (official README); weights: "
               f"emov2_pretrained_weights/{file} of github.com/zhangzjn/data (URL derived from "
               "the README, not downloaded here)" if url else
               "no published classification weights for this config",))


PRETRAINED_CFGS.update({name: _v2_pretrained_cfg(name) for name in CONFIGS_V2})


def model_class(name):
    """``EMO`` for an EMO v1 variant, ``emo.emo2.EMO2`` for an EMOv2 one."""
    if name in CONFIGS_V2:
        from .emo2 import EMO2  # emo2 builds on this module
        return EMO2
    if name in CONFIGS:
        return EMO
    raise ValueError(f"unknown EMO model {name!r}; available: {list_models()}")


def model_config(name):
    """A copy of the constructor arguments of variant ``name`` (v1 or v2)."""
    model_class(name)
    return dict(CONFIGS.get(name) or CONFIGS_V2[name])


def list_models(family=None):
    """The variant names: ``family`` None for all, "emo" for EMO v1, "emo2" for EMOv2."""
    if family not in (None, "emo", "emo2"):
        raise ValueError(f"family must be None, 'emo' or 'emo2', got {family!r}")
    return sorted(([] if family == "emo2" else list(CONFIGS))
                  + ([] if family == "emo" else list(CONFIGS_V2)))


def create_model(name, pretrained=None, *, fused=False, num_classes=1000, in_chans=3,
                 drop_path_rate=None, features_only=False, out_indices=(0, 1, 2, 3),
                 pretrained_head="warn", **kwargs):
    """Build an EMO (v1) or EMOv2 variant (``list_models()``).

    ``pretrained``: a checkpoint path, file object or state dict (loaded with
    ``emo.load_checkpoint``); a checkpoint head of another ``num_classes`` is, by
    ``pretrained_head``: ``"warn"`` left out with a warning naming it, ``"drop"`` left out
    quietly (fine-tuning), ``"strict"`` an error;
    None or False for random weights; True downloads ``PRETRAINED_CFGS[name]["url"]`` (the
    official weights) through torch.hub's cache. ``features_only``: the
    backbone without norm and head, ``forward`` returns the stage outputs ``out_indices``.
    Other keywords go to ``EMO`` / ``EMO2`` (``drop_rate``, ``global_pool``, ...).
    """
    cls, cfg = model_class(name), model_config(name)
    if drop_path_rate is not None:
        cfg["drop_path_rate"] = drop_path_rate
    cfg.update(kwargs)
    model = cls(**cfg, num_classes=num_classes, in_chans=in_chans, fused=fused)
    model.pretrained_cfg = model.default_cfg = dict(PRETRAINED_CFGS[name], architecture=name)
    if pretrained is True:
        if not PRETRAINED_CFGS[name]["url"]:
            raise ValueError(f"{name}: {PRETRAINED_CFGS[name]['notes'][0]}; give the weights "
                             "as pretrained=<path or state dict>")
        pretrained = torch.hub.load_state_dict_from_url(PRETRAINED_CFGS[name]["url"],
                                                        map_location="cpu", weights_only=True)
    if pretrained is not None and pretrained is not False:
        from .checkpoint import load_checkpoint
        load_checkpoint(model, pretrained, head=pretrained_head)
    if features_only:
        model._to_features_only(out_indices)
    return model


emo_1m = partial(create_model, "emo_1m")
emo_2m = partial(create_model, "emo_2m")
emo_5m = partial(create_model, "emo_5m")
emo_6m = partial(create_model, "emo_6m")
emo2_1m = partial(create_model, "emo2_1m")
emo2_2m = partial(create_model, "emo2_2m")
emo2_5m = partial(create_model, "emo2_5m")
emo2_20m = partial(create_model, "emo2_20m")
emo2_1m_256 = partial(create_model, "emo2_1m_256")
emo2_2m_256 = partial(create_model, "emo2_2m_256")
emo2_5m_256 = partial(create_model, "emo2_5m_256")
emo2_20m_256 = partial(create_model, "emo2_20m_256")
