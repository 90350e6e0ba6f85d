"""Reference of ``irmb_inference``: one whole iRMB forward (inference) from the two references."""
import torch
import torch.nn.functional as F

from .expand_dwconv_act import activation, expand_dwconv_act_ref
from .window_attention import window_attention_ref


def pointwise(x, w, b=None):
    """1x1 conv of (B, C, H, W) with w (N, C[, 1, 1])."""
    return F.conv2d(x, w.reshape(w.shape[0], -1, 1, 1), b)


def squeeze_excite(z, w1, b1, w2, b2, act):
    """z * sigmoid(conv1x1(act(conv1x1(mean_hw(z), w1) + b1), w2) + b2)."""
    s = z.mean((2, 3), keepdim=True)
    s = activation(pointwise(s, w1, b1), act)
    return z * torch.sigmoid(pointwise(s, w2, b2))


def irmb_inference_ref(x, w_exp, b_exp, w_dw, b_dw, w_proj, *, act="silu", stride=1, skip=False,
                       ln_weight=None, ln_bias=None, eps=1e-6, w_qk=None, b_qk=None,
                       head_dim=None, window_size=7, scale=None, se_reduce_weight=None,
                       se_reduce_bias=None, se_expand_weight=None, se_expand_bias=None,
                       se_act="silu", partition="remote", attn_pre=True, ops=None):
    """y = LN2d(x) (if ln_weight is given); with w_qk: y = window_attention(qk(y)[:C],
    qk(y)[C:], y, b_qk[C:]); z = expand_dwconv_act(y, ...); with se_*: z = SE(z) (no skip);
    out = conv1x1(z, w_proj) (+ x if skip). With w_qk and attn_pre=False (EMOv2) the
    expansion comes first: y = window_attention(q, k, act(conv1x1(y, w_exp) + b_exp),
    b_qk[C:], v_pad=act(b_exp)), then z = expand_dwconv_act(y, no expansion, ...).
    ``ops``: a namespace with expand_dwconv_act and window_attention to compose (default: the
    references)."""
    eda = expand_dwconv_act_ref if ops is None else ops.expand_dwconv_act
    wa = window_attention_ref if ops is None else ops.window_attention
    y = x
    if ln_weight is not None:
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), ln_weight, ln_bias,
                         eps).permute(0, 3, 1, 2)
    if w_qk is not None:
        C = x.shape[1]
        qk = pointwise(y, w_qk, b_qk)
        v, emo2 = y, {}
        if not attn_pre and w_exp is not None:  # v on the (zero-padded) map: pads act(b_exp)
            v = activation(pointwise(y, w_exp, b_exp), act)
            v_pad = None if b_exp is None else activation(b_exp, act)
            emo2 = dict(v_pad=v_pad)
            w_exp = b_exp = None
            act = "none"
        if partition != "remote":
            emo2["partition"] = partition
        y = wa(qk[:, :C], qk[:, C:], v, None if b_qk is None else b_qk[C:], head_dim=head_dim,
               window_size=window_size, scale=scale, **emo2)
    if se_reduce_weight is not None:
        z = eda(y, w_exp, b_exp, w_dw, b_dw, act=act, stride=stride, skip=False)
        z = squeeze_excite(z, se_reduce_weight, se_reduce_bias, se_expand_weight,
                           se_expand_bias, se_act)
        return pointwise(z, w_proj)
    z = eda(y, w_exp, b_exp, w_dw, b_dw, act=act, stride=stride, skip=skip)
    out = pointwise(z, w_proj)
    return out + x if skip else out
