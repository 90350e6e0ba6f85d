"""Memory and bandwidth of the device: the device-to-device copy bandwidth (the yardstick of a
GPU row's achieved GB/s) and the peak memory of one benchmark step.
"""
import functools
import gc
import statistics
from typing import Dict, Optional, Tuple

import torch

from bench import timing


def copy_bandwidth(device, nbytes=1 << 30, reps=20) -> Optional[float]:
    """Device-to-device copy bandwidth in GB/s (bytes read + bytes written): median time of
    ``reps`` copies of a ``nbytes`` buffer (the one timer: CUDA events); None on CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    src = torch.empty(nbytes // 4, device=device, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    copy = functools.partial(dst.copy_, src)
    times = timing.time_calls(copy, device, reps, warmup=3)
    del src, dst, copy
    torch.cuda.empty_cache()
    return 2 * nbytes / statistics.median(times) / 1e9


_COPY_BW: Dict[str, Optional[float]] = {}


def copy_bandwidth_cached(device) -> Optional[float]:
    key = str(torch.device(device))
    if key not in _COPY_BW:
        _COPY_BW[key] = copy_bandwidth(device)
    return _COPY_BW[key]


def _proc_kb(field_name):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise OSError(field_name)


def _malloc_trim():
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except Exception:  # noqa: BLE001  (not glibc)
        pass


def peak_memory(fn, device) -> Tuple[Optional[float], str]:
    """(MiB, what was measured) for one call of ``fn``.

    CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak (absolute: weights,
    input, activations, gradients). CPU: the rise of the resident set during the call
    (VmHWM after resetting it through /proc/self/clear_refs, minus VmRSS before, after a
    malloc_trim): the step's extra memory; None where /proc does not allow it."""
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2 ** 20, "cuda max_memory_allocated"
    try:
        _malloc_trim()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _proc_kb("VmRSS")
        fn()
        return max(_proc_kb("VmHWM") - before, 0) / 1024, "cpu peak RSS rise (VmHWM reset)"
    except OSError:
        fn()
        return None, "n/a (no /proc/self/clear_refs)"
