"""Inference preparation for EMO and EMOv2: every BatchNorm folded, each iRMB (EMOv2's iiRMB,
its hybrid attention blocks in ``irmb_inference``'s EMOv2 form, LayerScale folded into the
projection) turned into the arguments of ``emo_kernels.irmb_inference``, the blocks after the
stem (EMO v1: the stem block and stages 1-4; EMOv2: stages 1-4) into one
``emo_kernels.IRMBChain``, the stem's convolutions (v1: one; EMOv2: three) folded. One
mechanism, two ways in:

* **The plain ``fused=True`` model** (eval mode, no grad needed, CPU input): every forward
  prepares afresh from the model as it is at that moment -- current weights, BatchNorm
  statistics, ``eps`` values, attributes and submodules. Nothing is cached, so no edit can be
  missed, however it was made (in place, through ``.data``, by assigning an attribute or a
  submodule, from another thread: a forward reads the weights once, when it starts; a
  concurrent write is seen by the next forward). Folding and packing cost a little per call
  (README, "fused=True on CPU").
* **``InferencePlan``** (``emo.prepare_inference(model)`` or ``model.prepare_inference()``):
  the same preparation done once, on copies, frozen -- as ``torch.jit.freeze`` or an exported
  engine. Contract: a plan computes what the eval-mode model computed when the plan was made.
  Later edits of the model never reach it (it shares no tensor with the model); after an edit,
  make a new plan. Its tensors are inference tensors, so an in-place write to one outside
  ``torch.inference_mode`` raises instead of going unnoticed.

Device-agnostic: the prepared arguments are plain tensors on the model's device. A CPU chain
runs on the ``cpu`` backend (one C++ call, weights packed once per chain); a CUDA chain on the
``triton`` backend when it is selected (its chain runner: weights transposed once per chain,
two or three kernels per block) -- ``auto`` does not pick GPU kernels without a committed GPU
measurement, so the chain then calls ``irmb_inference`` block by block on the backend that
serves the device. (The plain model takes this path on CPU and CUDA; elsewhere it runs the
autograd-fused forward.) ``InferencePlan.cuda_graph(example)`` (or
``emo.prepare_inference(model, example)``) captures a CUDA plan's whole forward in a CUDA graph:
``GraphedPlan``.

A block whose form ``irmb_inference`` cannot express (a module replaced by one of another
kind or configuration, a BatchNorm in training mode or without running statistics, a
BatchNorm before attention: padded pixels carry the unfolded qk / v biases) is not prepared:
the plain model runs it through its general fused forward, and ``InferencePlan`` refuses the
model with a ``ValueError``.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules import module as _module

import emo_kernels
from emo_kernels.formulas import dw_padding, fold_affine, fold_affine_into_next_1x1

from .layers import (IDENTITY, SE, ConvNormAct, DropPath, LayerNorm2d, LayerScale2d, StemConv,
                     is_tracing, norm_is_affine, norm_kind, norm_scale_shift)

# ----- one block -----------------------------------------------------------------------------
def _bn_scale_shift(bn):
    """(scale, shift) of a norm that is now a fixed per-channel affine map (an eval BatchNorm
    or SyncBatchNorm with running statistics, or a frozen BN: ``layers.norm_is_affine``), read
    now; else None (an identity is handled by the callers)."""
    if norm_kind(bn) == IDENTITY or not norm_is_affine(bn):
        return None
    return norm_scale_shift(bn)


def _is_act(m, name):
    if name == "silu":
        return type(m) is nn.SiLU
    if name == "gelu":
        return type(m) is nn.GELU and m.approximate == "none"
    return name == "none" and type(m) is nn.Identity


def _conv_ok(conv, k, stride=1, groups=1, bias=None):
    """conv is a plain nn.Conv2d k x k with EMO's padding; bias True/False: required/absent."""
    pad = dw_padding(k, stride)
    return (type(conv) is nn.Conv2d and conv.kernel_size == (k, k)
            and conv.stride == (stride, stride) and conv.padding == (pad, pad)
            and conv.dilation == (1, 1) and conv.groups == groups
            and conv.padding_mode == "zeros" and (bias is None or (conv.bias is not None) == bias))


def cna_ok(m, k, stride=1, groups=1, bias=None, act="none"):
    """m is a ConvNormAct conv -> Identity -> act."""
    return (type(m) is ConvNormAct and _conv_ok(m.conv, k, stride, groups, bias)
            and type(m.norm) is nn.Identity and _is_act(m.act, act))


