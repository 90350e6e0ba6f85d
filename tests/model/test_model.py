"""The EMO model zoo: variants, shapes, API, fused=True (torch backend) parity, bad input."""
import copy

import pytest
import torch
import torch.nn as nn

import emo
import emo_kernels
from conftest import assert_same_train_step, model_pair, rel_err

PARAMS_M = {"emo_1m": 1.36, "emo_2m": 2.38, "emo_5m": 5.11, "emo_6m": 6.17}
SIZES = [(224, 224), (64, 64), (96, 160), (193, 221)]


@pytest.mark.parametrize("name", list(PARAMS_M))
def test_param_count(name):
    n = sum(p.numel() for p in emo.create_model(name).parameters())
    assert abs(n / 1e6 - PARAMS_M[name]) <= 0.01


def test_list_and_create():
    assert emo.list_models("emo") == ["emo_1m", "emo_2m", "emo_5m", "emo_6m"]
    assert set(emo.list_models()) == set(emo.list_models("emo")) | set(emo.CONFIGS_V2)
    assert isinstance(emo.emo_5m(num_classes=7), emo.EMO)
    with pytest.raises(ValueError, match="unknown EMO model"):
        emo.create_model("emo_3m")


@pytest.mark.parametrize("name", list(PARAMS_M))
@pytest.mark.parametrize("hw", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_variants_run_eval_and_train(name, hw):
    ref, fused = model_pair(name)
    ref.eval(), fused.eval()
    for batch in (1, 2):
        x = torch.randn(batch, 3, *hw)
        with torch.no_grad():
            out = ref(x)
            assert out.shape == (batch, 1000) and torch.isfinite(out).all()
            assert rel_err(fused(x), out) <= 1e-5
    ref.train()
    for batch in (1, 2):
        x = torch.randn(batch, 3, *hw)
        out = ref(x)
        out.sum().backward()
        assert out.shape == (batch, 1000) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["emo_1m", "emo_2m"])  # EMOv2: tests/model/test_emo2.py (float64)
def test_fused_train_step_matches(name):
    """fused=True (torch backend) in train mode: same loss grads and BN running stats."""
    ref, fused = model_pair(name)
    ref.train(), fused.train()
    x = torch.randn(2, 3, 64, 96)
    assert_same_train_step(ref, fused, x, torch.randint(0, 1000, (2,)), 1e-5, 1e-6)
    assert set(ref.state_dict()) == set(fused.state_dict())


@pytest.mark.parametrize("name", ["emo_1m", "emo2_1m"])
@pytest.mark.parametrize("fused", [False, True], ids=["fused0", "fused1"])
def test_reparameterize_keeps_logits(fused, name):
    ref, f = model_pair(name)
    model = f if fused else ref
    model.eval()
    x = torch.randn(2, 3, 80, 72)
    with torch.no_grad():
        before = model(x)
        model.reparameterize()
        after = model(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert rel_err(after, before) <= 1e-5


@pytest.mark.parametrize("name", ["emo_5m", "emo2_5m"])  # the same widths
def test_features_only_and_intermediates(name):
    model = emo.create_model(name, features_only=True).eval()
    x = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        feats = model(x)
    assert [f.shape[1] for f in feats] == [48, 72, 160, 288]
    assert [f.shape[2:] for f in feats] == [(24, 40), (12, 20), (6, 10), (3, 5)]
    assert [i["reduction"] for i in model.feature_info] == [4, 8, 16, 32]
    full = emo.create_model(name).eval()
    missing, unexpected = full.load_state_dict(model.state_dict(), strict=False)
    assert sorted(missing) == ["head.bias", "head.weight", "norm.norm.bias",
                               "norm.norm.weight"] and not unexpected  # no norm, no head
    with torch.no_grad():
        assert torch.equal(full.forward_intermediates(x)[1][-1], feats[-1])
        assert torch.equal(full.forward_features(x), feats[-1])


def test_head_api():
    model = emo.emo_1m().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        f = model.forward_features(x)
        pre = model.forward_head(f, pre_logits=True)
        assert pre.shape == (2, 168)
        assert torch.allclose(model.forward_head(f), model.head(pre))
        assert torch.allclose(model(x), model.head(pre))
    model.reset_classifier(5)
    assert model(x).shape == (2, 5)
    model.reset_classifier(0)
    assert model(x).shape == (2, 168)


def test_grad_checkpointing_same_grads():
    ref, _ = model_pair("emo_1m", drop_path_rate=0.0)
    ck = copy.deepcopy(ref)
    ck.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 64, 64)
    for m in (ref, ck):
        m.train()
        m(x).square().mean().backward()
    for (n, p), q in zip(ref.named_parameters(), ck.parameters()):
        assert rel_err(q.grad, p.grad) <= 1e-6, n


