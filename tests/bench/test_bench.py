"""The benchmark harness cannot rot: block shapes read off the models, the bytes formulas, the
one timer, the one naming scheme of result files, the report on a small hand-made JSON, the
entry points on tiny settings, and bench/gpu_check.sh in its CPU dry-run mode (every part with
tiny settings). No test here fails on speed: times are only checked to be positive and finite."""
import datetime
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time

import pytest
import torch

import emo
import emo_kernels
from bench import env, report, results, shapes, timing

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_block_specs_read_off_emo_1m():
    specs = shapes.block_specs("emo_1m", 224)
    dw = [s for _, s in specs if isinstance(s, shapes.DwSpec)]
    at = [(n, s) for n, s in specs if isinstance(s, shapes.AttnSpec)]
    assert len(dw) == 1 + sum(emo.CONFIGS["emo_1m"]["depths"])  # stem + every iRMB
    assert dw[0] == shapes.DwSpec(24, 24, 3, 1, "none", False, True, 112, 112)
    assert dw[0].id == "Cin24-Cmid24-112x112-k3-s1-id"
    assert {s.id for _, s in at} == {"C80-hd20-14x14-ws7", "C168-hd21-7x7-ws7"}
    assert all(n.startswith(("stage3.", "stage4.")) for n, _ in at)
    uses = shapes.distinct_specs(("emo_1m",), 224, shapes.AttnSpec)
    assert sum(len(b) for u in uses.values() for b in u.values()) == len(at)


def test_bytes_formulas():
    s = shapes.DwSpec(8, 16, 3, 2, "silu", False, False, 10, 10)
    assert s.out_hw == (5, 5)
    w = 16 * 8 + 16 + 16 * 9 + 16
    assert shapes.bytes_expand_dwconv_act(s, 2, 4, "fwd") == 4 * (2 * (800 + 400) + w)
    a = shapes.AttnSpec(32, 16, 9, 9, 7)
    assert shapes.bytes_window_attention(a, 2, 2, "fwd") == 2 * 2 * 32 * 81 * 4
    assert shapes.bytes_window_attention(a, 2, 2, "fwd+bwd") == 2 * 2 * 32 * 81 * 11
    r = shapes.IrmbSpec(8, 10, 10, (("w_exp", (16, 8)), ("b_exp", (16,)), ("w_dw", (16, 1, 3, 3)),
                                    ("b_dw", (16,)), ("w_proj", (8, 16))),
                        (("act", "silu"), ("stride", 1), ("skip", True)))
    w = 16 * 8 + 16 + 16 * 9 + 16 + 8 * 16
    assert r.out_hw == (10, 10) and r.id == "Cin8-Cmid16-Cout8-10x10-k3-s1-silu-skip"
    assert shapes.bytes_irmb_inference(r, 2, 2, "fwd") == 2 * (2 * (2 * 800 + 800) + w)
    with pytest.raises(ValueError):
        shapes.bytes_irmb_inference(r, 2, 2, "fwd+bwd")


