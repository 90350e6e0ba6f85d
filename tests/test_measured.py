"""`auto` on CUDA picks a GPU kernel only where a committed measurement shows it faster.

No GPU here: the rule is driven with fabricated tables, a fake op with a torch and a "triton"
GPU-kernel implementation, and the device lookup patched to say "a CUDA tensor on an H200"."""
import json

import pytest
import torch

import emo_kernels
from emo_kernels import backends, measured

OP = "_test_measured_op"


def _torch_impl(x):
    return ("torch", x)


def _gpu_impl(x):
    return ("triton", x)


@pytest.fixture
def on_fake_h200(monkeypatch, tmp_path):
    """A fake op registered for torch and triton; CPU tensors treated as CUDA tensors of an
    H200; returns a function that writes a fabricated table and points the rule at it."""
    backends.register(OP, "torch", _torch_impl)
    backends.register(OP, "triton", _gpu_impl, gpu_kernel=True)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(measured, "_on_gpu", lambda t: True)
    monkeypatch.setattr(measured, "_device", lambda d: ("NVIDIA H200", "sm_90"))
    path = tmp_path / "measured.json"

    def write(rows):
        path.write_text(json.dumps({"rows": rows}))
        monkeypatch.setenv(measured.ENV_VAR, str(path))
        measured._CACHE.clear()

    write([])
    return write


def _row(speedup, family="sm_90", cls="fp32-infer", backend="triton"):
    return dict(op=OP, backend=backend, family=family, shape_class=cls, speedup_min=speedup,
                device="NVIDIA H200", date="2026-12-01")


def _picked(x):
    return backends.resolve(OP, x)(x)[0]


def test_unmeasured_gpu_kernel_is_not_picked(on_fake_h200):
    x = torch.randn(3)
    assert _picked(x) == "torch"
    why = emo_kernels.explain(OP, x)["triton"]
    assert "not measured faster than the torch path on NVIDIA H200 (sm_90)" in why
    assert why.startswith("usable when asked for explicitly")
    with emo_kernels.use_backend("triton"):  # asked for by name: the kernel runs
        assert _picked(x) == "triton"


def test_measured_faster_is_picked_only_for_its_class_and_family(on_fake_h200):
    x = torch.randn(3)
    on_fake_h200([_row(1.8)])
    assert _picked(x) == "triton"
    assert emo_kernels.explain(OP, x)["triton"] is None
    assert _picked(x.double()) == "torch"             # fp64-infer: not measured
    with torch.enable_grad():
        assert _picked(x.requires_grad_()) == "torch"  # fp32-train: not measured
    on_fake_h200([_row(1.8, family="sm_80")])          # measured on another GPU family
    assert _picked(torch.randn(3)) == "torch"


def test_measured_slower_is_not_picked(on_fake_h200):
    x = torch.randn(3)
    on_fake_h200([_row(0.4)])
    assert _picked(x) == "torch"
    assert "measured 0.4x" in emo_kernels.explain(OP, x)["triton"]
    on_fake_h200([_row(measured.MIN_SPEEDUP)])          # within noise: not faster
    assert _picked(x) == "torch"


def test_shape_classes_of_the_ops():
    x, w, b, wd = torch.randn(1, 4, 5, 5), torch.randn(8, 4), torch.randn(8), torch.randn(8, 1, 5, 5)
    assert measured.shape_class("expand_dwconv_act", (x, w, b, wd), dict(stride=2)) == "k5-s2-fp32-infer"
    assert measured.shape_class("expand_dwconv_act", (x.half(), w, b, wd),
                                dict(bn_training=True)) == "k5-s1-fp16-train"
    q = torch.randn(1, 8, 7, 7, dtype=torch.bfloat16)
    assert measured.shape_class("window_attention", (q, q, q), dict(head_dim=4)) == "ws7-hd4-bf16-infer"


def test_committed_table_is_valid_and_readme_says_what_is_measured():
    rows = measured.load_table(measured.TABLE_PATH)
    for r in rows:  # every row names what was measured
        for key in ("op", "backend", "family", "shape_class", "speedup_min", "device", "date",
                    "torch", "commit"):
            assert key in r, (key, r)
    import os
    readme = open(os.path.join(os.path.dirname(measured.TABLE_PATH), "..", "README.md")).read()
    if not rows:
        assert "No kernel has been measured on a GPU yet" in readme
