"""The ``cuda`` backend: autograd wrappers around the compiled kernels of csrc/.

The kernels are registered by the extension under ``torch.ops.emo_kernels_cuda`` (CUDA tensors
only) and, for testing without a GPU, ``torch.ops.emo_kernels_cuda_emu`` (the same element
functions run in a host loop over CPU tensors). Pass ``emulate=True`` to the functions below to
use the latter.

``EMO_KERNELS_CUDA_EMULATE=1`` (a test tool, read at every call) makes the backend registered
with the dispatcher accept CPU tensors too and run them through that host emulation (slow: one
host loop iteration per GPU thread), so the shared op tests run the kernels' code without a
GPU; ``auto`` never picks it for CPU tensors. CUDA tensors still run the compiled kernels.

Registered with ``gpu_kernel=True``: ``auto`` picks it only where a committed GPU measurement
shows it faster than the torch path (emo_kernels.measured); none exists yet.
"""
from ... import dispatch
from ._common import EMULATE_ENV, auto_skip, emulated
from .expand_dwconv_act import can_run_expand_dwconv_act, expand_dwconv_act_cuda
from .window_attention import can_run_window_attention, window_attention_cuda

NAME = "cuda"


def _expand_dwconv_act(x, *args, **kwargs):
    return expand_dwconv_act_cuda(x, *args, emulate=x.device.type == "cpu", **kwargs)


def _window_attention(q, *args, **kwargs):
    return window_attention_cuda(q, *args, emulate=q.device.type == "cpu", **kwargs)


dispatch.register_backend(NAME, priority=10)
dispatch.register("expand_dwconv_act", NAME, _expand_dwconv_act, can_run_expand_dwconv_act,
                  gpu_kernel=True, auto_skip=auto_skip)
dispatch.register("window_attention", NAME, _window_attention, can_run_window_attention,
                  gpu_kernel=True, auto_skip=auto_skip)

__all__ = ["expand_dwconv_act_cuda", "window_attention_cuda", "can_run_expand_dwconv_act",
           "can_run_window_attention", "emulated", "EMULATE_ENV"]