def fused_structure_ok(blk):
    """Whether the modules of ``blk`` that the fused ops replace are the plain ones the ops
    compute: the depthwise conv (k x k, EMO's padding, groups = channels, no dilation) with
    SiLU after its norm, the 1x1 expansion ``v`` (when present) with the block's activation,
    and the qk 1x1 conv with bias of an attention block. (The norms are checked by the
    callers; the projection and SE run as modules.)"""
    cl = blk.conv_local
    if type(cl) is not ConvNormAct or type(cl.conv) is not nn.Conv2d:
        return False
    k, cmid = cl.conv.kernel_size[0], cl.conv.out_channels
    if not (_conv_ok(cl.conv, k, blk.stride, cmid) and _is_act(cl.act, "silu")):
        return False
    if type(blk.v) is not nn.Identity and not cna_ok(blk.v, 1, bias=None, act=blk.act):
        return False
    return not blk.attn or cna_ok(blk.qk, 1, bias=True)


def block_args(blk):
    """The iRMB ``blk`` as ``irmb_inference`` arguments ``(args, kwargs)`` (after x), every
    BatchNorm folded, all read from the block's current modules; or None when the block has a
    part that op cannot express (see the module docstring). New tensors on every call."""
    hybrid = getattr(blk, "hybrid", False)  # EMOv2's hybrid attention block
    if any(m.training for m in blk.modules()) or type(blk.drop_path) not in (nn.Identity,
                                                                            DropPath) \
            or not (fused_structure_ok(blk) if not hasattr(type(blk), "fused_reason")
                    else blk.fused_reason is None):  # an iiRMB checks its own parts
        return None
    cl = blk.conv_local
    w_dw, b_dw = cl.conv.weight, cl.conv.bias
    if type(cl.norm) is not nn.Identity:
        bn = _bn_scale_shift(cl.norm)
        if bn is None:
            return None
        w_dw, b_dw = fold_affine(w_dw, b_dw, *bn)
    w_exp = b_exp = None
    if type(blk.v) is not nn.Identity:
        w_exp, b_exp = blk.v.conv.weight.flatten(1), blk.v.conv.bias
    kw = dict(act=blk.act if w_exp is not None else "none", stride=blk.stride,
              skip=blk.has_skip)

    norm = blk.norm
    if type(norm) is LayerNorm2d and type(norm.norm) is nn.LayerNorm \
            and len(norm.norm.normalized_shape) == 1:
        ln = norm.norm
        w = ln.weight if ln.weight is not None else torch.ones(
            ln.normalized_shape, dtype=w_dw.dtype, device=w_dw.device)
        kw.update(ln_weight=w, ln_bias=ln.bias, eps=ln.eps)
    elif type(norm) is not nn.Identity and not (blk.attn or hybrid) and w_exp is not None \
            and _bn_scale_shift(norm) is not None:
        w_exp, b_exp = fold_affine_into_next_1x1(w_exp, b_exp, *_bn_scale_shift(norm))
    elif type(norm) is not nn.Identity:
        return None

    if blk.attn or hybrid:
        attn = blk if blk.attn else blk.eops[0]
        kw.update(w_qk=attn.qk.conv.weight.flatten(1), b_qk=attn.qk.conv.bias,
                  head_dim=attn.head_dim, window_size=attn.window_size, scale=attn.scale)
    if hybrid:  # v = act(W_exp y + b_exp) first, the sum of both partitions attends over it
        kw.update(partition="hybrid", attn_pre=False)
    se = blk.se
    if type(se) is SE and not blk.has_skip:
        if not (_conv_ok(se.conv_reduce, 1, bias=True) and _conv_ok(se.conv_expand, 1, bias=True)
                and _is_act(se.act, se.act_name)):
            return None
        kw.update(se_reduce_weight=se.conv_reduce.weight, se_reduce_bias=se.conv_reduce.bias,
                  se_expand_weight=se.conv_expand.weight, se_expand_bias=se.conv_expand.bias,
                  se_act=se.act_name)
    elif type(se) is not nn.Identity:
        return None
    if not cna_ok(blk.proj, 1, bias=False):
        return None
    w_proj = blk.proj.conv.weight.flatten(1)
    ls = getattr(blk, "ls", None)  # EMOv2's LayerScale after the projection: folded into it
    if ls is not None:
        if type(ls) is not LayerScale2d:
            return None
        w_proj = w_proj * ls.gamma.reshape(-1, 1)
    args = (w_exp, b_exp, w_dw, b_dw, w_proj)
    detach = lambda t: t.detach() if isinstance(t, torch.Tensor) else t  # noqa: E731
    return tuple(map(detach, args)), {n: detach(v) for n, v in kw.items()}


