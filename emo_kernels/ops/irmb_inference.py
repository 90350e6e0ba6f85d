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
import sys

import torch

from .. import backends, cpu
from ..reference import irmb_inference_ref
from ._checks import check_tensor
from .expand_dwconv_act import _validate as _validate_eda
from .expand_dwconv_act import _validate_proj

OP = "irmb_inference"


def _validate_se(cmid, x, w1, b1, w2, b2, se_act, skip):
    if w1 is None:
        if any(t is not None for t in (b1, w2, b2)):
            raise ValueError("se_reduce_bias/se_expand_* need se_reduce_weight")
        return
    if skip:
        raise ValueError("squeeze-excite with skip=True is not supported (EMO's only SE block, "
                         "the stem's, has no skip)")
    if se_act not in ("silu", "gelu", "none"):
        raise ValueError(f"se_act must be 'silu', 'gelu' or 'none', got {se_act!r}")
    check_tensor("se_reduce_weight", w1, like=x)
    if w1.dim() not in (2, 4) or w1.shape[1] != cmid or w1[0].numel() != cmid:
        raise ValueError(f"se_reduce_weight must be (R, Cmid={cmid}[, 1, 1]), got "
                         f"{tuple(w1.shape)}")
    r = w1.shape[0]
    check_tensor("se_reduce_bias", b1, shape=(r,), like=x)
    check_tensor("se_expand_weight", w2, like=x)
    if w2.dim() not in (2, 4) or w2.shape[:2] != (cmid, r) or w2[0].numel() != r:
        raise ValueError(f"se_expand_weight must be (Cmid={cmid}, R={r}[, 1, 1]), got "
                         f"{tuple(w2.shape)}")
    check_tensor("se_expand_bias", b2, shape=(cmid,), like=x)


def _validate(x, w_exp, b_exp, w_dw, b_dw, w_proj, act, stride, skip, ln_weight, ln_bias,
              w_qk, b_qk, head_dim, window_size, se=(None, None, None, None, "silu")):
    _validate_eda(x, w_exp, b_exp, w_dw, b_dw, act, stride, skip, None, None, None, None, False)
    C = x.shape[1]
    check_tensor("ln_weight", ln_weight, shape=(C,), like=x, optional=True)
    check_tensor("ln_bias", ln_bias, shape=(C,), like=x, optional=True)
    if ln_bias is not None and ln_weight is None:
        raise ValueError("ln_bias needs ln_weight")
    if w_qk is not None:
        check_tensor("w_qk", w_qk, like=x)
        if w_qk.shape[:2] != (2 * C, C) or w_qk.dim() not in (2, 4) or w_qk[0].numel() != C:
            raise ValueError(f"w_qk must be (2C={2 * C}, C={C}[, 1, 1]), got {tuple(w_qk.shape)}")
        check_tensor("b_qk", b_qk, shape=(2 * C,), like=x, optional=True)
        if not isinstance(head_dim, int) or head_dim < 1 or C % head_dim:
            raise ValueError(f"head_dim must be a positive int dividing C={C}, got {head_dim!r}")
        if not isinstance(window_size, int) or window_size < 1:
            raise ValueError(f"window_size must be a positive int, got {window_size!r}")
    elif b_qk is not None:
        raise ValueError("b_qk needs w_qk")
    _validate_se(w_dw.shape[0], x, *se, skip)
    k = w_dw.shape[-1]
    pad = -(-(k - stride) // 2)
    ho = (x.shape[2] + 2 * pad - k) // stride + 1
    wo = (x.shape[3] + 2 * pad - k) // stride + 1
    _validate_proj((x.shape[0], w_dw.shape[0], ho, wo), x, w_proj, x if skip else None)


def irmb_inference(x, w_exp, b_exp, w_dw, b_dw, w_proj, *, act="silu", stride=1, skip=False,
                   ln_weight=None, ln_bias=None, eps=1e-6, w_qk=None, b_qk=None, head_dim=None,
                   window_size=7, scale=None, se_reduce_weight=None, se_reduce_bias=None,
                   se_expand_weight=None, se_expand_bias=None, se_act="silu"):
    """See the module docstring."""
    se = (se_reduce_weight, se_reduce_bias, se_expand_weight, se_expand_bias, se_act)
    _validate(x, w_exp, b_exp, w_dw, b_dw, w_proj, act, stride, skip, ln_weight, ln_bias, w_qk,
              b_qk, head_dim, window_size, se)
    kwargs = dict(act=act, stride=stride, skip=skip, ln_weight=ln_weight, ln_bias=ln_bias,
                  eps=eps, w_qk=w_qk, b_qk=b_qk, head_dim=head_dim, window_size=window_size,
                  scale=scale)
    if se_reduce_weight is not None:
        kwargs.update(se_reduce_weight=se_reduce_weight, se_reduce_bias=se_reduce_bias,
                      se_expand_weight=se_expand_weight, se_expand_bias=se_expand_bias,
                      se_act=se_act)
    fn = backends.resolve(OP, x, w_exp, b_exp, w_dw, b_dw, w_proj, **kwargs)
    return fn(x, w_exp, b_exp, w_dw, b_dw, w_proj, **kwargs)


def _composed(x, w_exp, b_exp, w_dw, b_dw, w_proj, **kwargs):
    return irmb_inference_ref(x, w_exp, b_exp, w_dw, b_dw, w_proj, ops=sys.modules["emo_kernels"],
                              **kwargs)


backends.register(OP, "torch", _composed)
backends.register(OP, "cpu", cpu.irmb_inference_cpu, cpu.irmb_inference_can_run)


# ----- a chain of blocks, prepared once ------------------------------------------------------
CHAIN_OP = "irmb_chain"
_SE_KEYS = ("se_reduce_weight", "se_reduce_bias", "se_expand_weight", "se_expand_bias")


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
        if not blocks:
            raise ValueError("IRMBChain needs at least one block")
        self.blocks = []
        c = in_channels
        probe_hw = 7
        for i, (args, kwargs) in enumerate(blocks):
            args, kwargs = tuple(args), dict(kwargs)
            kwargs.setdefault("act", "silu")
            kwargs.setdefault("stride", 1)
            kwargs.setdefault("skip", False)
            probe = torch.empty(1, c, probe_hw, probe_hw, dtype=dtype, device=device)
            try:
                _validate(probe, *args, kwargs["act"], kwargs["stride"], kwargs["skip"],
                          kwargs.get("ln_weight"), kwargs.get("ln_bias"), kwargs.get("w_qk"),
                          kwargs.get("b_qk"), kwargs.get("head_dim"), kwargs.get("window_size", 7),
                          tuple(kwargs.get(k) for k in _SE_KEYS) + (kwargs.get("se_act", "silu"),))
            except (TypeError, ValueError) as e:
                raise type(e)(f"block {i}: {e}") from None
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
        outputs = [len(self) - 1] if outputs is None else [int(i) for i in outputs]
        if any(b <= a for a, b in zip(outputs, outputs[1:])) or \
                any(not 0 <= i < len(self) for i in outputs):
            raise ValueError(f"outputs must be increasing block indices in [0, {len(self)}), "
                             f"got {outputs}")
        fn = backends.resolve(CHAIN_OP, x, self, outputs)
        return fn(x, self, outputs)


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
