"""EMO's op calls as the fused models make them: the block shapes read off the models
(:func:`block_specs`; :func:`irmb_specs`: each iRMB as the inference plan passes it to
``irmb_inference``), synthesized arguments for each (:func:`dw_inputs`, :func:`attn_inputs`,
:func:`irmb_inputs`) and the compulsory bytes each call moves (for achieved GB/s on GPU rows);
:data:`OPS` ties them together per op.
"""
import functools
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

import emo
import emo_kernels
from bench.models import generator, memory_format, randn
from emo.inference import block_args
from emo_kernels.formulas import dw_out_size
from emo_kernels.ops.irmb_inference import ARG_NAMES as IRMB_ARG_NAMES


@dataclass(frozen=True)
class DwSpec:
    """One ``expand_dwconv_act`` call of an iRMB (per image)."""
    cin: int
    cmid: int
    k: int
    stride: int
    act: str
    skip: bool
    identity: bool       # w_exp is None (the stem iRMB)
    H: int
    W: int

    @property
    def out_hw(self):
        pad = -(-(self.k - self.stride) // 2)
        return ((self.H + 2 * pad - self.k) // self.stride + 1,
                (self.W + 2 * pad - self.k) // self.stride + 1)

    @property
    def id(self):
        return (f"Cin{self.cin}-Cmid{self.cmid}-{self.H}x{self.W}-k{self.k}-s{self.stride}-"
                f"{'id' if self.identity else self.act}{'-skip' if self.skip else ''}")


@dataclass(frozen=True)
class AttnSpec:
    """One ``window_attention`` call of an attention iRMB (per image)."""
    C: int
    head_dim: int
    H: int
    W: int
    window_size: int

    @property
    def id(self):
        return f"C{self.C}-hd{self.head_dim}-{self.H}x{self.W}-ws{self.window_size}"


@dataclass(frozen=True)
class IrmbSpec:
    """One ``irmb_inference`` call of an iRMB (per image), as the inference plan makes it
    (``emo.inference.block_args`` of the eval model: every BatchNorm folded): the input map,
    the shape of each tensor argument (None: absent, e.g. ``w_exp`` of the stem block) and
    the other keyword arguments (act, stride, skip, eps, head_dim, window_size, scale, se_act)."""
    cin: int
    H: int
    W: int
    tensors: Tuple[Tuple[str, Optional[Tuple[int, ...]]], ...]  # IRMB_ARG_NAMES, then kwargs
    options: Tuple[Tuple[str, object], ...]

    @classmethod
    def of(cls, x_shape, args, kwargs):
        """The spec of ``irmb_inference(x, *args, **kwargs)`` for an x of ``x_shape``."""
        shape = lambda t: None if t is None else tuple(t.shape)  # noqa: E731
        tensors = tuple(zip(IRMB_ARG_NAMES, map(shape, args))) + tuple(
            (n, shape(v)) for n, v in kwargs.items() if isinstance(v, torch.Tensor))
        options = tuple((n, v) for n, v in kwargs.items() if not isinstance(v, torch.Tensor))
        return cls(cin=x_shape[1], H=x_shape[2], W=x_shape[3], tensors=tensors, options=options)

    def shape(self, name):
        return dict(self.tensors).get(name)

    def option(self, name, default=None):
        return dict(self.options).get(name, default)

    @property
    def cmid(self):
        return self.shape("w_dw")[0]

    @property
    def cout(self):
        return self.shape("w_proj")[0]

    @property
    def k(self):
        return self.shape("w_dw")[-1]

    @property
    def stride(self):
        return self.option("stride", 1)

    @property
    def skip(self):
        return bool(self.option("skip", False))

    @property
    def out_hw(self):
        return dw_out_size(self.H, self.k, self.stride), dw_out_size(self.W, self.k, self.stride)

    @property
    def id(self):
        parts = [f"Cin{self.cin}-Cmid{self.cmid}-Cout{self.cout}-{self.H}x{self.W}-k{self.k}-"
                 f"s{self.stride}-{'id' if self.shape('w_exp') is None else self.option('act')}"]
        parts += ["skip"] if self.skip else []
        parts += ["ln"] if self.shape("ln_weight") is not None else []
        if self.shape("w_qk") is not None:
            parts.append(f"attn-hd{self.option('head_dim')}-ws{self.option('window_size', 7)}")
        parts += ["se"] if self.shape("se_reduce_weight") is not None else []
        return "-".join(parts)


@functools.lru_cache(maxsize=None)
def block_specs(model_name, size=224):
    """[(module name, DwSpec | AttnSpec)] for every op call of one fused forward of the model.

    Runs the model once (eval, batch 1, CPU, torch backend) with the two public ops wrapped so
    that each call records its arguments: the shapes are what the model really passes."""
    model = emo.create_model(model_name, fused=True).eval()
    calls, current = [], [None]
    hooks = [m.register_forward_pre_hook(lambda mod, inp, n=n: current.__setitem__(0, n))
             for n, m in model.named_modules() if isinstance(m, emo.iRMB)]
    orig_dw, orig_attn = emo_kernels.expand_dwconv_act, emo_kernels.window_attention

    def rec_dw(x, w_exp, b_exp, w_dw, b_dw=None, **kw):
        calls.append((current[0], DwSpec(
            cin=x.shape[1], cmid=w_dw.shape[0], k=w_dw.shape[-1], stride=kw.get("stride", 1),
            act=kw.get("act", "silu"), skip=bool(kw.get("skip", False)),
            identity=w_exp is None, H=x.shape[2], W=x.shape[3])))
        return orig_dw(x, w_exp, b_exp, w_dw, b_dw, **kw)

    def rec_attn(q, k, v, k_pad=None, **kw):
        calls.append((current[0], AttnSpec(C=q.shape[1], head_dim=kw["head_dim"], H=q.shape[2],
                                           W=q.shape[3], window_size=kw.get("window_size", 7))))
        return orig_attn(q, k, v, k_pad, **kw)

    emo_kernels.expand_dwconv_act, emo_kernels.window_attention = rec_dw, rec_attn
    try:
        with torch.no_grad(), emo_kernels.use_backend("torch"):
            model(torch.zeros(1, 3, size, size))
    finally:
        emo_kernels.expand_dwconv_act, emo_kernels.window_attention = orig_dw, orig_attn
        for h in hooks:
            h.remove()
    return tuple(calls)


@functools.lru_cache(maxsize=None)
def irmb_specs(model_name, size=224):
    """[(block name, IrmbSpec)] for every iRMB of the model, as the inference plan calls
    ``irmb_inference``: ``emo.inference.block_args`` of each block of the eval fused model,
    with the input map the block sees in one forward (batch 1, CPU, torch backend)."""
    model = emo.create_model(model_name, fused=True).eval()
    calls = []

    def record(mod, inp, n):
        call = block_args(mod)
        if call is None:
            raise ValueError(f"{model_name} {n}: irmb_inference cannot express this block")
        calls.append((n, IrmbSpec.of(inp[0].shape, *call)))
    hooks = [m.register_forward_pre_hook(lambda mod, inp, n=n: record(mod, inp, n))
             for n, m in model.named_modules() if isinstance(m, emo.iRMB)]
    try:
        with torch.no_grad(), emo_kernels.use_backend("torch"):
            model(torch.zeros(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    return tuple(calls)


def distinct_specs(models, size=224, kind=DwSpec):
    """{spec: {model: [block names]}} over the models, in order of first appearance."""
    out: Dict[object, Dict[str, List[str]]] = {}
    calls = irmb_specs if kind is IrmbSpec else block_specs
    for name in models:
        for block, spec in calls(name, size):
            if isinstance(spec, kind):
                out.setdefault(spec, {}).setdefault(name, []).append(block)
    return out


# ----- op arguments -------------------------------------------------------------------------
def dw_inputs(spec: DwSpec, batch, device, dtype, layout="nchw", train=False, seed=0):
    """(args, kwargs, leaves) for ``expand_dwconv_act`` as the fused model calls it.

    Eval (``train=False``): BN folded into the biases, no BN arguments. Train: BN with batch
    statistics (running stats updated in place), leaves require grad."""
    g = generator(device, seed)

    def r(*shape, scale=1.0):
        return randn(shape, g, device, dtype, scale)
    x = r(batch, spec.cin, spec.H, spec.W).contiguous(memory_format=memory_format(layout))
    w_exp = None if spec.identity else r(spec.cmid, spec.cin, 1, 1, scale=spec.cin ** -0.5)
    b_exp = None if spec.identity else r(spec.cmid, scale=0.1)
    w_dw = r(spec.cmid, 1, spec.k, spec.k, scale=1.0 / spec.k)
    b_dw = r(spec.cmid, scale=0.1)
    kwargs = dict(act="none" if spec.identity else spec.act, stride=spec.stride,
                  skip=spec.skip)
    leaves = [t for t in (x, w_exp, b_exp, w_dw, b_dw) if t is not None]
    if train:
        bn_w, bn_b = r(spec.cmid, scale=0.1) + 1, r(spec.cmid, scale=0.1)
        kwargs.update(bn_weight=bn_w, bn_bias=bn_b,
                      running_mean=torch.zeros(spec.cmid, device=device, dtype=dtype),
                      running_var=torch.ones(spec.cmid, device=device, dtype=dtype),
                      bn_training=True, momentum=0.1, eps=1e-6)
        leaves += [bn_w, bn_b]
        for t in leaves:
            t.requires_grad_(True)
    return (x, w_exp, b_exp, w_dw, b_dw), kwargs, leaves


def attn_inputs(spec: AttnSpec, batch, device, dtype, layout="nchw", train=False, seed=0):
    """(args, kwargs, leaves) for ``window_attention`` as the fused model calls it: q and k are
    the two channel halves of one (B, 2C, H, W) qk tensor, v a separate map."""
    g = generator(device, seed)
    fmt = memory_format(layout)
    qk = randn((batch, 2 * spec.C, spec.H, spec.W), g, device, dtype).contiguous(memory_format=fmt)
    v = randn((batch, spec.C, spec.H, spec.W), g, device, dtype).contiguous(memory_format=fmt)
    k_pad = randn((spec.C,), g, device, dtype, 0.1)
    leaves = [qk, v, k_pad]
    if train:
        for t in leaves:
            t.requires_grad_(True)
    C = spec.C
    args = (qk[:, :C], qk[:, C:], v, k_pad)
    kwargs = dict(head_dim=spec.head_dim, window_size=spec.window_size)
    return args, kwargs, leaves


def _irmb_weight(name, shape, g, device, dtype):
    """A random ``irmb_inference`` tensor argument shaped as the model's: LN weight about 1,
    biases small, weights scaled by 1/sqrt(fan-in) (the depthwise's: 1/k)."""
    if name == "ln_weight":
        return randn(shape, g, device, dtype, 0.1) + 1
    if name.startswith("b_") or name.endswith("_bias"):
        return randn(shape, g, device, dtype, 0.1)
    return randn(shape, g, device, dtype, math.prod(shape[1:]) ** -0.5)


def irmb_inputs(spec: IrmbSpec, batch, device, dtype, layout="nchw", train=False, seed=0):
    """(args, kwargs, leaves) for ``irmb_inference`` as the inference plan calls it: every
    tensor the block passes (biases included), random, in the model's shapes; the block's
    other keyword arguments as they are. Inference only: the op has no backward."""
    if train:
        raise ValueError("irmb_inference is inference only: no train (fwd+bwd) inputs")
    g = generator(device, seed)
    x = randn((batch, spec.cin, spec.H, spec.W), g, device, dtype).contiguous(
        memory_format=memory_format(layout))
    made = {n: None if s is None else _irmb_weight(n, s, g, device, dtype)
            for n, s in spec.tensors}
    args = (x,) + tuple(made.pop(n) for n in IRMB_ARG_NAMES)
    return args, dict(spec.options, **made), [x]


# ----- bytes moved (for achieved GB/s on GPU rows) ------------------------------------------
def bytes_expand_dwconv_act(spec: DwSpec, batch, elem_size, mode):
    """Compulsory memory traffic of one ``expand_dwconv_act`` call, in bytes.

    The op's docstring: a fused kernel reads x and the weights and writes z, per image
    ``e*(Cin*H*W + Cmid*Ho*Wo)``; weights ``e*(Cmid*Cin + Cmid*k*k + 2*Cmid)`` once per call.
    fwd+bwd (training) adds the backward's minimum: read x again and dz, write dx and the
    weight gradients: ``e*(Cin*H*W + Cmid*Ho*Wo + Cin*H*W)`` per image + weights again.
    (BatchNorm batch statistics and any recomputation are extra traffic a kernel may need;
    this is a lower bound, so achieved GB/s is an effective bandwidth.)"""
    ho, wo = spec.out_hw
    x_el, z_el = spec.cin * spec.H * spec.W, spec.cmid * ho * wo
    w_el = (0 if spec.identity else spec.cmid * spec.cin + spec.cmid) + spec.cmid * spec.k ** 2 + spec.cmid
    if mode == "fwd":
        return elem_size * (batch * (x_el + z_el) + w_el)
    return elem_size * (batch * (3 * x_el + 2 * z_el) + 2 * w_el)


def bytes_window_attention(spec: AttnSpec, batch, elem_size, mode):
    """Compulsory memory traffic of one ``window_attention`` call, in bytes.

    The op's docstring: a fused kernel reads q, k and v once and writes the output once:
    ``4*B*C*H*W`` elements. fwd+bwd adds the backward's minimum: read q, k, v and dout,
    write dq, dk, dv: 7 more maps, 11 in all (the forward's output, or a per-row statistic,
    re-read by a flash-style backward, is not counted)."""
    n = batch * spec.C * spec.H * spec.W
    return elem_size * n * (4 if mode == "fwd" else 11)


def bytes_irmb_inference(spec: IrmbSpec, batch, elem_size, mode):
    """Compulsory memory traffic of one ``irmb_inference`` call, in bytes: read x, write the
    output, read every weight and bias once per call, and read x again as the residual when
    ``skip`` (the D1 kernels read it in the expansion and again in the projection's epilogue).
    Per image ``e*(Cin*H*W*(1 + skip) + Cout*Ho*Wo)``. Forward only (the op has no backward).
    (LN(x), qk, the attention output and v, which the kernels write and read back between
    them, are not counted: achieved GB/s is an effective bandwidth.)"""
    if mode != "fwd":
        raise ValueError(f"irmb_inference has only a forward (mode 'fwd'), got {mode!r}")
    ho, wo = spec.out_hw
    x_el, out_el = spec.cin * spec.H * spec.W, spec.cout * ho * wo
    w_el = sum(math.prod(s) for _, s in spec.tensors if s is not None)
    return elem_size * (batch * (x_el * (2 if spec.skip else 1) + out_el) + w_el)


# ----- per op: the spec type, its arguments, its bytes, its modes --------------------------
OPS = {
    "expand_dwconv_act": dict(kind=DwSpec, inputs=dw_inputs, bytes=bytes_expand_dwconv_act,
                              modes=("fwd", "fwd+bwd")),
    "window_attention": dict(kind=AttnSpec, inputs=attn_inputs, bytes=bytes_window_attention,
                             modes=("fwd", "fwd+bwd")),
    "irmb_inference": dict(kind=IrmbSpec, inputs=irmb_inputs, bytes=bytes_irmb_inference,
                           modes=("fwd",)),  # inference only: no autograd
}