def stem_args(stem):
    """One stem layer with its BatchNorm folded: ``(weight (channels_last), bias, stride,
    padding, groups, act)``, read now; None when it is not one of EMO's (v1's ``StemConv``,
    EMOv2's conv + BN + act ``ConvNormAct``s), or has hooks, or trains."""
    if _hooked(stem.modules()) or any(m.training for m in stem.modules()):
        return None
    act = "none"
    if type(stem) is StemConv and len(stem.convs) == 1 and type(stem.convs[0]) is nn.Sequential \
            and len(stem.convs[0]) == 2:
        conv, norm = stem.convs[0]
    elif type(stem) is ConvNormAct:
        conv, norm = stem.conv, stem.norm
        act = next((a for a in ("none", "silu", "gelu") if _is_act(stem.act, a)), None)
    else:
        return None
    if act is None or type(conv) is not nn.Conv2d or conv.dilation != (1, 1) \
            or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return None
    w, b = conv.weight, conv.bias
    if type(norm) is not nn.Identity:
        bn = _bn_scale_shift(norm)
        if bn is None:
            return None
        w, b = fold_affine(w, b, *bn)
    return (w.detach().contiguous(memory_format=torch.channels_last),
            None if b is None else b.detach(), conv.stride, conv.padding, conv.groups, act)


def stem_steps(model):
    """The layers of the model's stem (the modules of stage 0 before its first iRMB) as
    ``stem_args`` tuples, or None when one of them is not such a layer."""
    steps = [stem_args(m) for m in _stem_modules(model)]
    return None if not steps or any(s is None for s in steps) else tuple(steps)


def run_stem(steps, x):
    """x through the prepared stem layers (channels_last convolutions, their activations)."""
    x = x.contiguous(memory_format=torch.channels_last)
    for w, b, stride, padding, groups, act in steps:
        x = F.conv2d(x, w, b, stride, padding, 1, groups)
        x = F.silu(x) if act == "silu" else F.gelu(x) if act == "gelu" else x
    return x


def _hooked(modules):
    return bool(_module._global_forward_hooks or _module._global_forward_pre_hooks or any(
        m._forward_hooks or m._forward_pre_hooks for m in modules))


# ----- the plain fused model: prepared on every call -------------------------------------------
def active(module, x):
    """Whether a fused ``module`` (an iRMB or EMO) takes the prepared inference path for x:
    eval mode, a CPU or CUDA input, no gradient needed, no tracer recording
    (``layers.is_tracing``: the kernel calls are invisible to tracers) and no autocast (the
    path computes in x's dtype; the autograd-fused forward casts as autocast does)."""
    if is_tracing(x) or module.training or x.device.type not in ("cpu", "cuda") \
            or torch.is_autocast_enabled(x.device.type):  # a tracer first: x may be a Proxy
        return False
    return not (torch.is_grad_enabled() and (
        x.requires_grad or any(p.requires_grad for p in module.parameters())))


def irmb_forward(blk, x):
    """One fused iRMB in inference, prepared now: one ``irmb_inference`` call (the general
    fused forward when the block has a form that op does not take)."""
    call = block_args(blk)
    if call is None:
        return blk._forward_fused(x)
    return emo_kernels.irmb_inference(x, *call[0], **call[1])


def _n_stem(model):
    """How many modules of stage 0 form the stem: those before its first iRMB (EMO v1: the
    stem conv, then the stem block; EMOv2: three layers, no block)."""
    from .model import iRMB
    mods = list(model.stage0)
    return next((i for i, m in enumerate(mods) if isinstance(m, iRMB)), len(mods))


def _stem_modules(model):
    return list(model.stage0)[:_n_stem(model)]


def _blocks(model):
    stages = [getattr(model, f"stage{i}") for i in range(5)]
    return stages, list(stages[0])[_n_stem(model):] + [b for s in stages[1:] for b in s]


def _chain(model, blocks, dtype, device):
    """(IRMBChain, stage-end indices) of the blocks prepared now, or (None, None)."""
    calls = [block_args(b) for b in blocks]
    if any(c is None for c in calls):
        return None, None
    return _chain_from(calls, model, blocks, dtype, device)


