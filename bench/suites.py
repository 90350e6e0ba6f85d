"""The pytest-benchmark suites' shared parts: each row's ``extra_info`` (:func:`base_info`)
and the op suites (``bench/bench_expand_dwconv_act.py``, ``bench/bench_window_attention.py``,
``bench/bench_irmb_inference.py``): their cases (:func:`op_cases`) and one row's run
(:func:`run_op_row`). Settings: ``bench.config``.
"""
import statistics

import torch

import emo_kernels
from bench import engines, env, memory, timing
from bench.config import SHORT_DTYPE, Config, config
from bench.shapes import OPS, distinct_specs
from bench.support import backend_reasons
from emo_kernels import measured, reference


def base_info(cfg: Config, dtype, layout, batch):
    info = dict(device=cfg.device.type, device_name=env.device_name(cfg.device),
                dtype=SHORT_DTYPE[dtype], layout=layout, batch=batch, size=cfg.size)
    info.update(env.versions())
    if cfg.device.type == "cuda":
        info["copy_gbps"] = memory.copy_bandwidth_cached(cfg.device)
        info["family"] = measured.device_family(cfg.device)
    return info


COMPILED = "torch.compile"   # provider: torch.compile of the reference (the torch backend)


def op_cases(op):
    """pytest.param list for one op: every distinct block shape of the configured models x
    mode (the op's ``OPS`` modes: fwd, fwd+bwd; irmb_inference: fwd only) x dtype x layout x
    batch x provider (each backend, and torch.compile of the reference when EMO_BENCH_COMPILE
    is set), with readable ids."""
    import pytest
    cfg = config()
    specs = distinct_specs(tuple(cfg.shape_models), cfg.size, OPS[op]["kind"])
    providers = [] if cfg.compile == "only" else list(emo_kernels.BACKENDS)
    if cfg.compile != "0":
        providers.append(COMPILED)
    cases = []
    for dtype in cfg.dtypes:
        for layout in cfg.layouts:
            for batch in cfg.op_batches:
                for mode in OPS[op]["modes"]:
                    for spec, uses in specs.items():
                        for prov in providers:
                            cases.append(pytest.param(
                                spec, uses, mode, dtype, layout, batch, prov,
                                id=f"{mode}-{spec.id}-{SHORT_DTYPE[dtype]}-{layout}-B{batch}-"
                                   f"{prov}"))
    return cases


def run_op_row(benchmark, op, spec, uses, mode, dtype, layout, batch, provider):
    """Time one op row (skipping, with explain's reason, a backend that cannot run it)."""
    import pytest
    cfg = config()
    dev = cfg.device
    train = mode == "fwd+bwd"
    args, kwargs, leaves = OPS[op]["inputs"](spec, batch, dev, dtype, layout, train)
    public = getattr(emo_kernels, op)
    if provider == COMPILED:
        ref = getattr(reference, op + "_ref")
        compiled = engines.torch_compile(ref, fresh=True, dynamic=False)

        def call():
            return compiled(*args, **kwargs)
    else:
        reason = backend_reasons(op, args, kwargs)[provider]
        if reason is not None:
            pytest.skip(f"{provider}: {reason}")

        def call():
            with emo_kernels.use_backend(provider):
                return public(*args, **kwargs)
    if train:
        try:
            out = call()
        except emo_kernels.BackendUnavailableError as e:
            pytest.skip(f"{provider}: {e}")
        grad = torch.randn_like(out)
        del out

        def fn():
            for t in leaves:
                t.grad = None
            call().backward(grad)
    else:
        def fn():
            with torch.no_grad():
                call()
    try:
        times = timing.benchmark_rounds(benchmark, fn, dev, cfg.rounds, cfg.warmup)
    except emo_kernels.BackendUnavailableError as e:
        pytest.skip(f"{provider}: {e}")
    except Exception as e:  # noqa: BLE001
        if provider == COMPILED:
            pytest.skip(f"torch.compile failed: {type(e).__name__}: {str(e)[:300]}")
        raise
    info = base_info(cfg, dtype, layout, batch)
    elem = torch.empty((), dtype=dtype).element_size()
    info.update(suite="op", op=op, case=spec.id, mode=mode, provider=provider,
                shape_class=measured.shape_class(op, args, kwargs),
                backend=None if provider == COMPILED else provider,
                compiled=provider == COMPILED,
                uses={m: len(b) for m, b in uses.items()}, bytes=OPS[op]["bytes"](
                    spec, batch, elem, mode))
    if dev.type == "cuda":
        info["cuda_event_median_ms"] = statistics.median(times) * 1e3
    benchmark.extra_info.update(info)
