"""Test setup: run Triton kernels through the interpreter when no GPU is present.

TRITON_INTERPRET must be set before any Triton kernel module is imported, so it is set here,
at conftest import time, before the tests import emo_kernels.
"""
import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def _interpreter_scalar_shim():
    """Test-only fix for triton < 3.8's interpreter under numpy >= 2.4.

    The interpreter passes scalar kernel arguments as 1-element numpy arrays and converts them
    back with ``int(array)`` (``tensor.__index__``, used by ``range(0, CIN, BLOCK_K)``); numpy
    2.4 refuses ``int()`` of a non-0-d array. triton 3.8 squeezes first; this does the same for
    the older interpreter (the GPU machine's triton 3.6 + numpy 2.5). Compiled kernels are not
    affected: only the interpreter's Python emulation of a scalar is.
    """
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    orig = interpreter._patch_lang_tensor
    if getattr(orig, "_emo_scalar_shim", False):
        return

    def patch(tensor, scope):
        orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0])
                       if self.handle.data.size == 1 else int(self.handle.data))

    patch._emo_scalar_shim = True
    interpreter._patch_lang_tensor = patch


if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    _interpreter_scalar_shim()

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")
FIXTURE = os.path.join(SHARED, "fixtures", "emo_1m_224x224_256x256.pt")


@pytest.fixture(autouse=True)
def _seed_and_reset_backend():
    import emo_kernels
    torch.manual_seed(0)
    emo_kernels.set_backend(None)
    yield
    emo_kernels.set_backend(None)


def rel_err(a, b):
    """max |a - b| / max |b| (the issue's relative error)."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


# Kernel backends every op test is parametrized over. The test files are shared by the
# backends; a backend that cannot run here is skipped with the reason.
KERNEL_BACKENDS = ("triton", "cuda")


def backend_device(name):
    """The device a kernel backend's tests run on here, or skip with the reason."""
    if name == "cuda":
        if not HAS_CUDA:
            pytest.skip("cuda backend needs a GPU; here the extension is only built, linked "
                        "and checked for clear errors (tests/test_cuda_build.py)")
        return torch.device("cuda")
    if name == "triton":
        try:
            import triton  # noqa: F401
        except ImportError:
            pytest.skip("triton is not installed")
        return torch.device("cuda") if HAS_CUDA else torch.device("cpu")
    raise ValueError(name)


@pytest.fixture(params=KERNEL_BACKENDS)
def kernel_backend(request):
    """(backend name, device), with that backend selected for the test's duration."""
    import emo_kernels
    dev = backend_device(request.param)
    with emo_kernels.use_backend(request.param):
        yield request.param, dev


def model_pair(name, **kw):
    """(fused=False, fused=True) models of one variant with the same weights and non-trivial
    BatchNorm statistics (so that BN folding is exercised); both in train mode as created."""
    import emo
    import torch.nn as nn
    torch.manual_seed(0)
    ref = emo.create_model(name, **kw)
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    fused = emo.create_model(name, fused=True, **kw)
    fused.load_state_dict(ref.state_dict())
    return ref, fused
