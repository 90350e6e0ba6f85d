"""Test setup, for every folder of tests/ (ops/, backends/, model/, bench/).

Without a GPU: Triton kernels run in the interpreter (TRITON_INTERPRET must be set before any
Triton kernel module is imported, so it is set here, at conftest import time), and the op
fixtures' cuda param runs the CUDA kernels' host emulation (EMO_KERNELS_CUDA_EMULATE=1, set
for that param only). ``kernel_backend`` / ``autograd_backend``: one fixture for every backend;
``poison(backend)``: the NaN-poisoning hook they go through.
"""
import contextlib
import os
from typing import NamedTuple

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


# The backends every op test runs on, through ONE fixture (``kernel_backend``): the torch
# reference, the C++ cpu backend, triton (on CPU in its interpreter) and cuda (on CPU through
# its host emulation, EMO_KERNELS_CUDA_EMULATE=1). The test files are shared by the backends.
KERNEL_BACKENDS = ("torch", "cpu", "triton", "cuda")
# The cpu backend is inference-only (no autograd, no training BatchNorm) and fp32/fp64 only, a
# documented limitation: tests that exist only for gradients or training BatchNorm take
# ``autograd_backend`` (every backend but cpu); the shared case tables take ``kernel_backend``
# and, for cpu, check the forward pass and that the backend refuses the rest with a reason.
AUTOGRAD_BACKENDS = ("torch", "triton", "cuda")
INFERENCE_ONLY = ("cpu",)
ALL_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
DTYPES = {"cpu": (torch.float64, torch.float32)}
# Opting out of a build (as scripts/setup.sh and setup.py take it) skips that backend's tests;
# without the opt-out a missing build fails them.
BUILD_OPT_OUT = {"cpu": "EMO_KERNELS_SKIP_CPU_BUILD", "cuda": "EMO_KERNELS_SKIP_CUDA_BUILD"}
CUDA_EMULATE = "EMO_KERNELS_CUDA_EMULATE"


def cuda_extension_or_fail():
    """The CUDA extension module emo_kernels._C: it is built in every setup (the CPU machines
    have nvcc), so a missing or unlinkable build fails the test, unless deliberately skipped
    with EMO_KERNELS_SKIP_CUDA_BUILD=1."""
    _opted_out("cuda")
    try:
        import emo_kernels._C as C
    except ImportError as e:
        pytest.fail(f"the CUDA extension emo_kernels._C is not built or does not link ({e}). "
                    "Build it with `pip install -e . --no-build-isolation` (needs the CUDA build "
                    f"of torch and nvcc; see README), or set {BUILD_OPT_OUT['cuda']}=1 to opt "
                    "out explicitly.", pytrace=False)
    return C


class Backend(NamedTuple):
    """A kernel backend as the op tests see it."""
    name: str
    device: torch.device

    @property
    def autograd(self) -> bool:
        """Whether it runs gradients and training BatchNorm (else it refuses them)."""
        return self.name not in INFERENCE_ONLY

    @property
    def dtypes(self):
        """The dtypes it runs (it refuses the others with a reason)."""
        return DTYPES.get(self.name, ALL_DTYPES)

    @property
    def emulated(self) -> bool:
        return self.name == "cuda" and self.device.type == "cpu"


def _opted_out(name):
    var = BUILD_OPT_OUT.get(name)
    if var and os.environ.get(var, "0") not in ("", "0"):
        pytest.skip(f"{var} is set: the {name} extension was deliberately not built")


def backend_device(name):
    """The device a backend's tests run on here, or skip with the reason."""
    _opted_out(name)
    if name == "cuda":
        if not HAS_CUDA:
            pytest.skip("cuda backend needs a GPU; without one the op tests run its host "
                        "emulation (kernel_backend) and tests/backends/test_cuda_build.py "
                        "checks the build")
        return torch.device("cuda")
    if name == "triton":
        try:
            import triton  # noqa: F401
        except ImportError:
            pytest.skip("triton is not installed")
    if name in ("torch", "triton"):
        return torch.device("cuda") if HAS_CUDA else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(name)