def test_irmb_specs_are_the_inference_plans_calls():
    """Every iRMB of EMO-1M as the inference plan calls irmb_inference (block_args of the eval
    model): the synthesized arguments have the model's shapes, biases and options, and the
    shape classes auto keys them by tell attention, squeeze-excite and plain blocks apart."""
    from emo.inference import block_args
    from emo_kernels import measured
    specs = shapes.irmb_specs("emo_1m", 224)
    assert len(specs) == 1 + sum(emo.CONFIGS["emo_1m"]["depths"])
    model = emo.create_model("emo_1m", fused=True).eval()
    blocks = dict(model.named_modules())
    assert [n for n, _ in specs] == [n for n, m in blocks.items() if isinstance(m, emo.iRMB)]
    uses = shapes.distinct_specs(("emo_1m",), 224, shapes.IrmbSpec)
    assert len(uses) == 9 and sum(len(b) for u in uses.values() for b in u.values()) == len(specs)
    ids = {s.id for s in uses}
    assert {"Cin24-Cmid24-Cout24-112x112-k3-s1-id-se", "Cin48-Cmid288-Cout80-28x28-k5-s2-gelu-ln",
            "Cin80-Cmid240-Cout80-14x14-k5-s1-gelu-skip-ln-attn-hd20-ws7"} <= ids, ids
    classes = set()
    for spec, u in uses.items():
        want_args, want_kw = block_args(blocks[u["emo_1m"][0]])
        args, kw, _ = shapes.irmb_inputs(spec, 2, "cpu", torch.bfloat16, "nhwc")
        assert args[0].shape == (2, spec.cin, spec.H, spec.W)
        assert args[0].is_contiguous(memory_format=torch.channels_last)
        shape = lambda t: None if t is None else (tuple(t.shape), t.dtype)  # noqa: E731
        assert [shape(t) for t in args[1:]] == [
            None if t is None else (tuple(t.shape), torch.bfloat16) for t in want_args]
        assert kw.keys() == want_kw.keys()
        for n, v in want_kw.items():
            assert (shape(kw[n]) == (tuple(v.shape), torch.bfloat16)
                    if isinstance(v, torch.Tensor) else kw[n] == v), n
        classes.add(measured.shape_class("irmb_inference", args, kw))
    assert classes == {"k3-s1-se-bf16-infer", "k3-s2-plain-bf16-infer", "k3-s1-plain-bf16-infer",
                       "k5-s2-plain-bf16-infer", "k5-s1-attn-bf16-infer"}
    with pytest.raises(ValueError):
        shapes.irmb_inputs(next(iter(uses)), 1, "cpu", torch.float32, train=True)


def test_op_cases_modes(monkeypatch):
    """irmb_inference (no autograd) gets forward rows only; the other op suites keep fwd and
    fwd+bwd; each suite has the torch.compile rows when asked for."""
    from bench import suites
    monkeypatch.setenv("EMO_BENCH_TINY", "1")
    monkeypatch.setenv("EMO_BENCH_DEVICE", "cpu")
    monkeypatch.setenv("EMO_BENCH_COMPILE", "1")
    for op, modes in (("expand_dwconv_act", {"fwd", "fwd+bwd"}),
                      ("window_attention", {"fwd", "fwd+bwd"}), ("irmb_inference", {"fwd"})):
        cases = suites.op_cases(op)
        assert {c.values[2] for c in cases} == modes, op
        assert {c.values[6] for c in cases} == set(emo_kernels.BACKENDS) | {suites.COMPILED}


def test_bench_irmb_inference_tiny(tmp_path):
    """bench/bench_irmb_inference.py end to end on the tiny CPU setting: a forward row per
    distinct EMO-1M block for each backend that can run it on CPU (the torch reference
    always), with the shape class, bytes and a positive, finite time."""
    out = tmp_path / "irmb.json"
    env = dict(os.environ, EMO_BENCH_TINY="1", EMO_BENCH_DEVICE="cpu", EMO_BENCH_THREADS="1",
               PYTHONPATH=ROOT)
    env.pop("TRITON_INTERPRET", None)  # set by conftest without a GPU; the benches refuse it
    p = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs",
                        "bench/bench_irmb_inference.py", f"--benchmark-json={out}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "triton: tensors are on cpu" in p.stdout  # skipped with explain's reason
    specs = {s.id: s for s in shapes.distinct_specs(("emo_1m",), 64, shapes.IrmbSpec)}
    rows = [b["extra_info"] | dict(ms=b["stats"]["median"] * 1e3)
            for b in json.loads(out.read_text())["benchmarks"]]
    assert {r["case"] for r in rows if r["provider"] == "torch"} == set(specs)
    assert {r["provider"] for r in rows} <= {"torch", "cpu"}
    for r in rows:
        assert (r["suite"], r["op"], r["mode"], r["dtype"], r["batch"]) == (
            "op", "irmb_inference", "fwd", "fp32", 1), r
        assert re.fullmatch(r"k[35]-s[12]-(attn|se|plain)-fp32-infer", r["shape_class"]), r
        assert r["bytes"] == shapes.bytes_irmb_inference(specs[r["case"]], 1, 4, "fwd")
        assert _positive_finite(r["ms"]), r



