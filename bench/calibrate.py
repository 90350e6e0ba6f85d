"""The calibration measurements the first GPU run must take (``../shared/docs/gpu-design.md``,
"What the first GPU run must measure"), most important first, each written the moment it is
taken (one JSON object per line), so a run cut short still leaves what it measured:

1. ``copy``     device-to-device copy bandwidth of a 1 GiB buffer (DRAM), GB/s
2. ``l2``       copy bandwidth of a buffer pair that fits in L2 (2 x 12 MiB), GB/s
3. ``gemm``     one bf16 GEMM (8192^3), TFLOP/s
4. ``dwconv``   cuDNN depthwise conv of EMO-5M's s1.1 and s3.1 shapes (batch 256, bf16,
                channels_last): time, bytes / time and its fraction of the copy bandwidth
5. ``block``    ``expand_dwconv_act`` of s1.1 and s3.1 (batch 256, bf16, channels_last,
                inference) per backend (torch path, triton, cuda), beside the paper estimates
6. ``model``    EMO-5M inference at batch 256 (bf16, channels_last): eager ``fused=False``,
                ``fused=True`` per backend, the triton ``InferencePlan`` launched eagerly and
                replayed from a CUDA graph (issue #14's D1 kernels), torch.compile (default
                mode) of ``fused=False``

Predictions printed beside the measurements are the paper estimates of gpu-design.md (a model,
not a measurement) until ``bench.gpu_model`` exists.

    python -m bench.calibrate --out calib.jsonl        # on the GPU (bench/gpu_check.sh runs it)
    python -m bench.calibrate --out c.jsonl --dry-run  # CPU smoke run, tiny sizes (CI)
"""
import argparse
import json
import sys
import time

import torch

import emo_kernels
from bench import engines, env, memory, models, shapes, support, timing

# gpu-design.md's estimates for an H200 (ms per batch of 256, bf16): a model, not a measurement
PAPER = {
    "block stage3.1 torch": 0.52, "block stage3.1 triton": 2.15,
    "model eager": 11.3, "model compile": 7.9, "model fused[triton]": 36.0,
    "copy": 4300.0, "l2": 7000.0, "gemm": 790.0,
}


class Recorder:
    """Appends one JSON line per measurement to ``path`` (flushed) and echoes it."""

    def __init__(self, path, meta, paper=True):
        self.f = open(path, "a")
        self.paper = paper
        self.emit(dict(kind="meta", **meta))

    def emit(self, row):
        self.f.write(json.dumps(row) + "\n")
        self.f.flush()
        pred = PAPER.get(row.get("name", "")) if self.paper else None
        extra = f"   (paper estimate: {pred})" if pred is not None else ""
        print(f"calibrate: {json.dumps(row)}{extra}", flush=True)


