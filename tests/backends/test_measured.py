"""`auto` on CUDA picks a GPU kernel only where a committed measurement shows it faster.

No GPU here: the rule is driven with fabricated tables, a fake op with a torch and a "triton"
GPU-kernel implementation, and the device lookup patched to say "a CUDA tensor on an H200"."""
import json

import pytest
import torch

import emo_kernels
from emo_kernels import dispatch, measured

OP = "_test_measured_op"


def _torch_impl(x):
    return ("torch", x)


def _gpu_impl(x):
    return ("triton", x)


@pytest.fixture
def on_fake_h200(monkeypatch, tmp_path):
    """A fake op registered for torch and triton; CPU tensors treated as CUDA tensors of an
    H200; returns a function that writes a fabricated table and points the rule at it."""
    dispatch.register(OP, "torch", _torch_impl)
    dispatch.register(OP, "triton", _gpu_impl, gpu_kernel=True)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(measured, "_on_gpu", lambda t: True)
    monkeypatch.setattr(measured, "_device", lambda d: ("NVIDIA H200", "sm_90"))
    written = []

    def write(rows):  # a new file each time: the table cache is keyed by file and mtime
        path = tmp_path / f"measured{len(written)}.json"
        written.append(path)
        path.write_text(json.dumps({"rows": rows}))
        monkeypatch.setenv(measured.ENV_VAR, str(path))

    write([])
    return write


def _row(speedup, family="sm_90", cls="fp32-infer", backend="triton"):
    return dict(op=OP, backend=backend, family=family, shape_class=cls, speedup_min=speedup,
                device="NVIDIA H200", date="2026-12-01")


def _picked(x):
    return dispatch.resolve(OP, x)(x)[0]


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
    # irmb_inference: k, stride and the kind of block (the op passes absent ones as None)
    wp = torch.randn(4, 8)
    args = (x, w, b, wd, b, wp)
    assert measured.shape_class("irmb_inference", args, dict(stride=2)) == "k5-s2-plain-fp32-infer"
    assert measured.shape_class("irmb_inference", args, dict(w_qk=None, se_reduce_weight=None)) \
        == "k5-s1-plain-fp32-infer"
    assert measured.shape_class("irmb_inference", args, dict(w_qk=torch.randn(8, 4))) \
        == "k5-s1-attn-fp32-infer"
    assert measured.shape_class("irmb_inference", args, dict(
        se_reduce_weight=torch.randn(8, 8, 1, 1))) == "k5-s1-se-fp32-infer"


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


def _bench(provider, ms, case="Cin48-Cmid96-56x56-k3-s1-silu-skip", cls="k3-s1-bf16-infer",
           op="expand_dwconv_act"):
    info = dict(suite="op", op=op, case=case, mode="fwd", dtype="bf16",
                layout="nhwc", batch=256, device="cuda", family="sm_90", shape_class=cls,
                provider=provider, compiled=False, device_name="NVIDIA H200", torch="2.11.0",
                triton="3.6.0", cuda="13.0", cuda_event_median_ms=ms)
    return dict(name=f"x[{provider}]", extra_info=info, stats=dict(median=ms / 1e3))


def _junit(tmp_path, failed=(), ops=("expand_dwconv_act", "irmb_inference")):
    cases = "".join(
        f'<testcase classname="tests.ops.test_{op}" name="test_x[{b}-fp32]">'
        + ('<failure message="x"/>' if b in failed else "") + "</testcase>"
        for b in ("triton", "cuda") for op in ops)
    p = tmp_path / "j.xml"
    p.write_text(f'<testsuites><testsuite name="pytest">{cases}</testsuite></testsuites>')
    return str(p)


def test_bench_measured_writes_the_table_auto_reads(tmp_path, on_fake_h200):
    """bench.measured turns GPU op benchmarks into rows: the slowest case of a class decides;
    a backend whose GPU tests failed gets no row; the written file drives auto."""
    from bench import measured as writer
    rows = [_bench("torch", 1.0), _bench("triton", 0.5), _bench("cuda", 0.4),
            _bench("torch", 2.0, case="other"), _bench("triton", 1.6, case="other"),
            _bench("torch", 1.0, cls="k5-s1-bf16-infer"), _bench("triton", 1.5, cls="k5-s1-bf16-infer")]
    src = tmp_path / "ops.json"
    src.write_text(json.dumps(dict(benchmarks=rows)))
    out = tmp_path / "table.json"
    assert writer.main([str(src), "--junit", _junit(tmp_path, failed=("cuda",)), "--out",
                        str(out), "--commit", "abc", "--date", "2026-12-02"]) == 0
    table = json.loads(out.read_text())
    got = {(r["backend"], r["shape_class"]): r["speedup_min"] for r in table["rows"]}
    assert got == {("triton", "k3-s1-bf16-infer"): 1.25, ("triton", "k5-s1-bf16-infer"): 0.6667}
    assert table["runs"][0]["failed_backends"] == ["cuda"]
    assert all(r["commit"] == "abc" and r["torch"] == "2.11.0" for r in table["rows"])
    # no junit file (the GPU tests did not run): no kernel may be picked
    assert writer.failed_backends(None) == {"triton", "cuda"}
    # the op's GPU tests did not run (a part cut short): no rows for it, however fast
    assert writer.main([str(src), "--junit", _junit(tmp_path, ops=("window_attention",)),
                        "--out", str(out)]) == 0
    assert json.loads(out.read_text())["rows"] == []