def poison(backend):
    """The context manager that NaN-poisons the outputs a backend allocates during a test, so
    unwritten elements fail the comparisons (the hook every op fixture goes through).

    Every backend: torch.empty / empty_like return NaN-filled tensors (poison_empty: the
    outputs torch, triton and the Python glue of the others allocate), and the CPU extension's
    C++ fills every output and workspace with NaN before its kernels write
    (poison_cpu_outputs). The cuda emulation binding NaN-fills its outputs itself.
    """
    from emo_kernels.testing import poison_cpu_outputs, poison_empty
    stack = contextlib.ExitStack()
    stack.enter_context(poison_empty())
    stack.enter_context(poison_cpu_outputs())
    return stack


def _backend_fixture(name, monkeypatch):
    import emo_kernels
    _opted_out(name)
    if name == "cuda" and not HAS_CUDA:
        monkeypatch.setenv(CUDA_EMULATE, "1")  # the kernels' host emulation on CPU tensors
        dev = torch.device("cpu")
    else:
        dev = backend_device(name)
    with emo_kernels.use_backend(name), poison(name):
        yield Backend(name, dev)


@pytest.fixture(params=KERNEL_BACKENDS)
def kernel_backend(request, monkeypatch):
    """Backend(name, device) with that backend selected and its outputs NaN-poisoned for the
    test's duration. cuda without a GPU runs its host emulation on CPU tensors."""
    yield from _backend_fixture(request.param, monkeypatch)


@pytest.fixture(params=AUTOGRAD_BACKENDS)
def autograd_backend(request, monkeypatch):
    """kernel_backend for tests of gradients / training BatchNorm: every backend but the
    inference-only cpu one."""
    yield from _backend_fixture(request.param, monkeypatch)


def model_pair(name, **kw):
    """(fused=False, fused=True) models of one variant (EMO v1 or EMOv2) with the same weights,
    non-trivial BatchNorm statistics (so that BN folding is exercised) and LayerScale near 1;
    both in train mode as created."""
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
    for n, p in ref.named_parameters():  # EMOv2's LayerScale: at its 1e-6 init a block's
        if n.endswith("ls.gamma"):       # branch would not matter
            p.data.uniform_(0.5, 1.5)
    fused = emo.create_model(name, fused=True, **kw)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def train_step(model, x, target, seed=1):
    """One cross-entropy forward/backward: ({parameter: grad}, {buffer: copy}); the same
    drop-path masks for every model given the same seed."""
    torch.manual_seed(seed)
    loss = torch.nn.functional.cross_entropy(model(x), target)
    model.zero_grad()
    loss.backward()
    return ({n: p.grad for n, p in model.named_parameters()},
            {n: b.clone() for n, b in model.named_buffers()})


def assert_same_train_step(ref, fused, x, target, grad_tol, stat_tol):
    """fused's train step gives ref's parameter gradients and BatchNorm statistics. A gradient
    is compared relative to its own largest entry, or to 1e-6 of the largest gradient of the
    model where it is smaller: a gradient that is zero in exact arithmetic (the bias of a conv
    followed by a training-mode BatchNorm) is rounding noise on both sides."""
    (g0, s0), (g1, s1) = train_step(ref, x, target), train_step(fused, x, target)
    floor = 1e-6 * max(g.abs().max().item() for g in g0.values() if g is not None)
    for n, g in g0.items():
        assert g1[n] is not None, n
        err = ((g1[n] - g).abs().max() / max(g.abs().max().item(), floor)).item()
        assert err <= grad_tol, (n, err)
    for n, b in s0.items():
        if b.is_floating_point():
            assert rel_err(s1[n], b) <= stat_tol, n
        else:
            assert torch.equal(s1[n], b), n
