"""fused=True with every BatchNorm variant a user can put in an EMO block (issue #13, item 1):
the same logits, gradients and running statistics as fused=False, in eval and in training."""
import copy

import pytest
import torch
import torch.nn as nn

from emo.layers import (BATCHNORM, FROZEN_BN, IDENTITY, LAYERNORM, UNKNOWN, LayerNorm2d,
                        fold_bn, norm_is_affine, norm_kind)
from conftest import model_pair, rel_err

torchvision = pytest.importorskip("torchvision", reason="torchvision is in requirements.txt")
timm = pytest.importorskip("timm", reason="timm is in requirements.txt")
from timm.layers import BatchNormAct2d, freeze_batch_norm_2d  # noqa: E402
from torchvision.ops.misc import FrozenBatchNorm2d  # noqa: E402


class MyBN(nn.BatchNorm2d):
    """A subclass that keeps BatchNorm2d's forward."""


def _replace_bns(model, make):
    for name, m in list(model.named_modules()):
        for cname, c in list(m.named_children()):
            if type(c) is nn.BatchNorm2d:
                new = make(c)
                setattr(m, cname, new)
    return model


def _copy_bn(c, new):
    with torch.no_grad():
        for n in ("weight", "bias", "running_mean", "running_var"):
            if getattr(new, n, None) is not None and getattr(c, n) is not None:
                getattr(new, n).copy_(getattr(c, n))
    return new


def _torchvision_frozen(c):
    return _copy_bn(c, FrozenBatchNorm2d(c.num_features, eps=c.eps))


CONVERSIONS = {
    "timm_freeze": freeze_batch_norm_2d,
    "torchvision_frozen": lambda m: _replace_bns(m, _torchvision_frozen),
    "sync_bn": nn.SyncBatchNorm.convert_sync_batchnorm,
    "subclass": lambda m: _replace_bns(m, lambda c: _copy_bn(c, MyBN(c.num_features, eps=c.eps))),
    "affine_false_momentum_none": lambda m: _replace_bns(m, lambda c: _copy_bn(
        c, nn.BatchNorm2d(c.num_features, eps=c.eps, affine=False, momentum=None))),
    "no_running_stats": lambda m: _replace_bns(m, lambda c: _copy_bn(
        c, nn.BatchNorm2d(c.num_features, eps=1e-3, track_running_stats=False))),
    # an activation inside the norm: unknown to the fused path, the block runs the reference
    "timm_bnact": lambda m: _replace_bns(m, lambda c: _copy_bn(
        c, BatchNormAct2d(c.num_features, eps=c.eps, act_layer=nn.ReLU))),
}


def _pair(conv):
    ref, fused = model_pair("emo_1m", drop_path_rate=0.0)
    ref, fused = CONVERSIONS[conv](ref), CONVERSIONS[conv](fused)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


@pytest.mark.parametrize("conv", list(CONVERSIONS))
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_eval_logits(conv, grad):
    ref, fused = _pair(conv)
    ref.eval(), fused.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.set_grad_enabled(grad):
        a, b = ref(x), fused(x)
    assert rel_err(b, a) <= 1e-5


@pytest.mark.parametrize("conv", list(CONVERSIONS))
def test_train_step(conv):
    """Training mode: logits, input and parameter gradients, and the running statistics
    afterwards (frozen BNs keep theirs; batch-statistics BNs update theirs like nn.BatchNorm2d)."""
    ref, fused = _pair(conv)
    ref.train(), fused.train()
    x = torch.randn(2, 3, 64, 64)
    outs = []
    for m in (ref, fused):
        xi = x.clone().requires_grad_()
        out = m(xi)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        outs.append((out, xi.grad, {n: p.grad for n, p in m.named_parameters()}))
    assert rel_err(outs[1][0], outs[0][0]) <= 1e-5
    assert rel_err(outs[1][1], outs[0][1]) <= 1e-4
    for n, g in outs[0][2].items():
        assert outs[1][2][n] is not None, n
        assert rel_err(outs[1][2][n], g) <= 1e-4, n
    sr, sf = ref.state_dict(), fused.state_dict()
    for k in sr:
        assert rel_err(sf[k], sr[k]) <= 1e-5, k


def test_norm_kind():
    assert norm_kind(nn.Identity()) == IDENTITY
    assert norm_kind(nn.BatchNorm2d(4)) == BATCHNORM
    assert norm_kind(nn.SyncBatchNorm(4)) == BATCHNORM
    assert norm_kind(MyBN(4)) == BATCHNORM
    assert norm_kind(FrozenBatchNorm2d(4)) == FROZEN_BN
    assert norm_kind(freeze_batch_norm_2d(nn.BatchNorm2d(4))) == FROZEN_BN
    assert norm_kind(LayerNorm2d(4)) == LAYERNORM
    assert norm_kind(BatchNormAct2d(4)) == UNKNOWN
    assert norm_kind(nn.BatchNorm1d(4)) == UNKNOWN
    assert norm_kind(nn.GroupNorm(2, 4)) == UNKNOWN
    hooked = nn.BatchNorm2d(4)
    hooked.register_forward_hook(lambda *a: None)
    assert norm_kind(hooked) == UNKNOWN
    bn = nn.BatchNorm2d(4)
    assert not norm_is_affine(bn) and norm_is_affine(bn.eval())
    assert norm_is_affine(FrozenBatchNorm2d(4).train())
    assert not norm_is_affine(nn.BatchNorm2d(4, track_running_stats=False).eval())


@pytest.mark.parametrize("make", [
    lambda: _copy_bn(nn.BatchNorm2d(6, eps=1e-3), nn.BatchNorm2d(6, eps=1e-3)),
    lambda: nn.BatchNorm2d(6, affine=False),
    lambda: FrozenBatchNorm2d(6, eps=1e-5)], ids=["bn", "affine_false", "frozen"])
def test_fold_bn_matches_module(make):
    bn = make().eval()
    with torch.no_grad():
        for n in ("running_mean", "running_var"):
            getattr(bn, n).uniform_(0.5, 1.5)
    conv = nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=True)
    x = torch.randn(2, 6, 5, 5)
    w, b = fold_bn(conv.weight, conv.bias, bn)
    assert rel_err(torch.nn.functional.conv2d(x, w, b, padding=1, groups=6), bn(conv(x))) <= 1e-6


def test_hooked_norm_fires_and_matches():
    """A forward hook on a depthwise BN fires in the fused model and its output is used."""
    ref, fused = model_pair("emo_1m", drop_path_rate=0.0)
    ref.eval(), fused.eval()
    calls = []

    def hook(m, inp, out):
        calls.append(1)
        return out * 2

    for m in (ref, fused):
        m.stage2[1].conv_local.norm.register_forward_hook(hook)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = ref(x), fused(x)
    assert len(calls) == 2
    assert rel_err(b, a) <= 1e-5


def test_reparameterize_frozen_bn():
    ref, fused = _pair("timm_freeze")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a = ref.eval()(x)
        r = copy.deepcopy(fused).reparameterize()
        assert not any(isinstance(m, FrozenBatchNorm2d) for m in r.modules())
        assert rel_err(r(x), a) <= 1e-5
