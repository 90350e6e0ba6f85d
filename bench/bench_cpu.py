"""EMO inference on CPU: fused=True (cpu backend) against eager, torch.compile, ONNX Runtime and
OpenVINO.

    python -m bench.bench_cpu                                  # EMO-5M, fp32, batch 1 and 16
    python -m bench.bench_cpu --models emo_1m emo_5m --batch 1 16 --iters 30 --no-compile

All variants are built from one state dict and timed in ONE process, interleaved (round-robin,
one timed call of each per round), so that the noise of a shared machine hits all alike; the
table reports medians (and p20/p80), the ratio of the medians and the median of the per-round
ratios (each variant's call against fused=True's call of the same round). Before each timed call
the process sleeps --gap-ms (default 50): ONNX Runtime's intra-op threads keep spinning for a
while after a run, and without the gap they steal a core from whichever variant runs next
(measured: fused=True at batch 1, 2 threads, went from ~25 ms to ~62 ms when timed right after
ONNX Runtime); OpenVINO's thread pool may do the same. Variants:

    eager fused=False           the exact PyTorch model (NCHW), torch.inference_mode
    torch.compile fused=False   inductor (dynamic=False), after warm-up
    onnxruntime fused=False     legacy exporter (dynamo=False), opset 17, CPUExecutionProvider,
                                graph optimizations on, intra-op threads = torch's
    openvino fused=False (f32)  the same ONNX export compiled by OpenVINO for its CPU plugin,
                                INFERENCE_NUM_THREADS = torch's threads, latency hint,
                                inference precision hint f32
    openvino fused=False (default: <p>)  the same without a precision hint: the plugin's
                                default, <p> as the compiled model reports it (bf16 on a CPU
                                with native bf16, avx512_bf16 or AMX; else f32)
    fused=True                  emo_kernels auto backend (cpu on CPU tensors); prepared on
                                every call (BN folds, chain, weight packing): always current
    InferencePlan               fused.prepare_inference(): the same, prepared once (frozen)

Logits of every variant are checked against eager fused=False (max rel err printed). ONNX
Runtime and OpenVINO are optional: when one is not importable its variants are left out, with
the reason printed (--no-onnx / --no-openvino leave them out on purpose).
Results go to bench/results/cpu_<cpu>_<YYYYMMDD>_t<threads>[_<tag>].{md,json} (bench/results.py)
unless --out is given.
"""
import argparse
import datetime
import importlib
import os
import statistics
import sys
import time

import torch

import emo
import emo_kernels
from bench import engines, env, results, timing


def importable(module, what):
    """Whether ``module`` imports; if not, prints why ``what`` is left out."""
    try:
        importlib.import_module(module)
        return True
    except ImportError as e:
        print(f"  {what} skipped: {module} is not importable ({e})", flush=True)
        return False


def build(name, x, compile_, onnx, threads, plan=True, openvino=True):
    torch.manual_seed(0)
    base = emo.create_model(name).eval()
    fused = emo.create_model(name, fused=True).eval()
    fused.load_state_dict(base.state_dict())
    v = {"eager fused=False": base}
    if compile_:
        v["torch.compile fused=False"] = engines.torch_compile(base, dynamic=False)
    peers = [m for m, on in (("onnxruntime", onnx), ("openvino", openvino))
             if on and importable(m, f"{m} fused=False")]
    onnx_file = engines.onnx_export(base, x) if peers else None  # one export for all of them
    if "onnxruntime" in peers:
        v["onnxruntime fused=False"] = engines.onnxruntime_session(onnx_file, x, threads)
    if "openvino" in peers:
        for precision in ("f32", None):
            fn = engines.openvino_model(onnx_file, x, threads, precision)
            v[f"openvino fused=False ({precision or 'default: ' + fn.precision})"] = fn
    v[f"fused=True ({emo_kernels.get_backend()})"] = fused
    if plan:
        v["InferencePlan (frozen)"] = fused.prepare_inference()
    return v


def pct(ts, q):
    ts = sorted(ts)
    return ts[min(len(ts) - 1, int(q * len(ts)))]


