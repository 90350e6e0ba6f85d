"""EMO under torchvision's Faster R-CNN (FPN on features_only) and DeepLabV3 (issue #13,
item 5): the code of examples/detect_segment.py, fused and unfused, one training step and an
evaluation on two 128x128 images; fused and unfused agree."""
import importlib.util
import pathlib

import pytest
import torch

from conftest import rel_err

pytest.importorskip("torchvision")

_path = pathlib.Path(__file__).resolve().parents[2] / "examples" / "detect_segment.py"
_spec = importlib.util.spec_from_file_location("detect_segment", _path)
ex = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ex)

IMAGES, TARGETS, MASKS = ex.sample_data(n=2, size=128)


def _pair(build):
    torch.manual_seed(0)
    ref = build(fused=False)
    fused = build(fused=True)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def _backbone_grads_everywhere(body):
    return [n for n, p in body.named_parameters() if p.grad is None]


def test_faster_rcnn_fpn_train_and_eval():
    ref, fused = _pair(ex.faster_rcnn)
    assert [k for k in ref.state_dict() if k.startswith("backbone.body.")
            and k.split(".")[2] in ("norm", "head")] == []  # no final norm, no head
    losses = {}
    for name, m in (("ref", ref), ("fused", fused)):
        torch.manual_seed(1)  # the RPN and RoI samplers and EMO's drop path draw random numbers
        losses[name] = ex.train_step_detection(m, IMAGES, TARGETS)
        assert _backbone_grads_everywhere(m.backbone.body) == []  # DDP: no unused parameter
    assert set(losses["ref"]) == {"loss_classifier", "loss_box_reg", "loss_objectness",
                                  "loss_rpn_box_reg"}
    for k, v in losses["ref"].items():
        assert v > 0 and abs(losses["fused"][k] - v) <= 1e-4 * abs(v), (k, losses)
    for m in (ref, fused):
        m.eval()
    with torch.no_grad():
        feats = [m.backbone(IMAGES) for m in (ref, fused)]  # after the step: same weights
        for k in feats[0]:
            assert rel_err(feats[1][k], feats[0][k]) <= 1e-4, k
        for m in (ref, fused):
            out = m(list(IMAGES))
            assert len(out) == 2
            for o in out:
                assert o["boxes"].shape[1] == 4 and len(o["boxes"]) == len(o["scores"]) \
                    == len(o["labels"])


def test_deeplabv3_train_and_eval():
    ref, fused = _pair(ex.deeplabv3)
    losses = []
    for m in (ref, fused):
        torch.manual_seed(1)  # EMO's drop path draws random numbers in training
        losses.append(ex.train_step_segmentation(m, IMAGES, MASKS))
    assert abs(losses[1] - losses[0]) <= 1e-4 * abs(losses[0])
    for m in (ref, fused):
        assert _backbone_grads_everywhere(m.backbone.body) == []
        m.eval()
    with torch.no_grad():
        outs = [m(IMAGES)["out"] for m in (ref, fused)]
    assert outs[0].shape == (2, 3, 128, 128)
    assert rel_err(outs[1], outs[0]) <= 1e-4
