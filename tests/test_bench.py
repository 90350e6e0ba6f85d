"""The benchmark harness cannot rot: block shapes read off the models, the bytes formulas, the
report on a small hand-made JSON, and bench/gpu_check.sh in its CPU dry-run mode (every part
with tiny settings). No test here times anything or fails on speed."""
import json
import os
import subprocess
import sys

import pytest

import emo
from bench import report, results, shapes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    assert "## `expand_dwconv_act`" in md and "## `window_attention`" in md  # the op part ran
    summary = (out / "summary.txt").read_text()
    for name in ("build", "gpu-tests", "calibrate", "ops", "measured", "tests-rest", "report"):
        assert f"[{name}] ok" in summary, summary
    # the GPU part comes first: the GPU test cases are collected before the calibration
    assert summary.index("[gpu-tests] ok") < summary.index("[calibrate] ok") < \
        summary.index("[tests-rest] ok")
    assert "collected" in (out / "tests.log").read_text()
    cal = [json.loads(line) for line in (out / "calibrate.jsonl").read_text().splitlines()]
    names = {r.get("name") for r in cal if r["kind"] == "measure"}
    assert {"copy", "l2", "gemm", "model eager", "model compile"} <= names, names
    assert cal[-1]["kind"] == "done"
    table = json.loads((out / "gpu_measured.json").read_text())
    assert table["rows"] == []  # CPU rows never count as GPU measurements


def test_bench_cpu_tiny(tmp_path):
    """bench.bench_cpu end to end on a tiny setting (EMO-1M, 64x64, 2 rounds, no compile): every
    variant gives the eager logits, and the tables are written."""
    pytest.importorskip("onnxruntime")
    from bench import bench_cpu
    out = tmp_path / "cpu"
    bench_cpu.main(["--models", "emo_1m", "--batch", "1", "--size", "64", "--iters", "2",
                    "--warmup", "1", "--gap-ms", "0", "--no-compile", "--out", str(out)])
    rows = json.loads((tmp_path / "cpu.json").read_text())["rows"]
    assert [r["variant"].split(" (")[0] for r in rows] == [
        "eager fused=False", "onnxruntime fused=False", "fused=True", "InferencePlan"]
    assert all(r["rel_err_vs_eager"] <= 1e-4 for r in rows)
    assert all(r["fused_speedup_per_round"] > 0 for r in rows)
    assert "median of per-round ratios" in (tmp_path / "cpu.md").read_text()


def test_throughput_main_job_tiny(capsys):
    """The README's main job (bench.throughput) end to end on a tiny setting: every variant
    runs, and the table names them."""
    from bench import throughput
    throughput.main(["--models", "emo_1m", "--batch", "1", "--size", "64", "--iters", "1",
                     "--warmup", "1"])
    out = capsys.readouterr().out
    for variant in ("eager fused=False", "fused=True (auto)", "InferencePlan (frozen)"):
        assert f"| emo_1m | infer | 1 | {variant} |" in out, out
