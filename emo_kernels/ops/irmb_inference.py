"""Public op ``irmb_inference``: one whole iRMB forward for inference, in one call.

    y   = LN2d(x)                                  if ln_weight is given (eps)
    y   = window_attention(q, k, y, b_qk[C:])      if w_qk is given: [q, k] = conv1x1(y, w_qk) + b_qk
    z   = expand_dwconv_act(y, w_exp, b_exp, w_dw, b_dw, act, stride, skip)

or, with ``attn_pre=False`` (EMOv2's hybrid attention block: the expansion before the attention)

    v   = act(conv1x1(y, w_exp) + b_exp)
    y   = window_attention(q, k, v, b_qk[C:], v_pad=act(b_exp), partition=partition)
    z   = expand_dwconv_act(y, None, None, w_dw, b_dw, "none", stride, skip)
    z   = z * sigmoid(conv1x1(se_act(conv1x1(mean(z), se_reduce_*)), se_expand_*))
                                                   if se_reduce_weight is given (needs skip=False)
    out = conv1x1(z, w_proj) (+ x if skip)

Every BatchNorm must already be folded (an input BN into w_exp/b_exp, the depthwise BN into
w_dw/b_dw: see emo.layers.fold_bn). No autograd.

Arguments
    x        (B, C, H, W) float; w_exp (Cmid, C[, 1, 1]) or None (identity, act='none');
    w_dw     (Cmid, 1, k, k); w_proj (Cout, Cmid[, 1, 1]); ln_weight/ln_bias (C,);
    w_qk     (2C, C[, 1, 1]) with b_qk (2C,), head_dim, window_size, scale: the attention;
             partition: "remote" (EMO's strided windows), "close" or "hybrid" (EMOv2), as in
             ``window_attention``; attn_pre: True (EMO v1: attention on y, then the
             expansion) or False (EMOv2: the attention mixes the expanded v, whose padded
             pixels carry act(b_exp); Cmid a multiple of the heads).
Returns (B, Cout, Ho, Wo).

Backends (emo_kernels/backends/): ``cpu`` (csrc/cpu/: LayerNorm, qk GEMM, attention and the
fused expansion / depthwise / projection body in one C++ call (attn_pre=False: the qk and
expansion GEMMs, the attention over v, then the depthwise / projection body), with no Python between them: at
batch 1 the per-op Python overhead is a large part of an EMO forward; it also runs a whole
prepared chain of blocks, ``emo_kernels.plan.IRMBChain``, in one call); ``torch``: the
composition of the public ops ``window_attention`` and ``expand_dwconv_act`` (each dispatched
to its own backend).

Memory traffic (cpu): reads x, writes LN(x), qk (2C) and the attention output (C) per pixel,
reads them back once, writes out; v and z stay in cache (see expand_dwconv_act). With
attn_pre=False, v (Cmid) and the attention output (Cmid, per partition) are written and read
once more: the attention needs whole windows of v.
"""
import inspect

from .. import dispatch
from ._checks import ACTS, check_choice, check_int, check_number, check_tensor, check_weight_1x1
from .expand_dwconv_act import _validate as _validate_eda
from .expand_dwconv_act import z_shape
from .window_attention import PARTITIONS, check_head_dim

OP = "irmb_inference"
ARG_NAMES = ("w_exp", "b_exp", "w_dw", "b_dw", "w_proj")  # the positional ones after x
EMO2_DEFAULTS = {"partition": "remote", "attn_pre": True}  # the keywords of EMOv2's form
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


def validate(x, w_exp, b_exp, w_dw, b_dw, w_proj, *, act="silu", stride=1, skip=False,
              ln_weight=None, ln_bias=None, eps=1e-6, w_qk=None, b_qk=None, head_dim=None,
              window_size=7, scale=None, se_reduce_weight=None, se_reduce_bias=None,
              se_expand_weight=None, se_expand_bias=None, se_act="silu", partition="remote",
              attn_pre=True):
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
    if not isinstance(partition, str) or partition not in PARTITIONS:
        raise ValueError(f"partition must be one of {PARTITIONS}, got {partition!r}")
    if not isinstance(attn_pre, bool):
        raise TypeError(f"attn_pre must be a bool, got {attn_pre!r}")
    if w_qk is not None:
        check_weight_1x1("w_qk", w_qk, x, rows=2 * C, cols=C)
        check_tensor("b_qk", b_qk, shape=(2 * C,), like=x, optional=True)
        check_head_dim(head_dim, C)
        cmid = w_dw.shape[0]
        if not attn_pre and cmid % (C // head_dim):
            raise ValueError(f"attn_pre=False attends over the expanded v: its Cmid={cmid} "
                             f"channels must be a multiple of the {C // head_dim} heads")
    elif b_qk is not None:
        raise ValueError("b_qk needs w_qk")
    elif partition != "remote" or not attn_pre:
        raise ValueError("partition and attn_pre=False describe the attention: they need w_qk")
    _validate_se(w_dw.shape[0], x, se_reduce_weight, se_reduce_bias, se_expand_weight,
                 se_expand_bias, se_act, skip)
    check_weight_1x1("w_proj", w_proj, x, cols=z_shape(x, w_dw, stride)[1], source="z")
    if skip and w_proj.shape[0] != C:
        raise ValueError(f"skip=True adds x to the output, so w_proj must have C={C} output "
                         f"channels (Cout = C), got {w_proj.shape[0]}")


def irmb_inference(x, w_exp, b_exp, w_dw, b_dw, w_proj, *, act="silu", stride=1, skip=False,
                   ln_weight=None, ln_bias=None, eps=1e-6, w_qk=None, b_qk=None, head_dim=None,
                   window_size=7, scale=None, se_reduce_weight=None, se_reduce_bias=None,
                   se_expand_weight=None, se_expand_bias=None, se_act="silu",
                   partition="remote", attn_pre=True):
    """See the module docstring."""
    kwargs = dict(act=act, stride=stride, skip=skip, ln_weight=ln_weight, ln_bias=ln_bias,
                  eps=eps, w_qk=w_qk, b_qk=b_qk, head_dim=head_dim, window_size=window_size,
                  scale=scale, se_reduce_weight=se_reduce_weight, se_reduce_bias=se_reduce_bias,
                  se_expand_weight=se_expand_weight, se_expand_bias=se_expand_bias,
                  se_act=se_act, partition=partition, attn_pre=attn_pre)
    validate(x, w_exp, b_exp, w_dw, b_dw, w_proj, **kwargs)
    if se_reduce_weight is None:
        for k in _SE_KEYS + ("se_act",):
            del kwargs[k]
    for k, default in EMO2_DEFAULTS.items():  # EMOv2's form: only then in the call
        if kwargs[k] == default:
            del kwargs[k]
    fn = dispatch.resolve(OP, x, w_exp, b_exp, w_dw, b_dw, w_proj, **kwargs)
    return fn(x, w_exp, b_exp, w_dw, b_dw, w_proj, **kwargs)


KEYWORDS = tuple(n for n, p in inspect.signature(irmb_inference).parameters.items()
                 if p.kind is p.KEYWORD_ONLY)