def _chain_from(calls, model, blocks, dtype, device):
    (w_exp, _, w_dw, _, _), _ = calls[0]
    c_in = w_dw.shape[0] if w_exp is None else w_exp.shape[1]
    n = [len(getattr(model, f"stage{i}")) for i in range(1, 5)]
    ends = [len(blocks) - sum(n) - 1 + sum(n[:i + 1]) for i in range(4)]
    return emo_kernels.IRMBChain(calls, c_in, dtype, device), ends


def intermediates(model, x):
    """The four stage outputs of a fused EMO / EMOv2 in inference (``active``), prepared now
    from the model as it is: the stem's convolutions with their BNs folded, then the blocks
    (v1: the stem block and stages 1-4) as one ``IRMBChain``. None when that does not apply --
    not ``active``, a block not fused or not an iRMB, a block or stage with forward hooks (they
    must fire), a block the chain cannot take: the model then runs module by module (each
    fused block still prepared per call)."""
    from .emo2 import iiRMB
    from .model import iRMB
    if not active(model, x) or torch.compiler.is_compiling():
        return None  # under torch.compile: block by block, one irmb_inference op each
    stages, blocks = _blocks(model)
    if not blocks or not all(type(b) in (iRMB, iiRMB) and b.fused for b in blocks) \
            or _hooked(stages + blocks):
        return None
    with torch.no_grad():
        stem = stem_steps(model)
        chain, ends = _chain(model, blocks, x.dtype, x.device)
        if chain is None:
            return None
        if stem is None:
            for m in _stem_modules(model):
                x = m(x)
        else:
            x = run_stem(stem, x)
        return chain(x, outputs=ends)


# ----- the explicit, frozen plan ------------------------------------------------------------
class InferencePlan:
    """A frozen inference plan of an EMO model (any ``fused`` setting; eval mode required, as
    for ``torch.jit.freeze``). ``plan(x)`` returns what ``model(x)`` returned when the plan was
    made (logits, or the four stage outputs for a ``features_only`` model);
    ``plan.forward_intermediates(x)`` the four stage outputs. Hooks are not run.

    The plan holds its own copies -- every BatchNorm folded, inference tensors -- and the chain
    packs them once, at its first CPU call. **Edits of the model after the plan was made do not
    reach the plan: make a new plan** (``model.prepare_inference()``). An in-place write to a
    plan tensor outside ``torch.inference_mode`` raises; inside it, it is not seen (the packs
    are not remade) -- do not edit a plan.
    """

    def __init__(self, model):
        from .model import EMO, iRMB
        if not isinstance(model, EMO):
            raise TypeError(f"InferencePlan takes an emo.EMO model, got {type(model).__name__}")
        from .emo2 import iiRMB
        if any(m.training for m in model.modules()):
            raise ValueError("InferencePlan needs the model in eval mode (call model.eval())")
        stages, blocks = _blocks(model)
        bad = [i for i, b in enumerate(blocks) if type(b) not in (iRMB, iiRMB)]
        if bad or not blocks:
            raise ValueError(f"InferencePlan: blocks {bad} are not iRMBs")
        head = model.head
        headless = model.features_only and type(model.norm) is nn.Identity
        if not headless and (type(model.norm) is not LayerNorm2d
                             or type(model.norm.norm) is not nn.LayerNorm
                             or type(head) not in (nn.Linear, nn.Identity)):
            raise ValueError("InferencePlan: the model's norm or head is not EMO's")
        if getattr(model, "num_stages", 4) != 4 or getattr(model, "global_pool", "avg") != "avg":
            raise ValueError("InferencePlan takes EMO with its 4 stages and global_pool='avg' "
                             "(the model was pruned or pools otherwise)")
        stem = stem_steps(model)
        if stem is None:
            raise ValueError("InferencePlan: the stem is not EMO's (convolutions with a "
                             "BatchNorm and an activation, no hooks)")
        ln = None if headless else model.norm.norm
        with torch.inference_mode():  # copies: inference tensors, no storage shared
            copy = lambda t: t.clone() if isinstance(t, torch.Tensor) else t  # noqa: E731
            calls = []
            for i, b in enumerate(blocks):
                call = block_args(b)
                if call is None:
                    raise ValueError(f"InferencePlan: block {i} has a form irmb_inference "
                                     "cannot take")
                calls.append((tuple(map(copy, call[0])), {k: copy(v) for k, v in
                                                          call[1].items()}))
            self.stem = tuple(tuple(map(copy, step)) for step in stem)
            self.norm = None if headless else (ln.normalized_shape, copy(ln.weight),
                                               copy(ln.bias), ln.eps)
            self.head = None if type(head) is nn.Identity else (copy(head.weight),
                                                                copy(head.bias))
        w = self.stem[0][0]
        self.dtype, self.device = w.dtype, w.device
        self.in_chans, self.features_only = model.in_chans, model.features_only
        self.out_indices = tuple(getattr(model, "out_indices", range(4)))
        self.chain, self.ends = _chain_from(calls, model, blocks, w.dtype, w.device)

    def forward_intermediates(self, x):
        from .model import EMO
        EMO._check_input(self, x)
        if x.dtype != self.dtype or x.device != self.device:
            raise TypeError(f"the plan's weights are {self.dtype} on {self.device}, the input "
                            f"is {x.dtype} on {x.device} (make the plan from a model there)")
        with torch.no_grad():
            return self.chain(run_stem(self.stem, x), outputs=self.ends)

    def forward_head(self, x, pre_logits=False):
        if self.norm is None:
            raise ValueError("the plan of a features_only model has no norm and head")
        shape, w, b, eps = self.norm
        with torch.no_grad():
            x = F.layer_norm(x.permute(0, 2, 3, 1), shape, w, b, eps).mean((1, 2))
            return x if pre_logits or self.head is None else F.linear(x, *self.head)

    def __call__(self, x):
        feats = self.forward_intermediates(x)
        if self.features_only:
            return [feats[i] for i in self.out_indices]
        return self.forward_head(feats[-1])


    def cuda_graph(self, example):
        """This plan captured in a CUDA graph for inputs shaped like ``example``
        (:class:`GraphedPlan`; eager launches where capture is impossible)."""
        return GraphedPlan(self, example)


