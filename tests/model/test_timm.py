"""EMO as a timm model (issue #13, item 4), checked in the spirit of timm's tests/test_models.py:
registration and pretrained_cfg, create_model keywords, offline pretrained loading through timm's
loader, the classifier/feature/intermediates/pruning API, features_only without unused
parameters, layer-wise lr decay through group_matcher. Small inputs (EMO-1M, 64x64)."""
import os
import subprocess
import sys

import pytest
import torch

import emo

timm = pytest.importorskip("timm")

NAMES = ["emo_1m", "emo_2m", "emo_5m", "emo_6m"]
X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _grads_everywhere(model, out):
    """DDP's check: every parameter gets a gradient from the outputs."""
    model.zero_grad(set_to_none=True)
    sum(o.float().sum() for o in (out if isinstance(out, (list, tuple)) else [out])).backward()
    return [n for n, p in model.named_parameters() if p.grad is None]


def test_registered_with_pretrained_cfg():
    assert timm.list_models("emo_*") == NAMES
    assert timm.list_pretrained("emo_*") == [f"{n}.in1k" for n in NAMES]
    for name in NAMES:
        assert timm.is_model(name)
        cfg = timm.models.get_pretrained_cfg(f"{name}.in1k").to_dict()
        assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
        assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875
        assert cfg["interpolation"] == "bicubic" and cfg["num_classes"] == 1000
        # the official weights: resources/EMO_<n>M/net.pth of the official repository
        assert cfg["url"] == ("https://github.com/zhangzjn/EMO/raw/main/resources/"
                              f"EMO_{name[4:].upper()}/net.pth")
    model = timm.create_model("emo_1m", pretrained=False)
    sd, cfg = model.state_dict(), model.default_cfg
    assert model.pretrained_cfg is cfg and cfg["architecture"] == "emo_1m"
    assert cfg["first_conv"] + ".weight" in sd and cfg["classifier"] + ".weight" in sd
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()
    data = timm.data.resolve_data_config({}, model=model)
    assert data["input_size"] == (3, 224, 224) and data["crop_pct"] == 0.875
    t = timm.data.create_transform(**data)
    assert "Resize(size=256, interpolation=bicubic" in repr(t) and "CenterCrop" in repr(t)
    own = emo.create_model("emo_1m")  # the same cfg without timm's builder
    assert own.pretrained_cfg["mean"] == cfg["mean"] and own.default_cfg["crop_pct"] == 0.875


def test_emo_imports_without_timm():
    code = ("import sys; sys.modules['timm'] = None\n"
            "import torch, emo\n"
            "m = emo.emo_1m(features_only=True, out_indices=(1, 2))\n"
            "assert m.feature_info.channels() == [48, 80], m.feature_info.channels()\n"
            "assert m.feature_info.reduction() == [8, 16]\n"
            "assert m.feature_info.module_name() == ['stage2', 'stage3']\n"
            "assert 'emo._timm' not in sys.modules\n")
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
def test_create_model_keywords(fused):
    m = timm.create_model("emo_1m", pretrained=False, fused=fused, num_classes=10,
                          drop_rate=0.25, drop_path_rate=0.0, global_pool="max").eval()
    assert isinstance(m, emo.EMO) and m.fused == fused and m.num_classes == 10
    assert m.drop_rate == 0.25 and m.global_pool == "max"
    assert all(type(b.drop_path).__name__ == "Identity" for b in m.stage3)
    with torch.no_grad():
        y = m(X)
        f = m.norm(m.forward_features(X)).amax((2, 3))
    assert y.shape == (2, 10) and torch.allclose(y, m.head(f), atol=1e-5)
    for gp, shape in (("avg", (2, 10)), ("avgmax", (2, 10)), ("", (2, 10, 2, 2))):
        m.reset_classifier(10, gp)
        with torch.no_grad():
            assert m(X).shape == shape
    with pytest.raises(ValueError, match="global_pool"):
        timm.create_model("emo_1m", global_pool="token")
    m.train()  # drop_rate is dropout before the head, in training only
    torch.manual_seed(0)
    assert not torch.equal(m.forward_head(m.forward_features(X), pre_logits=True),
                           m.forward_head(m.forward_features(X), pre_logits=True))


