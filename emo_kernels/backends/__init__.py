"""The backends, one folder each; importing this package registers them all with
``emo_kernels.dispatch`` (``auto`` tries them in this order):

* ``cuda``   -- the compiled CUDA extension (csrc/cuda/*.cu): CUDA tensors only;
* ``triton`` -- Triton kernels: CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``;
* ``cpu``    -- the C++ CPU extension (csrc/cpu/): CPU tensors, inference only (it refuses
  calls that need autograd, so training falls back to ``torch``);
* ``torch``  -- the pure-PyTorch references (any device): the fallback and the test oracle.

Each backend owns its ``can_run`` checks (None, or the reason it cannot run a call) and its
status for ``auto`` (``gpu_kernel``: picked on CUDA only where a committed GPU measurement shows
it faster, ``emo_kernels.measured``; ``auto_skip``: e.g. the Triton interpreter).
"""
from . import cpu, cuda, torch, triton  # noqa: F401  (each registers itself)