def test_in_chans():
    model = emo.emo_1m(in_chans=1, num_classes=3).eval()
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 3)


@pytest.mark.parametrize("bad,match", [
    (torch.randn(3, 64, 64), "4-D input"),
    (torch.randn(1, 4, 64, 64), "3 input channels"),
    (torch.randn(1, 3, 0, 64), "at least 1x1"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.long), "floating-point"),
])
def test_bad_input(bad, match):
    model = emo.emo_1m().eval()
    with pytest.raises((ValueError, TypeError), match=match):
        model(bad)


def test_tiny_images():
    model = emo.emo_1m(fused=True).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 1, 1)).shape == (1, 1000)
        assert model(torch.randn(1, 3, 5, 3)).shape == (1, 1000)


def test_fused_inference_runs_one_cpu_chain():
    """CPU inference under auto: the stem block and stages 1-4 are one IRMBChain call, which
    the cpu backend runs as one C++ call (the CPU extension is built in every setup: a missing
    build must fail here, not fall back unnoticed)."""
    assert emo_kernels.explain("irmb_inference", *_irmb_args())["cpu"] is None
    model = emo.emo_1m(fused=True).eval()
    with torch.no_grad(), emo_kernels.record_dispatch() as calls:
        model(torch.randn(1, 3, 64, 64))
    assert calls == [("irmb_inference chain", "cpu")]


def test_fused_inference_on_the_torch_backend_composes_the_ops():
    """With the torch backend the chain calls irmb_inference per block, whose torch backend
    composes expand_dwconv_act and window_attention."""
    model = emo.emo_1m(fused=True).eval()
    with torch.no_grad(), emo_kernels.use_backend("torch"), \
            emo_kernels.record_dispatch() as calls:
        model(torch.randn(1, 3, 64, 64))
    ops = [op for op, _ in calls]
    assert {b for _, b in calls} == {"torch"}
    # 1 stem + 2+2+8+3 blocks; attention in blocks 2.. of stages 3 and 4
    assert ops.count("irmb_inference") == 16
    assert ops.count("expand_dwconv_act") == 16
    assert ops.count("window_attention") == 7 + 2
    assert ops[:2] == ["irmb_inference", "expand_dwconv_act"]


def _irmb_args():
    x = torch.randn(1, 8, 4, 4)
    return x, torch.randn(16, 8), None, torch.randn(16, 1, 3, 3), None, torch.randn(8, 16)


def test_fused_training_uses_the_ops(monkeypatch):
    calls = []
    for name in ("expand_dwconv_act", "window_attention"):
        orig = getattr(emo_kernels, name)
        monkeypatch.setattr(emo_kernels, name,
                            lambda *a, _o=orig, _n=name, **k: calls.append(_n) or _o(*a, **k))
    model = emo.emo_1m(fused=True).train()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert calls.count("expand_dwconv_act") == 16
    assert calls.count("window_attention") == 7 + 2


def test_fused_cpu_inference_keeps_forward_hooks():
    """The fused CPU inference path still calls every block through nn.Module.__call__."""
    model = emo.emo_1m(fused=True).eval()
    seen = []
    for name, m in model.named_modules():
        if isinstance(m, emo.iRMB):
            m.register_forward_hook(lambda mod, inp, out, n=name: seen.append(n))
    with torch.inference_mode():
        model(torch.randn(1, 3, 64, 64))
    assert len(seen) == 1 + sum(emo.CONFIGS["emo_1m"]["depths"])
