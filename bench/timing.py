"""The one timer of the benchmarks, CPU and CUDA alike.

:func:`time_call` is the only place that reads a clock for a measurement: on a CUDA device,
CUDA events recorded on the device's current stream around the call, then a synchronize of the
device (so the call's kernels are counted, and a host timer around it sees them too); on the
CPU, ``time.perf_counter`` around the call. Everything else builds on it: repeated calls
(:func:`time_calls`, :func:`median_time`), variants timed round-robin (:func:`interleaved`),
and the pytest-benchmark suites (:func:`benchmark_rounds`). It needs no GPU.

(Setup durations that are reported but not benchmarked -- a torch.compile, a warm-up, a
build -- are plain wall-clock ``perf_counter`` differences where they happen.)
"""
import statistics
import time
from typing import Callable, Dict, List

import torch


def sync(device):
    """Wait for the device's queued work (nothing to wait for on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device="cpu") -> float:
    """Seconds that one call of ``fn`` takes on ``device`` (see the module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        with torch.cuda.device(device):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_calls(fn, device="cpu", repeats=1, warmup=0, gap_s=0.0) -> List[float]:
    """Seconds of each of ``repeats`` timed calls of ``fn``, after ``warmup`` untimed calls
    (then a synchronize); ``gap_s``: sleep that long before each timed call."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, not {repeats}")
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        if gap_s:
            time.sleep(gap_s)
        times.append(time_call(fn, device))
    return times


def median_time(fn, device="cpu", repeats=5, warmup=2) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    return statistics.median(time_calls(fn, device, repeats, warmup))


def interleaved(fns: Dict[str, Callable[[], object]], device="cpu", rounds=10,
                gap_s=0.0) -> Dict[str, List[float]]:
    """{name: seconds per round}: ``rounds`` rounds, each one timed call of every function in
    turn (round-robin), so that a shared machine's noise hits all of them alike. No warm-up
    here; ``gap_s``: sleep that long before each timed call (lets thread pools go idle)."""
    times: Dict[str, List[float]] = {k: [] for k in fns}
    sync(device)
    for _ in range(rounds):
        for k, fn in fns.items():
            if gap_s:
                time.sleep(gap_s)
            times[k].append(time_call(fn, device))
    return times


def benchmark_rounds(benchmark, fn, device, rounds, warmup) -> List[float]:
    """Time ``fn`` under pytest-benchmark: ``warmup`` untimed calls, then ``rounds`` rounds of
    one call, each through :func:`time_call` (so each ends synchronized, and pytest-benchmark's
    host timer sees the device time). Returns :func:`time_call`'s seconds per round: the
    CUDA-event times on CUDA, which the report prefers there."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    sync(device)
    times: List[float] = []
    benchmark.pedantic(lambda: times.append(time_call(fn, device)), rounds=rounds,
                       iterations=1, warmup_rounds=0)
    return times
