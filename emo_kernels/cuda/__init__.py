"""The ``cuda`` backend: autograd wrappers around the compiled kernels of csrc/.

The kernels are registered by the extension under ``torch.ops.emo_kernels_cuda`` (CUDA tensors
only) and, for testing without a GPU, ``torch.ops.emo_kernels_cuda_emu`` (the same element
functions run in a host loop over CPU tensors). Pass ``emulate=True`` to the functions below to
use the latter; the backend registered in emo_kernels.ops never does.

Registered with ``gpu_kernel=True``: ``auto`` picks it only where a committed GPU measurement
shows it faster than the torch path (emo_kernels.measured); none exists yet.
"""
from .expand_dwconv_act import can_run_expand_dwconv_act, expand_dwconv_act_cuda
from .window_attention import can_run_window_attention, window_attention_cuda

__all__ = ["expand_dwconv_act_cuda", "window_attention_cuda", "can_run_expand_dwconv_act",
           "can_run_window_attention"]