def _positive_finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.parametrize("device", DEVICES)
def test_the_one_timer(device):
    """time_call / time_calls / median_time / interleaved: as many positive, finite times as
    asked for, warm-up calls untimed, and a call that takes 20 ms measured as about 20 ms."""
    calls = []

    def fn():
        calls.append(1)
        if device == "cuda":
            torch.cuda._sleep(1_000_000)  # device work, which a host timer alone would miss
        else:
            time.sleep(0.02)
    times = timing.time_calls(fn, device, repeats=3, warmup=2)
    assert len(times) == 3 and len(calls) == 5
    assert all(_positive_finite(t) for t in times), times
    if device == "cpu":
        assert all(0.019 <= t < 1.0 for t in times), times
    assert _positive_finite(timing.time_call(fn, device))
    assert _positive_finite(timing.median_time(fn, device, repeats=2, warmup=0))
    with pytest.raises(ValueError):
        timing.time_calls(fn, device, repeats=0)
    order = []
    per = timing.interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                             device, rounds=4)
    assert order == ["a", "b"] * 4  # round-robin, no warm-up
    assert list(per) == ["a", "b"] and all(len(ts) == 4 for ts in per.values())
    assert all(t >= 0 and math.isfinite(t) for ts in per.values() for t in ts)


def test_the_one_timer_under_pytest_benchmark():
    """benchmark_rounds: warm-up outside pytest-benchmark, then ``rounds`` rounds of one call,
    each timed by the one timer (what the suites report on CUDA)."""
    class FakeBenchmark:
        def pedantic(self, fn, rounds, iterations, warmup_rounds):
            assert iterations == 1 and warmup_rounds == 0
            for _ in range(rounds):
                fn()
    calls = []
    times = timing.benchmark_rounds(FakeBenchmark(), lambda: calls.append(time.sleep(0.001)),
                                    "cpu", rounds=4, warmup=3)
    assert len(calls) == 7 and len(times) == 4
    assert all(0.0009 <= t < 1.0 for t in times), times


def test_result_file_names():
    """One naming scheme: what the writers produce parses back, and every committed result
    file follows it."""
    st = results.stem("cpu", "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", 2,
                      datetime.date(2026, 11, 28), "EMO-1M")
    assert st == "cpu_Intel_Xeon_Platinum_8375C_20261128_t2_emo_1m"
    assert results.parse_stem(st + ".md") == dict(
        kind="cpu", device="Intel_Xeon_Platinum_8375C", date="20261128", threads="2",
        tag="emo_1m")
    assert results.stem("cuda", "NVIDIA H200", 16, "2026-12-05T10:00:00") == \
        "gpu_NVIDIA_H200_20261205_t16"
    with pytest.raises(ValueError):
        results.stem("tpu", "x", 1)
    here = results.parse_stem(results.stem_for("cpu", tag="t"))
    assert here["kind"] == "cpu" and here["threads"] == str(torch.get_num_threads())
    assert here["date"] == f"{datetime.datetime.now(datetime.timezone.utc):%Y%m%d}"
    for old in ("cpu-x86_64-2026-11-28.md", "cpu_Intel_Xeon_Processor_2026-11-28_t1.md",
                "cpu_Intel_Xeon_20261128.md", "gpu_H200_20261128_t1_Plan.md"):
        assert results.parse_stem(old) is None, old
    names = [f for f in os.listdir(results.RESULTS_DIR) if f != "README.md"]
    assert names
    assert [f for f in names if results.parse_stem(f) is None] == []
    # the docs name result files by the scheme, and only files that exist
    stems = {f.split(".", 1)[0] for f in names}
    for doc in (os.path.join(ROOT, "README.md"), os.path.join(results.RESULTS_DIR, "README.md")):
        text = open(doc).read()
        named = set(re.findall(r"`(?:bench/results/)?((?:cpu|gpu)_\w+_\d{8}_t\d+\w*)\.", text))
        assert named and named <= stems, (doc, named - stems)
        assert "cpu-x86_64" not in text.replace("cpu-x86_64-2026-11-28.*", ""), doc