def test_pretrained_offline(tmp_path):
    src = emo.emo_1m().eval()
    path = tmp_path / "emo_1m_wrapped.pth"  # as some tools save it: under 'net', 'module.'
    torch.save({"net": {"module." + k: v for k, v in src.state_dict().items()}}, path)
    cache = tmp_path / "cache"
    with torch.no_grad():
        ref = src(X)
        # through torch.hub's download + cache (a file:// URL stands for the server)
        m = timm.create_model("emo_1m", pretrained=True, cache_dir=cache,
                              pretrained_cfg_overlay=dict(url=path.as_uri())).eval()
        assert torch.equal(m(X), ref)
        assert (cache / path.name).is_file()
        m = timm.create_model("emo_1m", pretrained=True, fused=True,  # the local file
                              pretrained_cfg_overlay=dict(file=str(path))).eval()
        assert torch.allclose(m(X), ref, rtol=1e-4, atol=1e-5)
        m = timm.create_model("emo_1m", pretrained=True, num_classes=7,  # fine-tuning: new head
                              pretrained_cfg_overlay=dict(file=str(path)))
        assert m.head.out_features == 7 and torch.equal(m.stage4[1].qk.conv.weight,
                                                        src.stage4[1].qk.conv.weight)
        f = timm.create_model("emo_1m", pretrained=True, features_only=True,
                              pretrained_cfg_overlay=dict(file=str(path))).eval()
        a = f(X)
        b = src.forward_intermediates(X, intermediates_only=True)
        assert all(torch.equal(p, q) for p, q in zip(a, b))
        own = emo.create_model("emo_1m", str(path), features_only=True, out_indices=(3,))
        assert torch.equal(own.eval()(X)[0], b[3])  # loaded whole, then norm and head dropped
    assert emo.create_model("emo_1m", pretrained=False).num_classes == 1000


def test_emo_pretrained_true_downloads_the_official_file(monkeypatch):
    """emo.create_model(name, pretrained=True) fetches the official URL through torch.hub (served
    here by a stand-in: no network) and loads it."""
    src = emo.emo_2m().eval()
    asked = []

    def fake_download(url, **kw):
        asked.append((url, kw.get("weights_only")))
        return src.state_dict()
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    m = emo.create_model("emo_2m", pretrained=True).eval()
    assert asked == [("https://github.com/zhangzjn/EMO/raw/main/resources/EMO_2M/net.pth", True)]
    with torch.no_grad():
        assert torch.equal(m(X), src(X))