def run(args):
    rows = []
    for name in args.models:
        for batch in args.batch:
            torch.manual_seed(0)
            x = torch.randn(batch, 3, args.size, args.size)
            variants = build(name, x, not args.no_compile, not args.no_onnx,
                             torch.get_num_threads(), not args.no_plan, not args.no_openvino)
            with torch.inference_mode():
                ref = variants["eager fused=False"](x)
                errs = {}
                for k, fn in variants.items():
                    t0 = time.perf_counter()
                    out = fn(x)
                    for _ in range(args.warmup - 1):
                        fn(x)
                    errs[k] = ((out - ref).abs().max() / ref.abs().max()).item()
                    print(f"  warm-up {name} b{batch} {k}: {time.perf_counter() - t0:.1f} s, "
                          f"rel err vs eager {errs[k]:.1e}", flush=True)
                calls = {k: (lambda fn=fn: fn(x)) for k, fn in variants.items()}
                times = timing.interleaved(calls, "cpu", args.iters, gap_s=args.gap_ms / 1e3)
            med = {k: statistics.median(ts) for k, ts in times.items()}
            fused_key = [k for k in med if k.startswith("fused=True")][0]
            for k, ts in times.items():
                # the ratio within each round (calls adjacent in time), then its median: robust
                # to the machine's speed drifting during the run, unlike the ratio of medians
                per_round = statistics.median(a / b for a, b in zip(ts, times[fused_key]))
                rows.append(dict(
                    model=name, batch=batch, size=args.size, dtype="float32", variant=k,
                    precision=getattr(variants[k], "precision", "f32"),
                    ms_p50=med[k] * 1e3, ms_p20=pct(ts, 0.2) * 1e3, ms_p80=pct(ts, 0.8) * 1e3,
                    img_s=batch / med[k], fused_speedup=med[k] / med[fused_key],
                    fused_speedup_per_round=per_round,
                    rel_err_vs_eager=errs[k], iters=args.iters, threads=torch.get_num_threads(),
                    device=env.cpu_model(), torch=torch.__version__))
    return rows


def table(rows):
    lines = ["| model | batch | variant | ms p50 | p20-p80 | img/s | fused=True speedup "
             "(ratio of medians) | fused=True speedup (median of per-round ratios) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['variant']} | {r['ms_p50']:.1f} | "
                     f"{r['ms_p20']:.1f}-{r['ms_p80']:.1f} | {r['img_s']:.1f} | "
                     f"{r['fused_speedup']:.2f}x | {r['fused_speedup_per_round']:.2f}x |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["emo_5m"], choices=emo.list_models())
    p.add_argument("--batch", nargs="+", type=int, default=[1, 16])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=None, help="torch, ORT and OpenVINO threads")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--gap-ms", type=float, default=50.0,
                   help="sleep before each timed call (lets thread pools go idle)")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--no-onnx", action="store_true")
    p.add_argument("--no-openvino", action="store_true")
    p.add_argument("--no-plan", action="store_true", help="leave out the InferencePlan variant")
    p.add_argument("--note", default="", help="free text stored with the results")
    p.add_argument("--tag", default=None,
                   help="what was run, appended to the default file name (bench/results.py)")
    p.add_argument("--out", default=None, help="path prefix of the .md/.json results "
                   "(default: bench/results/cpu_<cpu>_<YYYYMMDD>_t<threads>[_<tag>])")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args)
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    peers = "".join(f"; {m} {sys.modules[m].__version__}" for m in ("onnxruntime", "openvino")
                    if m in sys.modules)  # the versions of the peers that ran
    head = (f"device: {env.cpu_model()}, {torch.get_num_threads()} threads; torch {torch.__version__}"
            f"{peers}; "
            f"fp32 {args.size}x{args.size}; {args.iters} interleaved rounds; load average at "
            f"end {load}; {args.gap_ms:g} ms idle before each timed call; "
            f"{datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC. {args.note}")
    text = head + "\n\n" + table(rows) + "\n"
    print(text)
    out = args.out or os.path.join(results.RESULTS_DIR, results.stem_for("cpu", args.tag))
    results.write(out, text, dict(header=head, rows=rows))
    print(f"wrote {out}.md and .json")


if __name__ == "__main__":
    main()
