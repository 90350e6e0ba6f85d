"""EMO (ICCV 2023) in plain PyTorch, operation for operation equal to the official code.

Read top to bottom: the iRMB block, the EMO network, the variant configs and factories.
``fused=True`` routes every iRMB through the ``emo_kernels`` ops (the state dict is the same).
"""
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import emo_kernels
from emo_kernels.reference import window_partition, window_unpartition

from .layers import (BATCHNORM, EPS, FROZEN_BN, IDENTITY, LAYERNORM, SE, ConvNormAct, DropPath, LayerNorm2d,
                     StemConv, batch_norm_args, fold_bn, fold_bn_into_next_1x1, is_tracing,
                     make_norm, norm_is_affine, norm_kind)


def _param_key(module):
    """Identity of a module's parameters and buffers: changes when one is replaced, moved
    (data pointer) or modified in place (version counter). None: cannot tell (inference tensors
    have no version counter), so do not cache. The parameter/buffer dicts of the submodules
    are cached (a replaced parameter lands in the same dict); ``reparameterize()``,
    ``train()``/``eval()`` and ``.to()`` refresh them. One flat list of ints per call."""
    dicts = module.__dict__.get("_key_dicts")
    if dicts is None:
        dicts = module.__dict__["_key_dicts"] = [
            d for m in module.modules() for d in (m._parameters, m._buffers)]
    try:
        return [v for d in dicts for t in d.values() if t is not None
                for v in (t.data_ptr(), t._version)]
    except RuntimeError:
        return None


def _drop_key_cache(module):
    for m in module.modules():
        for k in ("_key_dicts", "_infer_cache", "_stem_cache", "_chain_cache", "_chain_dicts"):
            m.__dict__.pop(k, None)


def _infer_cpu_folds(m):
    """Norms that the cached CPU inference path (``_inference_params``, ``_irmb_args``,
    ``_stem_conv_infer_cpu``) folds exactly: an identity and an eval nn.BatchNorm2d with running
    statistics. It takes every other norm that is not a BatchNorm2d for an identity, so a
    block or stem with one runs the general fused path instead."""
    kind = norm_kind(m)
    return kind == IDENTITY or (kind == BATCHNORM and isinstance(m, nn.BatchNorm2d)
                                and norm_is_affine(m))


def _has_fixed_stats(m):
    """A BatchNorm with running statistics or a frozen BN: what ``reparameterize`` folds."""
    kind = norm_kind(m)
    return kind == FROZEN_BN or kind == BATCHNORM and m.running_mean is not None


