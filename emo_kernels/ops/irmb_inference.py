"""Public op ``irmb_inference``: one whole iRMB forward for inference, in one call.

    y   = LN2d(x)                                  if ln_weight is given (eps)
    y   = window_attention(q, k, y, b_qk[C:])      if w_qk is given: [q, k] = conv1x1(y, w_qk) + b_qk
    z   = expand_dwconv_act(y, w_exp, b_exp, w_dw, b_dw, act, stride, skip)
    z   = z * sigmoid(conv1x1(se_act(conv1x1(mean(z), se_reduce_*)), se_expand_*))
                                                   if se_reduce_weight is given (needs skip=False)
    out = conv1x1(z, w_proj) (+ x if skip)

Every BatchNorm must already be folded (an input BN into w_exp/b_exp, the depthwise BN into
w_dw/b_dw: see emo.layers.fold_bn). No autograd.

Arguments
    x        (B, C, H, W) float; w_exp (Cmid, C[, 1, 1]) or None (identity, act='none');
    w_dw     (Cmid, 1, k, k); w_proj (Cout, Cmid[, 1, 1]); ln_weight/ln_bias (C,);
    w_qk     (2C, C[, 1, 1]) with b_qk (2C,), head_dim, window_size, scale: the attention.
Returns (B, Cout, Ho, Wo).

Backends: ``cpu`` (csrc/cpu/: LayerNorm, qk GEMM, attention and the fused expansion /
depthwise / projection body in one C++ call, with no Python between them: at batch 1 the
per-op Python overhead is a large part of an EMO forward); ``torch``: the composition of the
public ops ``window_attention`` and ``expand_dwconv_act`` (each dispatched to its own backend).

Memory traffic (cpu): reads x, writes LN(x), qk (2C) and the attention output (C) per pixel,
reads them back once, writes out; v and z stay in cache (see expand_dwconv_act).
"""
import inspect
import sys

import torch

from .. import backends, cpu
from ..reference import irmb_inference_ref
from ._checks import (ACTS, FLOAT_DTYPES, check_choice, check_int, check_kwargs, check_number,
                      check_tensor, check_weight_1x1)
from .expand_dwconv_act import _validate as _validate_eda
from .expand_dwconv_act import _validate_proj, _z_shape
from .window_attention import check_head_dim

OP = "irmb_inference"
ARG_NAMES = ("w_exp", "b_exp", "w_dw", "b_dw", "w_proj")  # after x
_SE_KEYS = ("se_reduce_weight", "se_reduce_bias", "se_expand_weight", "se_expand_bias")


def _validate_se(cmid, x, w1, b1, w2, b2, se_act, skip):
    check_choice("se_act", se_act, ACTS)
    if w1 is None:
        if any(t is not None for t in (b1, w2, b2)):
            raise ValueError("se_reduce_bias/se_expand_* need se_reduce_weight")
        return
    if skip:
        raise ValueError("squeeze-excite with skip=True is not supported (EMO's only SE block, "
                         "the stem's, has no skip)")
    r, _ = check_weight_1x1("se_reduce_weight", w1, x, cols=cmid, source="z")
    check_tensor("se_reduce_bias", b1, shape=(r,), like=x)
    check_weight_1x1("se_expand_weight", w2, x, rows=cmid, cols=r,
                     source="the squeeze (R = se_reduce_weight.shape[0])")
    check_tensor("se_expand_bias", b2, shape=(cmid,), like=x)