def _row(suite, provider, median_s, **extra):
    info = dict(suite=suite, case=extra.pop("case", "emo_1m"), mode=extra.pop("mode", "infer"),
                provider=provider, dtype="fp32", layout="nchw", batch=4, size=224,
                device=extra.pop("device", "cpu"), device_name="dev", torch="t", triton="x")
    info.update(extra)
    return dict(name=f"test[{provider}]", extra_info=info,
                stats=dict(median=median_s, iqr=0.0, rounds=3))


def test_report_tiny_json(tmp_path):
    data = dict(datetime="2026-11-28T12:00:00", machine_info=dict(emo_bench=dict(
        device_name="dev", device_kind="cpu", device_model="Dev(R) Chip", threads=3,
        copy_gbps=1000.0, torch="t",
        triton="x", cuda="c", python="p", size=224, rounds=3, warmup=1, compile="1")),
        benchmarks=[
            _row("model", "eager", 0.2, model="emo_1m", peak_mem_mb=10.0, mem_metric="m"),
            _row("model", "fused[torch]", 0.1, model="emo_1m", peak_mem_mb=None,
                 mem_metric="m"),
            _row("model", "compile", 0.05, model="emo_1m", compile_s=12.0),
            _row("op", "torch", 0.004, op="window_attention", case="C8-hd4-7x7-ws7",
                 mode="fwd", device="cuda", bytes=4e9, copy_gbps=1000.0,
                 cuda_event_median_ms=2.0),
            _row("op", "triton", 0.004, op="window_attention", case="C8-hd4-7x7-ws7",
                 mode="fwd", device="cuda", bytes=4e9, copy_gbps=1000.0,
                 cuda_event_median_ms=8.0),
            dict(name="not ours", extra_info={}, stats=dict(median=1.0)),
        ])
    src = tmp_path / "in.json"
    src.write_text(json.dumps(data))
    assert report.main([str(src), "--out-dir", str(tmp_path), "--stem", "r"]) == 0
    md = (tmp_path / "r.md").read_text()
    assert "| emo_1m | infer | fp32 | nchw | 4 | fused[torch] | 100.00 | 0.00 | 40.0 | n/a | 2.00x | 0.50x |" in md
    assert "| emo_1m | infer | fp32 | nchw | 4 | compile | 50.00 | 0.00 | 80.0 | n/a | 4.00x | 1.00x | 12 |" in md
    # CUDA op rows: CUDA-event medians, bytes / time, share of the copy bandwidth
    assert "| C8-hd4-7x7-ws7 | fwd | fp32 | nchw | 4 | torch | 2.000 | 0.000 | 1.00x | – | 4000.0 | 2000 | 200 |" in md
    assert "| triton | 8.000 | 0.000 | 0.25x | – | 4000.0 | 500 | 50 |" in md
    merged = json.loads((tmp_path / "r.json").read_text())
    assert len(merged["rows"]) == 5
    assert merged["sources"] == ["in.json"] and merged["datetime"] == data["datetime"]
    # without --stem: the one naming scheme, from machine_info (tag: suites)
    assert report.main([str(src), "--out-dir", str(tmp_path / "d"), "--no-plot"]) == 0
    assert sorted(os.listdir(tmp_path / "d")) == [
        "cpu_Dev_Chip_20261128_t3_suites.json", "cpu_Dev_Chip_20261128_t3_suites.md"]
    # older JSON without the kind, model and threads: read off the rows' device_name
    del data["machine_info"]["emo_bench"]
    data["benchmarks"] = [b for b in data["benchmarks"] if b["extra_info"].get("suite") == "model"]
    for b in data["benchmarks"]:
        b["extra_info"]["device_name"] = "Intel(R) Xeon(R) Processor (1 threads)"
    src.write_text(json.dumps(data))
    assert report.main([str(src), "--out-dir", str(tmp_path / "e"), "--no-plot",
                        "--tag", "old"]) == 0
    assert sorted(os.listdir(tmp_path / "e"))[0] == "cpu_Intel_Xeon_Processor_20261128_t1_old.json"
    try:
        import matplotlib  # noqa: F401
        assert (tmp_path / "r.png").stat().st_size > 1000
    except ImportError:
        assert "plot skipped" in md


