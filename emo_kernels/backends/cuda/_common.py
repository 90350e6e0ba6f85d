import torch

from ... import _ext
from ...formulas import acc_dtype  # noqa: F401  (re-exported for the op modules)

NEEDS_CUDA = "cuda backend needs CUDA tensors"


def ops(emulate: bool):
    """The op namespace: CUDA kernels, or their host emulation on CPU tensors (tests)."""
    if not _ext.cuda_loaded():  # load once, outside any torch.compile trace
        _ext.load_cuda()
    return torch.ops.emo_kernels_cuda_emu if emulate else torch.ops.emo_kernels_cuda


def device_reason(*tensors):
    """None when every tensor given is a CUDA tensor and the extension loads, else why not."""
    for t in tensors:
        if t is not None and not t.is_cuda:
            return f"{NEEDS_CUDA} (got a tensor on {t.device})"
    return unavailable_reason()


@torch.compiler.assume_constant_result
def unavailable_reason():
    """None when the extension is loaded (or loads now), else why not. A constant for
    torch.compile: run for real at trace time, so a first call inside a traced function loads
    the extension (and registers its fake functions) instead of breaking the graph."""
    return _ext.cuda_unavailable_reason()


def contig(t):
    return None if t is None else t.contiguous()