def _validate(x, w_exp, b_exp, w_dw, b_dw, w_proj, *, act="silu", stride=1, skip=False,
              ln_weight=None, ln_bias=None, eps=1e-6, w_qk=None, b_qk=None, head_dim=None,
              window_size=7, scale=None, se_reduce_weight=None, se_reduce_bias=None,
              se_expand_weight=None, se_expand_bias=None, se_act="silu"):
    """The checks of ``irmb_inference`` (same signature)."""
    _validate_eda(x, w_exp, b_exp, w_dw, b_dw, act, stride, skip, None, None, None, None, False,
                  eps=eps)
    C = x.shape[1]
    check_tensor("ln_weight", ln_weight, shape=(C,), like=x, optional=True)
    check_tensor("ln_bias", ln_bias, shape=(C,), like=x, optional=True)
    if ln_bias is not None and ln_weight is None:
        raise ValueError("ln_bias needs ln_weight")
    check_int("window_size", window_size, min=1)
    check_number("scale", scale, optional=True)
    if head_dim is not None:
        check_int("head_dim", head_dim, min=1)
    if w_qk is not None:
        check_weight_1x1("w_qk", w_qk, x, rows=2 * C, cols=C)
        check_tensor("b_qk", b_qk, shape=(2 * C,), like=x, optional=True)
        check_head_dim(head_dim, C)
    elif b_qk is not None:
        raise ValueError("b_qk needs w_qk")
    _validate_se(w_dw.shape[0], x, se_reduce_weight, se_reduce_bias, se_expand_weight,
                 se_expand_bias, se_act, skip)
    _validate_proj(_z_shape(x, w_dw, stride), x, w_proj, None)
    if skip and w_proj.shape[0] != C:
        raise ValueError(f"skip=True adds x to the output, so w_proj must have C={C} output "
                         f"channels (Cout = C), got {w_proj.shape[0]}")


def irmb_inference(x, w_exp, b_exp, w_dw, b_dw, w_proj, *, act="silu", stride=1, skip=False,
                   ln_weight=None, ln_bias=None, eps=1e-6, w_qk=None, b_qk=None, head_dim=None,
                   window_size=7, scale=None, se_reduce_weight=None, se_reduce_bias=None,
                   se_expand_weight=None, se_expand_bias=None, se_act="silu"):
    """See the module docstring."""
    kwargs = dict(act=act, stride=stride, skip=skip, ln_weight=ln_weight, ln_bias=ln_bias,
                  eps=eps, w_qk=w_qk, b_qk=b_qk, head_dim=head_dim, window_size=window_size,
                  scale=scale, se_reduce_weight=se_reduce_weight, se_reduce_bias=se_reduce_bias,
                  se_expand_weight=se_expand_weight, se_expand_bias=se_expand_bias,
                  se_act=se_act)
    _validate(x, w_exp, b_exp, w_dw, b_dw, w_proj, **kwargs)
    if se_reduce_weight is None:
        for k in _SE_KEYS + ("se_act",):
            del kwargs[k]
    fn = backends.resolve(OP, x, w_exp, b_exp, w_dw, b_dw, w_proj, **kwargs)
    return fn(x, w_exp, b_exp, w_dw, b_dw, w_proj, **kwargs)


KEYWORDS = tuple(n for n, p in inspect.signature(irmb_inference).parameters.items()
                 if p.kind is p.KEYWORD_ONLY)


def _composed(x, w_exp, b_exp, w_dw, b_dw, w_proj, **kwargs):
    return irmb_inference_ref(x, w_exp, b_exp, w_dw, b_dw, w_proj, ops=sys.modules["emo_kernels"],
                              **kwargs)


backends.register(OP, "torch", _composed)
backends.register(OP, "cpu", cpu.irmb_inference_cpu, cpu.irmb_inference_can_run)


# ----- a chain of blocks, prepared once ------------------------------------------------------
CHAIN_OP = "irmb_chain"


