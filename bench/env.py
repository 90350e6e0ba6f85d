"""The machine a benchmark runs on: the device, its name, the torch threads, the versions.

Every result file is named from this (``bench.results.stem``) and every result row carries it.
"""
import os
import platform
from typing import Dict

import torch

import emo_kernels


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_kind(device) -> str:
    """``gpu`` for a CUDA device, else ``cpu`` (the first field of a result file's name)."""
    return "gpu" if torch.device(device).type == "cuda" else "cpu"


def device_model(device) -> str:
    """The GPU's name on CUDA, else the CPU's model name (no thread count)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def device_name(device) -> str:
    """What a report's header and rows name: the GPU, or the CPU with its torch threads."""
    device = torch.device(device)
    if device.type == "cuda":
        return device_model(device)
    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


def threads() -> int:
    """torch's CPU threads (intra-op)."""
    return torch.get_num_threads()


def versions() -> Dict[str, str]:
    try:
        import triton
        triton_v = triton.__version__
    except Exception:  # noqa: BLE001  (not installed, or broken)
        triton_v = "not installed"
    return dict(torch=torch.__version__, triton=triton_v, cuda=str(torch.version.cuda),
                python=platform.python_version(), emo_kernels=emo_kernels.__version__)


def default_device() -> torch.device:
    """``$EMO_BENCH_DEVICE``, else CUDA when present, else the CPU."""
    return torch.device(os.environ.get("EMO_BENCH_DEVICE")
                        or ("cuda" if torch.cuda.is_available() else "cpu"))


def set_threads(n=None):
    """Set torch's CPU threads to ``n``, else to ``$EMO_BENCH_THREADS`` when that is set."""
    n = n or os.environ.get("EMO_BENCH_THREADS")
    if n and torch.get_num_threads() != int(n):
        torch.set_num_threads(int(n))
