"""Checkpoint compatibility: the official implementation's outputs on EMO-1M (shared fixture)."""
import os

import pytest
import torch

import emo
from conftest import FIXTURE, rel_err

pytestmark = pytest.mark.skipif(not os.path.exists(FIXTURE), reason=f"fixture not found: {FIXTURE}")


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE, weights_only=False)


def float_sd(sd):
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


@pytest.mark.parametrize("fused", [False, True], ids=["fused0", "fused1"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-4)],
                         ids=["fp64", "fp32"])
def test_official_logits_and_input_grads(fixture, fused, dtype, tol):
    model = emo.emo_1m(fused=fused)
    emo.load_checkpoint(model, float_sd(fixture["state_dict"]))
    model = model.to(dtype).eval()
    for size, x in fixture["inputs"].items():
        x = x.to(dtype).requires_grad_(True)
        logits = model(x)
        assert rel_err(logits, fixture["logits"][size]) <= tol, size
        r = fixture["grads"][size]["r"].to(dtype)
        (g,) = torch.autograd.grad((logits * r).sum(), x)
        assert rel_err(g, fixture["grads"][size]["input_grad"]) <= tol, size


def test_key_layout_is_official(fixture):
    model = emo.emo_1m()
    assert set(model.state_dict()) == set(fixture["state_dict"])
    model.load_state_dict(float_sd(fixture["state_dict"]), strict=True)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "net", "module", "file"])
def test_loader_accepts_wrappers(fixture, wrap, tmp_path):
    sd = float_sd(fixture["state_dict"])
    if wrap in ("state_dict", "model", "net"):
        ckpt = {wrap: sd, "epoch": 3}
    elif wrap == "module":
        ckpt = {"module." + k: v for k, v in sd.items()}
    elif wrap == "file":
        ckpt = str(tmp_path / "emo_1m.pth")
        torch.save(sd, ckpt)
    else:
        ckpt = sd
    model = emo.emo_1m(pretrained=ckpt).eval()
    x = fixture["inputs"]["224x224"]
    with torch.no_grad():
        assert rel_err(model(x), fixture["logits"]["224x224"]) <= 1e-4


def test_loader_names_mismatching_keys(fixture):
    sd = float_sd(fixture["state_dict"])
    sd.pop("stage1.0.v.conv.bias")
    sd["stage9.extra.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match=r"stage1\.0\.v\.conv\.bias.*stage9\.extra\.weight"):
        emo.emo_1m(pretrained=sd)
    with pytest.raises(KeyError, match="missing keys"):
        emo.emo_2m(pretrained=float_sd(fixture["state_dict"]))


def test_loader_new_head_for_other_num_classes(fixture):
    with pytest.warns(UserWarning, match=r"classifier head.*'head.weight'"):
        model = emo.emo_1m(pretrained=float_sd(fixture["state_dict"]), num_classes=10)
    assert model.head.weight.shape == (10, 168)
    ref = fixture["state_dict"]["stage3.1.qk.conv.weight"].float()
    assert torch.equal(model.stage3[1].qk.conv.weight, ref)