class IRMBChain:
    """``irmb_inference`` over a chain of blocks (the output of one is the input of the next),
    prepared once: the arguments are validated at construction, a call checks only ``x``.

    ``blocks``: a list of ``(args, kwargs)``, the arguments of ``irmb_inference`` after x:
    ``args = (w_exp, b_exp, w_dw, b_dw, w_proj)``, kwargs its keyword arguments.
    ``chain(x, outputs=(i, j, ...))`` returns the outputs of blocks i, j, ... (increasing;
    default: the last block's). Backends: ``cpu`` runs the whole chain as one C++ call (no
    Python between blocks), on copies of the weights prepared at the first call (the 1x1
    weights packed for its GEMM kernel, the depthwise weights transposed) and remade when a
    weight tensor was modified in place since (version counters;
    inference tensors have none: an in-place change of one, inside ``torch.inference_mode``, is
    not seen -- build a new chain); ``torch`` calls ``irmb_inference`` block by block.
    """

    def __init__(self, blocks, in_channels, dtype, device):
        check_int("in_channels", in_channels, min=1)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be one of {FLOAT_DTYPES}, got {dtype!r}")
        if not blocks:
            raise ValueError("IRMBChain needs at least one block")
        self.blocks = []
        c = in_channels
        probe_hw = 7
        for i, block in enumerate(blocks):
            try:
                args, kwargs = _block_args(block)
                probe = torch.empty(1, c, probe_hw, probe_hw, dtype=dtype, device=device)
                _validate(probe, *args, **kwargs)
            except (TypeError, ValueError) as e:
                raise type(e)(f"block {i}: {e}") from None
            kwargs.setdefault("act", "silu")
            kwargs.setdefault("stride", 1)
            kwargs.setdefault("skip", False)
            self.blocks.append((args, kwargs))
            c = args[4].shape[0]
        self.in_channels, self.out_channels = in_channels, c
        self.dtype, self.device = dtype, torch.device(device)
        self.tensors = [t for a, k in self.blocks for t in (*a, *k.values())
                        if isinstance(t, torch.Tensor)]
        self.kernel_sizes = {a[2].shape[-1] for a, _ in self.blocks}

    def __len__(self):
        return len(self.blocks)

    def __call__(self, x, outputs=None):
        check_tensor("x", x, dim=4)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"the chain expects {self.in_channels} input channels, got shape "
                             f"{tuple(x.shape)}")
        if x.dtype != self.dtype or x.device != self.device:
            raise TypeError(f"the chain's weights are {self.dtype} on {self.device}, the input is "
                            f"{x.dtype} on {x.device}")
        outputs = [len(self) - 1] if outputs is None else _check_outputs(outputs, len(self))
        fn = backends.resolve(CHAIN_OP, x, self, outputs)
        return fn(x, self, outputs)


def _block_args(block):
    """A chain block as (args tuple, kwargs dict), checked for form, arity and keywords."""
    if not (isinstance(block, (tuple, list)) and len(block) == 2 and
            isinstance(block[0], (tuple, list)) and isinstance(block[1], dict)):
        raise TypeError(f"a block must be an (args, kwargs) pair: a tuple of {ARG_NAMES} and a "
                        f"dict of keyword arguments, got {block!r:.80}")
    args, kwargs = tuple(block[0]), dict(block[1])
    if len(args) != len(ARG_NAMES):
        raise TypeError(f"args must be the {len(ARG_NAMES)} arguments {ARG_NAMES}, got "
                        f"{len(args)} values")
    check_kwargs("irmb_inference", kwargs, KEYWORDS)
    return args, kwargs


def _check_outputs(outputs, n):
    """Chain output indices: an iterable of ints (not bools, floats or a str), increasing, in
    [0, n)."""
    if isinstance(outputs, (str, bytes)) or not hasattr(outputs, "__iter__"):
        raise TypeError(f"outputs must be a list of block indices (ints), got {outputs!r}")
    outputs = list(outputs)
    bad = [i for i in outputs if isinstance(i, bool) or not hasattr(type(i), "__index__")]
    if bad:
        raise TypeError(f"outputs must be ints (block indices), got {bad[0]!r} "
                        f"({type(bad[0]).__name__}) in {outputs!r}")
    outputs = [i.__index__() for i in outputs]
    if any(b <= a for a, b in zip(outputs, outputs[1:])) or \
            any(not 0 <= i < n for i in outputs):
        raise ValueError(f"outputs must be increasing block indices in [0, {n}), got {outputs}")
    return outputs


def _chain_composed(x, chain, outputs):
    import emo_kernels
    outs, want = [], set(outputs)
    for i, (args, kwargs) in enumerate(chain.blocks):
        x = emo_kernels.irmb_inference(x, *args, **kwargs)
        if i in want:
            outs.append(x)
    return outs


backends.register(CHAIN_OP, "torch", _chain_composed)
backends.register(CHAIN_OP, "cpu", cpu.irmb_chain_cpu, cpu.irmb_chain_can_run)
