"""pytest-benchmark suite of whole EMO models: inference and training-step throughput (img/s)
with peak memory, for

    eager            fused=False, eager PyTorch (the baseline)
    fused[<b>]       fused=True with emo_kernels backend <b>, each backend that can run
                     every op call of the model (``explain``), the torch reference included
    fused[auto:<bs>] fused=True with backend 'auto' (per op call, the first backend that can
                     run it), only when that mixes backends (e.g. triton+torch)
    compile          torch.compile of fused=False          } only with EMO_BENCH_COMPILE=1
    compile-fused[auto:<bs>]  torch.compile of fused=True } (slow: ~50-80 s per EMO-5M
                     with backend 'auto'                   } compile on 2 CPU cores)

    python -m pytest bench/bench_model.py --benchmark-json=model.json
Settings: EMO_BENCH_* environment variables (bench/config.py, ``config``). Each row builds its
model afresh (same seed, same weights), warms up, measures peak memory over one step, then
times ``rounds`` steps (pytest-benchmark; on CUDA also CUDA-event medians in extra_info).
"""
import statistics
import time

import pytest
import torch

from bench import config, engines, memory, models, suites, support, timing
from emo_kernels import BACKENDS, BackendUnavailableError


def variants(cfg):
    out = [] if cfg.compile == "only" else (
        ["eager"] + [f"fused[{b}]" for b in BACKENDS] + ["fused[auto]"])
    if cfg.compile != "0":
        out += ["compile", "compile-fused[auto]"]
    return out


def cases():
    cfg = config.config()
    params = []
    # most important first (a time-capped run keeps what it finished): batch, dtype, model
    for batch in cfg.batches:
        for dtype in cfg.dtypes:
            for layout in cfg.layouts:
                for name in cfg.models:
                    for mode in ("infer", "train"):
                        for var in variants(cfg):
                            params.append(pytest.param(
                                name, mode, dtype, layout, batch, var,
                                id=f"{name}-{mode}-{config.SHORT_DTYPE[dtype]}-{layout}-"
                                   f"B{batch}-{var}"))
    return params


@pytest.mark.parametrize("name,mode,dtype,layout,batch,variant", cases())
def test_model(benchmark, name, mode, dtype, layout, batch, variant):
    cfg = config.config()
    dev, train = cfg.device, mode == "train"
    benchmark.group = f"{name} {mode} {config.SHORT_DTYPE[dtype]} {layout} B{batch}"
    compiled = variant.startswith("compile")
    fused = "fused" in variant
    backend, provider = None, variant
    if fused:
        backend = variant[variant.index("[") + 1:-1]
        if backend == "auto":
            # what emo_kernels picks by itself, op call by op call: a mix where some kernels
            # exist only for some ops; a single backend's rows already cover the rest
            picks = support.model_auto_backends(name, dev, dtype, layout, cfg.size, train)
            provider = variant.replace("[auto]", f"[auto:{'+'.join(picks)}]")
            if len(picks) == 1 and not compiled:
                pytest.skip(f"auto picks only {picks[0]} here: that is the fused[{picks[0]}] row")
        else:
            reasons = support.model_backend_reasons(name, dev, dtype, layout, cfg.size, train)
            if reasons[backend] is not None:
                pytest.skip(f"{backend}: {reasons[backend]}")
    torch.manual_seed(0)
    base = models.build_model(name, dev, dtype, layout, train)
    model = models.build_model(name, dev, dtype, layout, train, fused=True, like=base) \
        if fused else base
    del base  # (fused rows) only the timed model stays on the device
    if compiled:
        model = engines.torch_compile(model, fresh=True)
    x = models.model_input(batch, cfg.size, dev, dtype, layout)
    step = models.BackendStep(models.make_step(model, x, train), backend)
    t0 = time.perf_counter()
    try:  # the first step (the compile, for compiled rows)
        step()
        timing.sync(dev)
    except BackendUnavailableError as e:  # explain said yes on synthesized inputs, but the
        pytest.skip(f"{backend}: {e}")   # model's own tensors (strides) were refused
    except Exception as e:  # noqa: BLE001
        if not compiled:
            raise
        pytest.skip(f"torch.compile failed: {type(e).__name__}: {str(e)[:300]}")
    compile_s = time.perf_counter() - t0 if compiled else None
    for _ in range(cfg.warmup):
        step()
    mem_mb, mem_metric = memory.peak_memory(step, dev)
    times = timing.benchmark_rounds(benchmark, step, dev, cfg.rounds, warmup=0)
    info = suites.base_info(cfg, dtype, layout, batch)
    info.update(suite="model", model=name, case=name, mode=mode,
                provider=provider,
                backend=backend, fused=fused, compiled=compiled, peak_mem_mb=mem_mb,
                mem_metric=mem_metric)
    if compile_s is not None:
        info["compile_s"] = compile_s
    if dev.type == "cuda":
        info["cuda_event_median_ms"] = statistics.median(times) * 1e3
    benchmark.extra_info.update(info)