def measure_copy(rec, device, tiny):
    nbytes = (1 << 20) if tiny else (1 << 30)
    src = torch.empty(nbytes // 4, device=device).uniform_()
    dst = torch.empty_like(src)
    t = timing.median_time(lambda: dst.copy_(src), device, 3 if tiny else 20)
    rec.emit(dict(kind="measure", name="copy", bytes=2 * nbytes, ms=t * 1e3,
                  gbps=2 * nbytes / t / 1e9))
    nbytes = (1 << 16) if tiny else (12 << 20)
    src = torch.empty(nbytes // 4, device=device).uniform_()
    dst = torch.empty_like(src)

    def many():
        for _ in range(20):
            dst.copy_(src)
    t = timing.median_time(many, device, 3 if tiny else 20) / 20
    rec.emit(dict(kind="measure", name="l2", bytes=2 * nbytes, ms=t * 1e3,
                  gbps=2 * nbytes / t / 1e9))


def measure_gemm(rec, device, tiny):
    n = 128 if tiny else 8192
    dt = torch.float32 if device.type == "cpu" else torch.bfloat16
    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn(n, n, device=device, dtype=dt)
    t = timing.median_time(lambda: a @ b, device, 3 if tiny else 10)
    rec.emit(dict(kind="measure", name="gemm", n=n, dtype=str(dt), ms=t * 1e3,
                  tflops=2 * n ** 3 / t / 1e12))


def _specs(model, size):
    specs = dict(shapes.block_specs(model, size))
    return {name: specs[name] for name in ("stage1.1", "stage3.1") if name in specs}


def measure_dwconv(rec, device, dtype, batch, model, size, copy_gbps):
    for name, s in _specs(model, size).items():
        x = torch.randn(batch, s.cmid, s.H, s.W, device=device, dtype=dtype).contiguous(
            memory_format=torch.channels_last)
        w = torch.randn(s.cmid, 1, s.k, s.k, device=device, dtype=dtype)
        pad = -(-(s.k - s.stride) // 2)
        conv = lambda: torch.nn.functional.conv2d(x, w, None, s.stride, pad, 1, s.cmid)  # noqa: E731
        t = timing.median_time(conv, device, 10)
        ho, wo = s.out_hw
        nbytes = x.element_size() * batch * s.cmid * (s.H * s.W + ho * wo)
        gbps = nbytes / t / 1e9
        rec.emit(dict(kind="measure", name=f"dwconv {name}", shape=s.id, ms=t * 1e3,
                      gbps=gbps, copy_fraction=gbps / copy_gbps if copy_gbps else None))


def measure_blocks(rec, device, dtype, batch, model, size):
    for name, s in _specs(model, size).items():
        args, kw, _ = shapes.dw_inputs(s, batch, device, dtype, "nhwc", train=False)
        reasons = support.backend_reasons("expand_dwconv_act", args, kw)
        for b in emo_kernels.BACKENDS:
            if reasons[b] is not None:
                rec.emit(dict(kind="skip", name=f"block {name} {b}", why=reasons[b]))
                continue

            def call(b=b):
                with torch.no_grad(), emo_kernels.use_backend(b):
                    emo_kernels.expand_dwconv_act(*args, **kw)
            try:
                t = timing.median_time(call, device, 10)
            except Exception as e:  # noqa: BLE001  (record and go on)
                rec.emit(dict(kind="error", name=f"block {name} {b}", error=repr(e)[:300]))
                continue
            rec.emit(dict(kind="measure", name=f"block {name} {b}", shape=s.id, ms=t * 1e3))


def measure_model(rec, device, dtype, batch, model, size, compile_mode):
    x = models.model_input(batch, size, device, dtype, "nhwc")
    eager = models.build_model(model, device, dtype, "nhwc").eval()
    fused = models.build_model(model, device, dtype, "nhwc", fused=True, like=eager).eval()
    rows = [("model eager", eager, None)]
    reasons = support.model_backend_reasons(model, device, dtype, "nhwc", size, False)
    rows += [(f"model fused[{b}]", fused, b) for b in emo_kernels.BACKENDS if reasons[b] is None]
    for name, m, backend in rows:
        step = models.BackendStep(models.make_step(m, x, False), backend)
        try:
            t = timing.median_time(step, device, 5)
        except Exception as e:  # noqa: BLE001
            rec.emit(dict(kind="error", name=name, error=repr(e)[:300]))
            continue
        rec.emit(dict(kind="measure", name=name, model=model, batch=batch, ms=t * 1e3,
                      img_s=batch / t))
    measure_plans(rec, fused, x, model, batch)
    t0 = time.perf_counter()
    compiled = engines.torch_compile(eager, **compile_mode)
    with torch.inference_mode():
        compiled(x)
    compile_s = time.perf_counter() - t0
    t = timing.median_time(models.make_step(compiled, x, False), device, 5)
    rec.emit(dict(kind="measure", name="model compile", model=model, batch=batch, ms=t * 1e3,
                  img_s=batch / t, compile_s=compile_s, mode=str(compile_mode)))


def measure_plans(rec, model_, x, model, batch):
    """The D1 deployment (issue #14): ``emo.prepare_inference`` on the triton backend, launched
    eagerly, and captured in a CUDA graph (``GraphedPlan``); a skip row where it cannot run."""
    import emo
    plan = emo.prepare_inference(model_)
    with emo_kernels.use_backend("triton"):
        graphed = plan.cuda_graph(x)
        for name, run in (("model plan[triton]", plan), ("model plan+graph[triton]", graphed)):
            if name.endswith("graph[triton]") and graphed.graph is None:
                rec.emit(dict(kind="skip", name=name, why=graphed.reason))
                continue
            try:
                t = timing.median_time(lambda run=run: run(x), x.device, 5)
            except emo_kernels.BackendUnavailableError as e:
                rec.emit(dict(kind="skip", name=name, why=str(e)[:300]))
                continue
            except Exception as e:  # noqa: BLE001
                rec.emit(dict(kind="error", name=name, error=repr(e)[:300]))
                continue
            rec.emit(dict(kind="measure", name=name, model=model, batch=batch, ms=t * 1e3,
                          img_s=batch / t))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON-lines file (appended)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes (smoke test)")
    a = ap.parse_args(argv)
    tiny = a.dry_run
    device = torch.device("cpu") if tiny else env.default_device()
    if device.type != "cuda" and not tiny:
        print("calibrate: no GPU here; use --dry-run for the CPU smoke run", file=sys.stderr)
        return 2
    dtype = torch.float32 if tiny else torch.bfloat16
    batch, size, model = (1, 64, "emo_1m") if tiny else (256, 224, "emo_5m")
    rec = Recorder(a.out, dict(device=env.device_name(device), dry_run=tiny,
                               date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               **env.versions()), paper=not tiny)
    measure_copy(rec, device, tiny)
    measure_gemm(rec, device, tiny)
    copy = memory.copy_bandwidth_cached(device)
    measure_dwconv(rec, device, dtype, batch, model, size, copy)
    measure_blocks(rec, device, dtype, batch, model, size)
    measure_model(rec, device, dtype, batch, model, size,
                  dict(backend="eager") if tiny else dict(mode="default"))
    rec.emit(dict(kind="done"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