def _script_error():
    return RuntimeError(
        "EMO models cannot be compiled with torch.jit.script (their forward uses Python that "
        "TorchScript does not support: dynamic window padding, the fused kernel dispatch). "
        "Use torch.jit.trace, torch.export, torch.onnx.export or torch.compile instead: with "
        "fused=True they record the reference computation (see README, 'Tracing and export').")


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
        either folded or called as a module."""
        return (norm_kind(self.conv_local.norm) in (IDENTITY, BATCHNORM, FROZEN_BN)
                and not (isinstance(self.se, SE) and self.has_skip))

    def _forward_fused(self, x):
        shortcut = x
        # under torch.autocast, cast as autocast does for the convolutions the ops replace
        # (weights and activations to the low-precision dtype; BatchNorm statistics and
        # parameters stay float32, as nn.BatchNorm2d keeps them)
        dt = (torch.get_autocast_dtype(x.device.type)
              if torch.is_autocast_enabled(x.device.type) else None)
        cast = (lambda t: t) if dt is None else (lambda t: None if t is None else t.to(dt))
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
        z = self.proj(self.se(z))
        return shortcut + self.drop_path(z) if self.has_skip else z

    # ----- fused inference on CPU: NHWC, BN folds cached, 1x1 convs as GEMMs ------------------
    def _inference_params(self):
        """Eval-mode weights with every BatchNorm folded, cached until a parameter changes."""
        key = _param_key(self)
        cache = getattr(self, "_infer_cache", None)
        if key is not None and cache is not None and cache[0] == key:
            return cache[1]
        with torch.no_grad():
            p = {}
            conv, bn = self.conv_local.conv, self.conv_local.norm
            p["w_dw"], p["b_dw"] = (fold_bn(conv.weight, conv.bias, bn)
                                    if isinstance(bn, nn.BatchNorm2d) else (conv.weight, conv.bias))
            p["w_exp"] = p["b_exp"] = None
            if not isinstance(self.v, nn.Identity):
                w, b = self.v.conv.weight, self.v.conv.bias
                if isinstance(self.norm, nn.BatchNorm2d) and not self.attn:
                    w, b = fold_bn_into_next_1x1(self.norm, w, b)
                p["w_exp"], p["b_exp"] = w.flatten(1).contiguous(), b
            if self.attn:
                p["w_qk"] = self.qk.conv.weight.flatten(1).contiguous()
                p["b_qk"] = self.qk.conv.bias
            p["w_proj"] = self.proj.conv.weight.flatten(1).contiguous()
            p = {k: (v.detach() if v is not None else None) for k, v in p.items()}
        self._infer_cache = (key, p)
        return p

    def _irmb_args(self, p):
        """The block as ``irmb_inference`` arguments ``(args, kwargs)`` (after x), or None when
        it has a part that op does not take (squeeze-excite, a BatchNorm before attention)."""
        act = self.act if p["w_exp"] is not None else "none"
        kw = dict(act=act, stride=self.stride, skip=self.has_skip)
        ln = isinstance(self.norm, LayerNorm2d)
        folded = p["w_exp"] is not None and isinstance(self.norm, nn.BatchNorm2d) and not self.attn
        se = isinstance(self.se, SE)
        if (se and self.has_skip) or not (ln or folded or isinstance(self.norm, nn.Identity)):
            return None
        if se:
            kw.update(se_reduce_weight=self.se.conv_reduce.weight.detach(),
                      se_reduce_bias=self.se.conv_reduce.bias.detach(),
                      se_expand_weight=self.se.conv_expand.weight.detach(),
                      se_expand_bias=self.se.conv_expand.bias.detach(),
                      se_act=self.se.act_name)
        if ln:
            kw.update(ln_weight=self.norm.norm.weight.detach(),
                      ln_bias=self.norm.norm.bias.detach(), eps=self.norm.norm.eps)
        if self.attn:
            kw.update(w_qk=p["w_qk"], b_qk=p["b_qk"], head_dim=self.head_dim,
                      window_size=self.window_size, scale=self.scale)
        return (p["w_exp"], p["b_exp"], p["w_dw"], p["b_dw"], p["w_proj"]), kw

    def _forward_infer_cpu(self, x):
        """Eval forward on CPU with cached folded weights and NHWC (channels_last) activations:
        one ``emo_kernels.irmb_inference`` call (LayerNorm, attention, expansion, depthwise,
        SE, projection and residual; the cpu backend runs it as one C++ call). A block that op
        cannot take (a BatchNorm before attention: not in EMO's configs) runs the general fused
        path."""
        call = self._irmb_args(self._inference_params())
        if call is None:
            return self._forward_fused(x)
        return emo_kernels.irmb_inference(x, *call[0], **call[1])

    def _use_infer_cpu(self, x):
        if self.training or x.device.type != "cpu":
            return False
        if torch.is_grad_enabled() and (x.requires_grad or
                                        any(q.requires_grad for q in self.parameters())):
            return False
        return True

    def train(self, mode=True):
        _drop_key_cache(self)
        return super().train(mode)

    def _apply(self, *args, **kwargs):
        _drop_key_cache(self)
        return super()._apply(*args, **kwargs)

    def _infer_cpu_ok(self, x):
        """Whether the cached CPU inference path may run this block: not under autocast (it
        computes in x's dtype) and only with the norms it folds exactly (identity, LayerNorm2d,
        an eval nn.BatchNorm2d with running statistics)."""
        if torch.is_autocast_enabled(x.device.type):
            return False
        return all(_infer_cpu_folds(m) or m is self.norm and norm_kind(m) == LAYERNORM
                   for m in (self.norm, self.conv_local.norm))

    def forward(self, x):
        # tracers, exporters and compilers see the reference computation: the fused C++ calls
        # are invisible to them (see README, "Tracing and export")
        if not self.fused or is_tracing(x) or not self._fused_ok():
            return self._forward_reference(x)
        if self._infer_cpu_ok(x) and self._use_infer_cpu(x):
            return self._forward_infer_cpu(x)
        return self._forward_fused(x)

    def __prepare_scriptable__(self):
        raise _script_error()

    @torch.no_grad()
    def reparameterize(self):
        """Fold the depthwise BN into its conv and an input BN into the 1x1 expansion (their
        running statistics, or a frozen BN's; other norms stay)."""
        _drop_key_cache(self)
        cl = self.conv_local
        if _has_fixed_stats(cl.norm):
            w, b = fold_bn(cl.conv.weight, cl.conv.bias, cl.norm)
            cl.conv.bias = nn.Parameter(b)
            cl.conv.weight.copy_(w)
            cl.norm = nn.Identity()
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
                 features_only=False):
        super().__init__()
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.features_only = features_only
        self.grad_checkpointing = False
        self.stage0 = nn.Sequential(
            StemConv(in_chans, stem_dim),
            iRMB(stem_dim, stem_dim, norm="none", act=acts[0], exp_ratio=1, v_proj=False,
                 kernel_size=kernel_sizes[0], skip=False, se=True, fused=fused))
        dprs = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        dim_prev, idx = stem_dim, 0
        self.feature_info = []
        for i, depth in enumerate(depths):
            blocks = []
            for j in range(depth):
                first = j == 0
                blocks.append(iRMB(
                    dim_prev, embed_dims[i], norm=norms[i], act=acts[i],
                    exp_ratio=exp_ratios[i] * 2 if first else exp_ratios[i],
                    kernel_size=kernel_sizes[i], stride=2 if first else 1, skip=not first,
                    attn=attns[i] and not first, head_dim=head_dims[i],
                    window_size=window_size, drop_path=dprs[idx], fused=fused))
                dim_prev = embed_dims[i]
                idx += 1
            setattr(self, f"stage{i + 1}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=2 ** (i + 2),
                                          module=f"stage{i + 1}"))
        self.num_features = dim_prev
        self.norm = LayerNorm2d(dim_prev)
        self.head = nn.Linear(dim_prev, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

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

    def train(self, mode=True):
        _drop_key_cache(self)  # the chain caches of the model and of every block
        return super().train(mode)

    def _apply(self, *args, **kwargs):
        _drop_key_cache(self)
        return super()._apply(*args, **kwargs)

    def set_grad_checkpointing(self, enable=True):
        self.grad_checkpointing = enable

    def reset_classifier(self, num_classes):
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            self._init_weights(self.head)

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

    def _forward_intermediates_infer_cpu(self, x):
        """Fused inference on CPU: channels_last from the stem on. The stem block and stages 1-4
        run as one ``emo_kernels.IRMBChain`` call (no Python between blocks) unless a block has forward
        hooks (then block by block, through __call__, so that the hooks fire)."""
        x = self._stem_conv_infer_cpu(x)
        blocks = [b for i in range(5) for b in getattr(self, f"stage{i}") if isinstance(b, iRMB)]
        chain, ends = self._infer_chain(blocks, x)
        if chain is not None:
            return chain(x, outputs=ends)
        x = self.stage0[1](x)
        feats = []
        for i in range(1, 5):
            for blk in getattr(self, f"stage{i}"):
                x = blk(x)
            feats.append(x)
        return feats

    def _infer_chain(self, blocks, x):
        """The cached IRMBChain of stages 1-4 and the indices of the stage ends, or (None, None)
        when blocks have hooks or a block cannot be chained. Rebuilt when a block, a parameter
        or a buffer changes (one flat key over their data pointers and versions) or the input
        dtype/device does."""
        from torch.nn.modules import module as _m
        if _m._global_forward_hooks or _m._global_forward_pre_hooks or any(
                b._forward_hooks or b._forward_pre_hooks for b in blocks):
            return None, None
        # one flat key over the blocks' non-empty parameter/buffer dicts (the tensors the fused
        # path reads live there; a parameter added to an empty dict later is not read by it)
        dicts = self.__dict__.get("_chain_dicts")
        if dicts is None or dicts[0] != blocks:
            dicts = self.__dict__["_chain_dicts"] = (blocks, [
                d for b in blocks for m in b.modules() for d in (m._parameters, m._buffers) if d])
        try:
            keys = [v for d in dicts[1] for t in d.values() if t is not None
                    for v in (t.data_ptr(), t._version)]
        except RuntimeError:  # inference tensors: no version counter, do not cache
            return None, None
        cache = self.__dict__.get("_chain_cache")
        tag = (x.dtype, x.device)
        if cache is not None and cache[0] == blocks and cache[1] == keys and cache[2] == tag:
            return cache[3], cache[4]
        calls = [b._irmb_args(b._inference_params()) for b in blocks]
        if any(c is None for c in calls):
            chain = ends = None
        else:
            chain = emo_kernels.IRMBChain(calls, blocks[0].norm_channels, x.dtype, x.device)
            n = [len(getattr(self, f"stage{i}")) for i in range(1, 5)]
            ends = [sum(n[:i + 1]) for i in range(4)]  # block 0 is the stem block
        self.__dict__["_chain_cache"] = (blocks, keys, tag, chain, ends)
        return chain, ends

    def _stem_conv_infer_cpu(self, x):
        """Stem conv with its BN folded (cached), on a channels_last input."""
        key = _param_key(self.stage0[0])
        cache = getattr(self, "_stem_cache", None)
        if key is None or cache is None or cache[0] != key:
            conv, bn = self.stage0[0].convs[0]
            with torch.no_grad():
                w, b = (fold_bn(conv.weight, conv.bias, bn) if isinstance(bn, nn.BatchNorm2d)
                        else (conv.weight, conv.bias))
                w = w.contiguous(memory_format=torch.channels_last)
            cache = self._stem_cache = (key, (w.detach(), b.detach()))
        w, b = cache[1]
        return F.conv2d(x.contiguous(memory_format=torch.channels_last), w, b, stride=2, padding=1)

    def _infer_cpu_ok(self, x):
        """Whether the cached CPU inference chain may run: no tracer, every block fused and
        accepted by its ``_infer_cpu_ok``, and a stem norm that chain folds exactly."""
        if is_tracing(x) or not _infer_cpu_folds(self.stage0[0].convs[0][1]):
            return False
        return all(b.fused and b._fused_ok() and b._infer_cpu_ok(x)
                   for i in range(5) for b in getattr(self, f"stage{i}") if isinstance(b, iRMB))

    def __prepare_scriptable__(self):
        raise _script_error()

    def forward_intermediates(self, x):
        """The four stage outputs (strides 4, 8, 16, 32) for detection/segmentation heads."""
        self._check_input(x)
        if self.stage0[1].fused and self._infer_cpu_ok(x) and iRMB._use_infer_cpu(self, x):
            return self._forward_intermediates_infer_cpu(x)
        x = self._run_stage(self.stage0, x)
        feats = []
        for i in range(1, 5):
            x = self._run_stage(getattr(self, f"stage{i}"), x)
            feats.append(x)
        return feats

    def forward_features(self, x):
        return self.forward_intermediates(x)[-1]

    def forward_head(self, x, pre_logits=False):
        x = self.norm(x).mean((2, 3))
        return x if pre_logits else self.head(x)

    def forward(self, x):
        if self.features_only:
            return self.forward_intermediates(x)
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def reparameterize(self):
        """Fold every BatchNorm into the adjacent conv for inference, in place (sets eval)."""
        _drop_key_cache(self)
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


def list_models():
    return sorted(CONFIGS)


def create_model(name, pretrained=None, *, fused=False, num_classes=1000, in_chans=3,
                 drop_path_rate=None, features_only=False, **kwargs):
    """Build an EMO variant; ``pretrained`` is a checkpoint path (or state dict) or None."""
    if name not in CONFIGS:
        raise ValueError(f"unknown EMO model {name!r}; available: {list_models()}")
    cfg = dict(CONFIGS[name])
    if drop_path_rate is not None:
        cfg["drop_path_rate"] = drop_path_rate
    cfg.update(kwargs)
    model = EMO(**cfg, num_classes=num_classes, in_chans=in_chans, fused=fused,
                features_only=features_only)
    if pretrained is not None:
        from .checkpoint import load_checkpoint
        load_checkpoint(model, pretrained)
    return model


emo_1m = partial(create_model, "emo_1m")
emo_2m = partial(create_model, "emo_2m")
emo_5m = partial(create_model, "emo_5m")
emo_6m = partial(create_model, "emo_6m")
