"""The pure-PyTorch reference ops against direct, loop-level compositions of torch functions."""
import math

import pytest
import torch

import emo_kernels
from emo_kernels.reference import window_attention_ref
from conftest import rel_err


def naive_expand_dwconv_act(x, w_exp, b_exp, w_dw, b_dw, act, stride, skip, bn=None):
    if w_exp is None:
        v = x
    else:
        v = torch.einsum("oc,bchw->bohw", w_exp.reshape(w_exp.shape[0], -1), x)
        v = v + b_exp[None, :, None, None]
        if act == "silu":
            v = v / (1 + torch.exp(-v))
        elif act == "gelu":
            v = 0.5 * v * (1 + torch.erf(v / math.sqrt(2)))
    k = w_dw.shape[-1]
    pad = math.ceil((k - stride) / 2)
    B, C, H, W = v.shape
    Ho, Wo = (H + 2 * pad - k) // stride + 1, (W + 2 * pad - k) // stride + 1
    vp = torch.zeros(B, C, H + 2 * pad, W + 2 * pad, dtype=v.dtype)
    vp[:, :, pad:pad + H, pad:pad + W] = v
    p = torch.zeros(B, C, Ho, Wo, dtype=v.dtype)
    for di in range(k):
        for dj in range(k):
            tap = vp[:, :, di:di + stride * (Ho - 1) + 1:stride, dj:dj + stride * (Wo - 1) + 1:stride]
            p = p + tap * w_dw[:, 0, di, dj][None, :, None, None]
    if b_dw is not None:
        p = p + b_dw[None, :, None, None]
    if bn is not None:
        mean = p.mean((0, 2, 3))
        var = ((p - mean[None, :, None, None]) ** 2).mean((0, 2, 3))
        n = p.numel() / C
        bn["running_mean"].mul_(1 - bn["momentum"]).add_(bn["momentum"] * mean)
        bn["running_var"].mul_(1 - bn["momentum"]).add_(bn["momentum"] * var * n / (n - 1))
        p = (p - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + bn["eps"])
        p = p * bn["weight"][None, :, None, None] + bn["bias"][None, :, None, None]
    d = p / (1 + torch.exp(-p))
    return v + d if skip else d


CASES = [  # (Cin, Cmid, k, stride, act, skip, H, W)
    (4, 8, 3, 1, "silu", True, 7, 9),
    (4, 12, 3, 2, "silu", False, 9, 9),
    (6, 10, 5, 1, "gelu", True, 6, 11),
    (6, 18, 5, 2, "gelu", False, 8, 7),
    (5, 5, 3, 1, "none", False, 7, 5),   # stem block: identity expansion
]


@pytest.mark.parametrize("cin,cmid,k,s,act,skip,h,w", CASES,
                         ids=[f"Cin{c[0]}-Cmid{c[1]}-k{c[2]}-s{c[3]}-{c[4]}-skip{int(c[5])}-{c[6]}x{c[7]}"
                              for c in CASES])
@pytest.mark.parametrize("train_bn", [False, True], ids=["folded", "bn_train"])
def test_expand_dwconv_act_reference(cin, cmid, k, s, act, skip, h, w, train_bn):
    g = torch.Generator().manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    x = r(2, cin, h, w)
    w_exp, b_exp = (None, None) if act == "none" else (r(cmid, cin, 1, 1), r(cmid))
    w_dw, b_dw = r(cmid, 1, k, k), r(cmid)
    bn_ref = bn_naive = None
    kw = {}
    if train_bn:
        stats = dict(weight=r(cmid), bias=r(cmid), running_mean=r(cmid), running_var=r(cmid).abs() + 0.5)
        bn_naive = dict({k2: v.clone() for k2, v in stats.items()}, momentum=0.1, eps=1e-6)
        bn_ref = {k2: v.clone() for k2, v in stats.items()}
        kw = dict(bn_weight=bn_ref["weight"], bn_bias=bn_ref["bias"],
                  running_mean=bn_ref["running_mean"], running_var=bn_ref["running_var"],
                  bn_training=True, momentum=0.1, eps=1e-6)
    out = emo_kernels.expand_dwconv_act(x, w_exp, b_exp, w_dw, b_dw, act=act, stride=s, skip=skip, **kw)
    ref = naive_expand_dwconv_act(x, w_exp, b_exp, w_dw, b_dw, act, s, skip, bn_naive)
    assert out.shape == ref.shape
    assert rel_err(out, ref) <= 1e-12
    if train_bn:
        for key in ("running_mean", "running_var"):
            assert rel_err(bn_ref[key], bn_naive[key]) <= 1e-12


