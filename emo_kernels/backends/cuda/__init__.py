"""The ``cuda`` backend: autograd wrappers around the compiled kernels of csrc/.

The kernels are registered by the extension under ``torch.ops.emo_kernels_cuda`` (CUDA tensors
only) and, for testing without a GPU, ``torch.ops.emo_kernels_cuda_emu`` (the same element
functions run in a host loop over CPU tensors). Pass ``emulate=True`` to the functions below to
use the latter; the backend registered with the dispatcher never does.

Registered with ``gpu_kernel=True``: ``auto`` picks it only where a committed GPU measurement
shows it faster than the torch path (emo_kernels.measured); none exists yet.
"""
from ... import dispatch
from .expand_dwconv_act import can_run_expand_dwconv_act, expand_dwconv_act_cuda
from .window_attention import can_run_window_attention, window_attention_cuda

NAME = "cuda"
dispatch.register_backend(NAME, priority=10)
dispatch.register("expand_dwconv_act", NAME, expand_dwconv_act_cuda, can_run_expand_dwconv_act,
                  gpu_kernel=True)
dispatch.register("window_attention", NAME, window_attention_cuda, can_run_window_attention,
                  gpu_kernel=True)

__all__ = ["expand_dwconv_act_cuda", "window_attention_cuda", "can_run_expand_dwconv_act",
           "can_run_window_attention"]