def test_junit_attribution(tmp_path):
    """A failure in a backend's own test file (test_irmb_inference_triton) fails that backend;
    only a passed (not skipped) test of an op's file on a backend verifies the pair."""
    from bench import measured as writer
    cases = ('<testcase classname="tests.ops.test_irmb_inference_triton" name="test_a[x]"/>'
             '<testcase classname="tests.ops.test_irmb_inference_triton" name="test_b[y]">'
             '<failure message="x"/></testcase>'
             '<testcase classname="tests.ops.test_expand_dwconv_act" name="test_c[cuda-k3]">'
             '<skipped message="x"/></testcase>'
             '<testcase classname="tests.ops.test_window_attention" name="test_d[cuda-fp32]"/>')
    p = tmp_path / "j.xml"
    p.write_text(f"<testsuites><testsuite>{cases}</testsuite></testsuites>")
    assert writer.failed_backends(str(p)) == {"triton"}
    assert writer.verified(str(p)) == {("irmb_inference", "triton"), ("window_attention", "cuda")}
    assert writer.verified(None) == set()


def test_bench_measured_irmb_inference_rows_let_auto_pick_triton(tmp_path, on_fake_h200,
                                                                 monkeypatch):
    """bench/bench_irmb_inference.py's rows (the shape class as the suite computes it, from the
    inference plan's arguments) become table rows under which the public op, dispatched as
    auto dispatches it, runs triton for the measured-faster class only: not for a class
    measured slower, nor for one not measured."""
    from bench import measured as writer
    from bench import shapes
    from emo_kernels import dispatch
    from emo_kernels.backends import triton as triton_backend
    specs = dict(shapes.irmb_specs("emo_1m", 64))
    calls = {}
    for name in ("stage1.1", "stage3.1", "stage0.1"):  # plain, attention, squeeze-excite
        args, kw, _ = shapes.irmb_inputs(specs[name], 2, "cpu", torch.bfloat16, "nhwc")
        calls[name] = (specs[name].id, measured.shape_class("irmb_inference", args, kw), args, kw)
    assert [c[1] for c in calls.values()] == [
        "k3-s1-plain-bf16-infer", "k5-s1-attn-bf16-infer", "k3-s1-se-bf16-infer"]
    rows = []
    for name, ms in (("stage1.1", 0.5), ("stage3.1", 1.2)):  # 2x faster; slower
        case, cls = calls[name][:2]
        rows += [_bench("torch", 1.0, case=case, cls=cls, op="irmb_inference"),
                 _bench("triton", ms, case=case, cls=cls, op="irmb_inference")]
    src, out = tmp_path / "irmb.json", tmp_path / "table.json"
    src.write_text(json.dumps(dict(benchmarks=rows)))
    assert writer.main([str(src), "--junit", _junit(tmp_path), "--out", str(out)]) == 0
    table = json.loads(out.read_text())["rows"]
    assert {(r["op"], r["backend"], r["family"], r["shape_class"]): r["speedup_min"]
            for r in table} == {("irmb_inference", "triton", "sm_90", "k3-s1-plain-bf16-infer"): 2.0,
                                ("irmb_inference", "triton", "sm_90", "k5-s1-attn-bf16-infer"): 0.8333}
    on_fake_h200(table)
    # the tensors count as CUDA tensors for the triton backend too; its kernel is not run
    monkeypatch.setattr(triton_backend, "_device_reason", lambda x: None)
    monkeypatch.setattr(dispatch._REGISTRY["irmb_inference"]["triton"], "fn",
                        lambda x, *a, **k: "triton kernel")
    ran = {}
    for name, (_, _, args, kw) in calls.items():
        with emo_kernels.record_dispatch() as log, torch.no_grad():
            emo_kernels.irmb_inference(*args, **kw)
        ran[name] = log[0]
    assert ran["stage1.1"] == ("irmb_inference", "triton")
    assert emo_kernels.explain("irmb_inference", *calls["stage1.1"][2], **calls["stage1.1"][3])[
        "triton"] is None
    assert ran["stage3.1"] != ("irmb_inference", "triton") != ran["stage0.1"]
    why = {n: emo_kernels.explain("irmb_inference", *calls[n][2], **calls[n][3])["triton"]
           for n in ("stage3.1", "stage0.1")}
    assert "measured 0.8333x" in why["stage3.1"], why
    assert "k3-s1-se-bf16-infer: no committed measurement" in why["stage0.1"], why