def naive_window_attention(q, k, v, k_pad, head_dim, ws=7):
    B, C, H, W = q.shape
    Hp, Wp = math.ceil(H / ws) * ws, math.ceil(W / ws) * ws
    n1, n2 = Hp // ws, Wp // ws
    out = torch.zeros_like(q)
    kp = torch.zeros(C, dtype=q.dtype) if k_pad is None else k_pad
    for b in range(B):
        for a in range(n1):
            for c in range(n2):
                pix = [(i * n1 + a, j * n2 + c) for i in range(ws) for j in range(ws)]
                inside = [(y < H and x < W) for y, x in pix]
                for h in range(C // head_dim):
                    ch = slice(h * head_dim, (h + 1) * head_dim)
                    def gather(t, fill):
                        return torch.stack([t[b, ch, y, x] if ok else fill
                                            for (y, x), ok in zip(pix, inside)])
                    zero = torch.zeros(head_dim, dtype=q.dtype)
                    qs, ks, vs = gather(q, zero), gather(k, kp[ch]), gather(v, zero)
                    s = qs @ ks.T * head_dim ** -0.5
                    p = torch.exp(s - s.max(-1, keepdim=True).values)
                    o = (p / p.sum(-1, keepdim=True)) @ vs
                    for t, ((y, x), ok) in enumerate(zip(pix, inside)):
                        if ok:
                            out[b, ch, y, x] = o[t]
    return out


@pytest.mark.parametrize("C,d,H,W", [(8, 4, 7, 7), (6, 3, 8, 9), (4, 4, 3, 5), (6, 2, 14, 15)],
                         ids=["C8-d4-7x7", "C6-d3-8x9", "C4-d4-3x5", "C6-d2-14x15"])
def test_window_attention_reference(C, d, H, W):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, C, H, W, generator=g, dtype=torch.float64) for _ in range(3))
    k_pad = torch.randn(C, generator=g, dtype=torch.float64)
    out = emo_kernels.window_attention(q, k, v, k_pad, head_dim=d)
    assert rel_err(out, naive_window_attention(q, k, v, k_pad, d)) <= 1e-12
    out0 = window_attention_ref(q, k, v, None, head_dim=d)
    assert rel_err(out0, naive_window_attention(q, k, v, None, d)) <= 1e-12


def test_expand_dwconv_act_bad_args():
    x = torch.randn(1, 4, 5, 5)
    w, b, wd = torch.randn(8, 4), torch.randn(8), torch.randn(8, 1, 3, 3)
    f = emo_kernels.expand_dwconv_act
    with pytest.raises(ValueError, match="4 dimensions"):
        f(x[0], w, b, wd)
    with pytest.raises(ValueError, match="input channels"):
        f(x, torch.randn(8, 3), b, wd)
    with pytest.raises(TypeError, match="dtype"):
        f(x, w.double(), b, wd)
    with pytest.raises(ValueError, match="w_dw"):
        f(x, w, b, torch.randn(8, 1, 4, 4))
    with pytest.raises(ValueError, match="stride"):
        f(x, w, b, wd, stride=3)
    with pytest.raises(ValueError, match="skip=True needs stride=1"):
        f(x, w, b, wd, stride=2, skip=True)
    with pytest.raises(ValueError, match="act"):
        f(x, w, b, wd, act="relu")
    with pytest.raises(TypeError, match="floating"):
        f(x.long(), w, b, wd)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: tensors on two devices")
def test_expand_dwconv_act_mixed_devices():
    x = torch.randn(1, 4, 5, 5)
    w, b, wd = torch.randn(8, 4), torch.randn(8), torch.randn(8, 1, 3, 3)
    with pytest.raises(ValueError, match="cuda"):
        emo_kernels.expand_dwconv_act(x, w.cuda(), b, wd)


def test_window_attention_bad_args():
    q = torch.randn(1, 8, 5, 5)
    f = emo_kernels.window_attention
    with pytest.raises(ValueError, match="head_dim"):
        f(q, q, q, head_dim=3)
    with pytest.raises(ValueError, match="shape"):
        f(q, q[:, :4], q, head_dim=4)
    with pytest.raises(ValueError, match="k_pad"):
        f(q, q, q, torch.zeros(4), head_dim=4)
    with pytest.raises(ValueError, match="4 dimensions"):
        f(q[0], q[0], q[0], head_dim=4)