def test_classifier_api():
    m = timm.create_model("emo_1m").eval()
    assert m.get_classifier() is m.head and m.head_hidden_size == m.num_features == 168
    with torch.no_grad():
        feats = m.forward_features(X)
        assert feats.shape == (2, 168, 2, 2)
        assert m.forward_head(feats, pre_logits=True).shape == (2, m.head_hidden_size)
        m.reset_classifier(0)
        assert m(X).shape == (2, m.num_features)
        m.reset_classifier(0, "")  # no classifier, no pooling
        assert m(X).shape == (2, 168, 2, 2)
        m.reset_classifier(42, "avg")
        assert m(X).shape == (2, 42) and m.get_classifier().out_features == 42


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
def test_forward_intermediates(fused):
    m = emo.emo_1m(fused=fused).eval()
    fi = timm.models.FeatureInfo(m.feature_info, len(m.feature_info))  # timm's own reading
    assert fi.channels() == m.feature_info.channels() == [32, 48, 80, 168]
    assert fi.reduction() == m.feature_info.reduction() == [4, 8, 16, 32]
    assert m.feature_info.module_name() == ["stage1", "stage2", "stage3", "stage4"]
    with torch.no_grad():
        final, inter = m.forward_intermediates(X)
        assert torch.allclose(final, m.forward_features(X))
        for f, c, r in zip(inter, fi.channels(), fi.reduction()):
            assert f.shape == (2, c, 64 // r, 64 // r)
        only = m.forward_intermediates(X, indices=[0, -1], intermediates_only=True)
        assert [o.shape[1] for o in only] == [32, 168] and torch.equal(only[1], inter[3])
        last2 = m.forward_intermediates(X, indices=2, intermediates_only=True)
        assert [o.shape[1] for o in last2] == [80, 168]
        final, early = m.forward_intermediates(X, indices=[1], stop_early=True)
        assert final.shape[1] == 48 and torch.equal(early[0], final)
        _, normed = m.forward_intermediates(X, indices=[3], norm=True)
        assert torch.allclose(normed[0], m.norm(inter[3]))
        nhwc = m.forward_intermediates(X, output_fmt="NHWC", intermediates_only=True)
        assert all(torch.equal(a, b.permute(0, 2, 3, 1)) for a, b in zip(nhwc, inter))
    with pytest.raises(ValueError, match="out of range"):
        m.forward_intermediates(X, indices=[4])


def test_prune_intermediate_layers():
    m = emo.emo_1m().eval()
    with torch.no_grad():
        ref = m.forward_intermediates(X, intermediates_only=True)
    assert m.prune_intermediate_layers([0, 2], prune_head=False) == [0, 2]
    assert m.num_features == m.head_hidden_size == 80 and len(m.stage4) == 0
    assert type(m.norm).__name__ == "Identity" and m.num_classes == 0  # fitted the dropped stage
    assert not any(k.startswith(("stage4.", "norm.", "head.")) for k in m.state_dict())
    with torch.no_grad():
        final, out = m.forward_intermediates(X, indices=[0, 2])
        assert torch.equal(out[1], ref[2]) and torch.equal(final, ref[2])
        assert m(X).shape == (2, 80)
    full = emo.emo_1m()
    full.prune_intermediate_layers(4, prune_norm=True)  # all stages: only norm and head go
    assert len(full.stage4) == 3 and full.num_classes == 0 and full.num_features == 168


@pytest.mark.parametrize("how", ["emo", "timm_getter", "timm_list"])
def test_features_only_no_unused_parameters(how):
    kw = dict(features_only=True, out_indices=(1, 2))
    if how == "emo":
        m = emo.create_model("emo_1m", **kw)
    else:
        m = timm.create_model("emo_1m", feature_cls=how.split("_")[1], **kw)
    assert m.feature_info.channels() == [48, 80] and m.feature_info.reduction() == [8, 16]
    names = [k[len("model."):] if k.startswith("model.") else k for k in m.state_dict()]
    assert names and not any(n.startswith(("stage4.", "norm.", "head.")) for n in names)
    out = m(X)
    assert [o.shape for o in out] == [(2, 48, 8, 8), (2, 80, 4, 4)]
    assert _grads_everywhere(m, out) == []
    full = emo.emo_1m(features_only=True)  # all four stages, still no norm and head
    assert _grads_everywhere(full, full(X)) == [] and len(full(X)) == 4


@pytest.mark.parametrize("name", NAMES)
def test_timm_model_checks(name):
    """The bodies of timm's test_model_forward / _backward / _default_cfgs, at 64x64."""
    m = timm.create_model(name, pretrained=False, num_classes=42, drop_path_rate=0.0)
    out = m(X)
    assert out.shape == (2, 42) and not torch.isnan(out).any()
    assert _grads_everywhere(m, out) == []
    m.eval()
    assert m.num_classes == 42 and m.num_features > 0 and m.head_hidden_size > 0
    cfg = m.default_cfg
    for key in ("url", "num_classes", "input_size", "pool_size", "crop_pct", "interpolation",
                "mean", "std", "first_conv", "classifier"):
        assert key in cfg, key
    with torch.no_grad():
        final, inter = m.forward_intermediates(X)
        assert torch.allclose(m.forward_features(X), final)
        m.reset_classifier(0)
        assert m(X).shape == (2, m.num_features)


def test_layer_decay_through_group_matcher():
    m = timm.create_model("emo_1m")
    groups = timm.models.group_parameters(m, m.group_matcher())
    # stem, 15 blocks (timm puts the final norm, ordinal 99999, with the last one), head
    assert len(groups) == 1 + (2 + 2 + 8 + 3) + 1
    assert groups[15][-2:] == ["norm.norm.weight", "norm.norm.bias"]
    coarse = timm.models.group_parameters(m, m.group_matcher(coarse=True))
    assert len(coarse) == 1 + 4 + 1  # stem, stages, head
    from timm.optim import create_optimizer_v2
    opt = create_optimizer_v2(m, "adamw", lr=1e-3, layer_decay=0.7)
    scale = {}
    for g in opt.param_groups:
        for p in g["params"]:
            scale[p] = g["lr_scale"]
    named = dict(m.named_parameters())
    stem, blk, head = (scale[named[k]] for k in ("stage0.0.convs.0.0.weight",
                                                 "stage2.0.v.conv.weight", "head.weight"))
    assert head == 1.0 and stem < blk < head
    assert len({round(v, 8) for v in scale.values()}) == 17


def test_inference_plan_of_features_only_model():
    """emo/inference.py's frozen plan follows out_indices and refuses a pruned model."""
    ref = emo.emo_1m(features_only=True, out_indices=(1, 3)).eval()
    fused = emo.emo_1m(fused=True, features_only=True, out_indices=(1, 3)).eval()
    fused.load_state_dict(ref.state_dict())
    plan = fused.prepare_inference()
    with torch.no_grad():
        want = ref(X)
        for got in (fused(X), plan(X)):
            assert [g.shape for g in got] == [(2, 48, 8, 8), (2, 168, 2, 2)]
            assert all(torch.allclose(g, w, rtol=1e-4, atol=1e-5) for g, w in zip(got, want))
    with pytest.raises(ValueError, match="forward_head|features_only"):
        plan.forward_head(want[-1])
    with pytest.raises(ValueError, match="pruned"):
        emo.emo_1m(features_only=True, out_indices=(0, 1)).eval().prepare_inference()