@pytest.mark.slow
@pytest.mark.skipif(bool(os.environ.get("GPU_CHECK_ACTIVE")), reason="inside bench/gpu_check.sh")
def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable)
    env.pop("TRITON_INTERPRET", None)  # set by conftest without a GPU; the benches refuse it
    p = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "dry run OK" in p.stdout
    files = sorted(f.name for f in out.iterdir())
    assert len(files) <= 8, files
    stem = next(f[:-3] for f in files if f.endswith(".md"))
    name = results.parse_stem(stem)  # the one naming scheme; EMO_BENCH_THREADS=1 in a dry run
    assert name is not None and (name["kind"], name["threads"], name["tag"]) == (
        "cpu", "1", "dryrun"), stem
    for f in ("env.txt", "summary.txt", "tests.log", "calibrate.jsonl", "gpu_measured.json",
              "logs.tar.gz", stem + ".json"):
        assert (out / f).stat().st_size > 0, f
    md = (out / (stem + ".md")).read_text()
    for op in ("expand_dwconv_act", "window_attention", "irmb_inference"):  # the op part ran
        assert f"## `{op}`" in md, op
    # the report's rows: the dry run's -k selection (forward, the torch reference, one shape
    # per op), each with a positive, finite time, and each in the markdown table
    rows = json.loads((out / (stem + ".json")).read_text())["rows"]
    assert {(r["op"], r["case"]) for r in rows} == {
        ("expand_dwconv_act", "Cin24-Cmid24-32x32-k3-s1-id"),
        ("window_attention", "C80-hd20-4x4-ws7"),
        ("irmb_inference", "Cin24-Cmid24-Cout24-32x32-k3-s1-id-se")}, rows
    for r in rows:
        assert (r["suite"], r["mode"], r["provider"], r["dtype"], r["batch"]) == (
            "op", "fwd", "torch", "fp32", 1), r
        assert _positive_finite(r["ms"]) and r["rounds"] == 1, r
        assert f"| {r['case']} | fwd | fp32 | nchw | 1 | torch | {r['ms']:.3f} |" in md
    env_txt = (out / "env.txt").read_text()
    assert "device: " in env_txt and f"torch: {torch.__version__}" in env_txt
    summary = (out / "summary.txt").read_text()
    for name in ("build", "gpu-tests", "calibrate", "ops", "measured", "tests-rest", "report"):
        assert f"[{name}] ok" in summary, summary
    # the GPU part comes first: the GPU test cases are collected before the calibration
    assert summary.index("[gpu-tests] ok") < summary.index("[calibrate] ok") < \
        summary.index("[tests-rest] ok")
    assert "collected" in (out / "tests.log").read_text()
    cal = [json.loads(line) for line in (out / "calibrate.jsonl").read_text().splitlines()]
    measures = [r for r in cal if r["kind"] == "measure"]
    names = {r["name"] for r in measures}
    assert {"copy", "l2", "gemm", "model eager", "model compile"} <= names, names
    assert all(_positive_finite(r["ms"]) for r in measures), measures
    assert all(_positive_finite(r[k]) for r in measures for k in ("gbps", "tflops", "img_s")
               if k in r), measures
    assert cal[0]["kind"] == "meta" and cal[0]["dry_run"] is True
    assert cal[-1]["kind"] == "done"
    table = json.loads((out / "gpu_measured.json").read_text())
    assert table["rows"] == []  # CPU rows never count as GPU measurements


