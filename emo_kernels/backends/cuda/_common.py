import os

import torch

from ...formulas import acc_dtype  # noqa: F401  (re-exported for the op modules)

from ... import _cuda

NEEDS_CUDA = "cuda backend needs CUDA tensors"
EMULATE_ENV = "EMO_KERNELS_CUDA_EMULATE"


def emulated() -> bool:
    """Whether CPU tensors run the kernels' host emulation ($EMO_KERNELS_CUDA_EMULATE=1)."""
    return os.environ.get(EMULATE_ENV, "0") not in ("", "0")


def ops(emulate: bool):
    """The op namespace: CUDA kernels, or their host emulation on CPU tensors (tests)."""
    if _cuda._state["loaded"] is None:  # load once, outside any torch.compile trace
        _cuda.load()
    return torch.ops.emo_kernels_cuda_emu if emulate else torch.ops.emo_kernels_cuda


def device_reason(*tensors):
    """None when every tensor given is a CUDA tensor (or, under $EMO_KERNELS_CUDA_EMULATE=1,
    every one a CPU tensor) and the extension loads, else why not."""
    given = [t for t in tensors if t is not None]
    if emulated() and given and all(t.device.type == "cpu" for t in given):
        return _cuda.unavailable_reason()
    for t in given:
        if not t.is_cuda:
            hint = "" if emulated() else f" ({EMULATE_ENV}=1 runs CPU tensors in emulation)"
            return f"{NEEDS_CUDA} (got a tensor on {t.device}){hint}"
    return _cuda.unavailable_reason()


def auto_skip(x, *args, **kwargs):
    """Why auto passes the backend over: CPU tensors would run the host emulation (tests)."""
    if x.device.type == "cpu":
        return f"it runs only in its host emulation here ({EMULATE_ENV}=1, tests only)"
    return None


def contig(t):
    return None if t is None else t.contiguous()
