import torch

from ...formulas import acc_dtype  # noqa: F401  (re-exported for the op modules)

from ... import _cuda

NEEDS_CUDA = "cuda backend needs CUDA tensors"


def ops(emulate: bool):
    """The op namespace: CUDA kernels, or their host emulation on CPU tensors (tests)."""
    if _cuda._state["loaded"] is None:  # load once, outside any torch.compile trace
        _cuda.load()
    return torch.ops.emo_kernels_cuda_emu if emulate else torch.ops.emo_kernels_cuda


def device_reason(*tensors):
    """None when every tensor given is a CUDA tensor and the extension loads, else why not."""
    for t in tensors:
        if t is not None and not t.is_cuda:
            return f"{NEEDS_CUDA} (got a tensor on {t.device})"
    return _cuda.unavailable_reason()


def contig(t):
    return None if t is None else t.contiguous()
