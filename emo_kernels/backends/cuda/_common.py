import os

import torch

from ... import _ext
from ...formulas import acc_dtype  # noqa: F401  (re-exported for the op modules)

NEEDS_CUDA = "cuda backend needs CUDA tensors"
EMULATE_ENV = "EMO_KERNELS_CUDA_EMULATE"


def emulated() -> bool:
    """Whether CPU tensors run the kernels' host emulation ($EMO_KERNELS_CUDA_EMULATE=1)."""
    return os.environ.get(EMULATE_ENV, "0") not in ("", "0")


def ops(emulate: bool):
    """The op namespace: CUDA kernels, or their host emulation on CPU tensors (tests)."""
    if not _ext.cuda_loaded():  # load once, outside any torch.compile trace
        _ext.load_cuda()
    return torch.ops.emo_kernels_cuda_emu if emulate else torch.ops.emo_kernels_cuda


def device_reason(*tensors):
    """None when every tensor given is a CUDA tensor (or, under $EMO_KERNELS_CUDA_EMULATE=1,
    every one a CPU tensor) and the extension loads, else why not."""
    given = [t for t in tensors if t is not None]
    if emulated() and given and all(t.device.type == "cpu" for t in given):
        return unavailable_reason()
    for t in given:
        if not t.is_cuda:
            hint = "" if emulated() else f" ({EMULATE_ENV}=1 runs CPU tensors in emulation)"
            return f"{NEEDS_CUDA} (got a tensor on {t.device}){hint}"
    return unavailable_reason()


@torch.compiler.assume_constant_result
def unavailable_reason():
    """None when the extension is loaded (or loads now), else why not. A constant for
    torch.compile: run for real at trace time, so a first call inside a traced function loads
    the extension (and registers its fake functions) instead of breaking the graph."""
    return _ext.cuda_unavailable_reason()


def auto_skip(x, *args, **kwargs):
    """Why auto passes the backend over: CPU tensors would run the host emulation (tests)."""
    if x.device.type == "cpu":
        return f"it runs only in its host emulation here ({EMULATE_ENV}=1, tests only)"
    return None


def contig(t):
    return None if t is None else t.contiguous()