def test_bench_cpu_tiny(tmp_path, monkeypatch):
    """bench.bench_cpu end to end on a tiny setting (EMO-1M, 64x64, 2 rounds, no compile): every
    variant gives the eager logits (OpenVINO in its default precision, bf16 on a CPU with it,
    to within 5e-2), its times are sane, and the tables are written under the one naming
    scheme (default file name, with --tag)."""
    from bench import bench_cpu
    onnx = importlib.util.find_spec("onnxruntime") is not None
    openvino = importlib.util.find_spec("openvino") is not None
    monkeypatch.setattr(results, "RESULTS_DIR", str(tmp_path))
    bench_cpu.main(["--models", "emo_1m", "--batch", "1", "--size", "64", "--iters", "2",
                    "--warmup", "1", "--gap-ms", "0", "--no-compile", "--tag", "Tiny run"]
                   + ([] if onnx else ["--no-onnx"]) + ([] if openvino else ["--no-openvino"]))
    files = sorted(os.listdir(tmp_path))
    stem = results.stem_for("cpu", "tiny_run")
    assert files == [stem + ".json", stem + ".md"]
    doc = json.loads((tmp_path / (stem + ".json")).read_text())
    rows = doc["rows"]
    variants = ["eager fused=False"] + (["onnxruntime fused=False"] if onnx else []) + (
        ["openvino fused=False"] * 2 if openvino else []) + ["fused=True", "InferencePlan"]
    assert [r["variant"].split(" (")[0] for r in rows] == variants
    ov_default = [r for r in rows if r["variant"].startswith("openvino fused=False (default: ")]
    if openvino:
        assert len(ov_default) == 1 and ov_default[0]["precision"] in ("f32", "bf16", "f16")
        assert ov_default[0]["variant"].endswith(f"(default: {ov_default[0]['precision']})")
        assert 0 <= ov_default[0]["rel_err_vs_eager"] <= 5e-2
    for r in rows:
        assert (r["model"], r["batch"], r["size"], r["iters"]) == ("emo_1m", 1, 64, 2)
        assert r["threads"] == torch.get_num_threads() and r["device"] == env.cpu_model()
        assert all(_positive_finite(r[k]) for k in (
            "ms_p20", "ms_p50", "ms_p80", "img_s", "fused_speedup",
            "fused_speedup_per_round")), r
        assert r["ms_p20"] <= r["ms_p50"] <= r["ms_p80"]
        assert r["img_s"] == pytest.approx(1e3 / r["ms_p50"])
        if r not in ov_default:
            assert r["precision"] == "f32" and 0 <= r["rel_err_vs_eager"] <= 1e-4, r
    fused = next(r for r in rows if r["variant"].startswith("fused=True"))
    assert fused["fused_speedup"] == fused["fused_speedup_per_round"] == 1.0
    md = (tmp_path / (stem + ".md")).read_text()
    assert md.startswith(doc["header"]) and "median of per-round ratios" in md
    for r in rows:
        assert f"| emo_1m | 1 | {r['variant']} | {r['ms_p50']:.1f} |" in md


def test_bench_cpu_without_openvino(monkeypatch, capsys):
    """An optional peer that does not import is left out with the reason printed, no crash."""
    from bench import bench_cpu
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    v = bench_cpu.build("emo_1m", torch.randn(1, 3, 64, 64), False, False, 1, plan=False)
    assert [k.split(" (")[0] for k in v] == ["eager fused=False", "fused=True"]
    assert "openvino fused=False skipped: openvino is not importable" in capsys.readouterr().out


def test_throughput_main_job_tiny(tmp_path, capsys):
    """The README's main job (bench.throughput) end to end on a tiny setting: every variant
    runs, with sane times, and the table and the JSON name them."""
    from bench import throughput
    out = tmp_path / "rows.json"
    throughput.main(["--models", "emo_1m", "--batch", "1", "--size", "64", "--iters", "2",
                     "--warmup", "1", "--json", str(out)])
    text = capsys.readouterr().out
    rows = json.loads(out.read_text())
    assert [r["variant"] for r in rows] == [
        "eager fused=False", "fused=True (auto)", "InferencePlan (frozen)"]
    for r in rows:
        assert (r["model"], r["mode"], r["batch"], r["iters"]) == ("emo_1m", "infer", 1, 2)
        assert all(_positive_finite(r[k]) for k in ("ms", "img_s", "speedup_vs_eager")), r
        assert r["img_s"] == pytest.approx(1e3 / r["ms"])
        assert f"| emo_1m | infer | 1 | {r['variant']} | {r['ms']:.1f} |" in text, text
    assert rows[0]["speedup_vs_eager"] == 1.0