def _clone(out):
    return [t.clone() for t in out] if isinstance(out, (list, tuple)) else out.clone()


def _no_capture_reason(example):
    if example.device.type != "cuda" or not torch.cuda.is_available():
        return (f"the example is on {example.device}: CUDA graphs need a CUDA device; the plan "
                "runs eagerly")
    return None


class GraphedPlan:
    """An ``InferencePlan`` whose whole forward (stem, every block's kernels, head) is captured
    once in a CUDA graph and replayed with no Python between kernels: ``graphed(x)`` copies x
    into the graph's input, replays it and returns copies of its outputs (a later call does not
    overwrite what an earlier one returned).

    Capture needs a CUDA ``example`` (its shape, dtype and device are the graph's); the kernels
    are the ones the backend selection in force at capture time picks (``use_backend``) --
    later selections do not change a captured graph. An input of another shape, dtype or
    device runs the plan eagerly (same results, no replay). Where capture is impossible (a CPU
    plan, or an op that cannot be captured) the plan runs eagerly: ``graphed.reason`` says why
    (None when captured), and a failed capture warns. The plan is frozen, so the graph is too.
    """

    def __init__(self, plan, example):
        if not isinstance(plan, InferencePlan):
            raise TypeError(f"GraphedPlan takes an InferencePlan, got {type(plan).__name__}")
        if not isinstance(example, torch.Tensor):
            raise TypeError(f"example must be a tensor, got {type(example).__name__}")
        self.plan, self.graph = plan, None
        self.reason = _no_capture_reason(example)
        if self.reason is not None:
            return
        try:
            self._capture(example)
        except Exception as e:  # noqa: BLE001  (any capture failure: eager launches instead)
            import warnings
            self.graph = None
            self.reason = f"CUDA graph capture failed ({type(e).__name__}: {e})"
            warnings.warn(f"{self.reason}; the plan runs eagerly", RuntimeWarning, stacklevel=2)

    def _capture(self, example):
        x = example.detach().clone(memory_format=torch.channels_last)
        stream = torch.cuda.Stream(device=x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(stream):  # warm-up: kernels compiled, weights prepared, caches
            for _ in range(2):
                self.plan(x)
        torch.cuda.current_stream(x.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.plan(x)
        self.graph, self.static_in, self.static_out = graph, x, out

    def __call__(self, x):
        if self.graph is None or not isinstance(x, torch.Tensor) or x.shape != \
                self.static_in.shape or x.dtype != self.static_in.dtype or \
                x.device != self.static_in.device:
            return self.plan(x)
        self.static_in.copy_(x)
        self.graph.replay()
        return _clone(self.static_out)


def prepare_inference(model, example=None):
    """A frozen ``InferencePlan`` of the eval-mode ``model`` (see its contract); with an
    ``example`` input, that plan captured in a CUDA graph (``GraphedPlan``: eager where
    capture is impossible, ``.reason`` says why)."""
    plan = InferencePlan(model)
    return plan if example is None else plan.cuda_graph(example)
