"""The CUDA extension (csrc/cuda/) is BUILT AND LINKED here, and refuses CPU tensors clearly.

CI machines have no GPU, so the kernels themselves run only on GPU machines (through the shared
op tests' `kernel_backend` fixture) and, as host emulation, in tests/backends/test_cuda_emulation.py.
This file checks what a CPU machine can: `import emo_kernels._C` loads the library built by
`pip install -e . --no-build-isolation`, the ops are registered under torch.ops, and calling
them (directly or through the op API) on CPU tensors raises an error that says why.

If the extension is not built, these tests FAIL (a silently missing build must not pass CI),
unless EMO_KERNELS_SKIP_CUDA_BUILD=1 is set in the test environment too: the documented opt-out.
"""
import os
import sys

import pytest
import torch

import emo_kernels
from emo_kernels.testing import TOLERANCE
from emo_kernels import BackendUnavailableError, dispatch, use_backend
from conftest import cuda_extension_or_fail

NS = "emo_kernels_cuda"
OPS = ("edc_expand_fwd", "edc_dw_fwd", "edc_epilogue_fwd", "edc_dq_bwd", "edc_dv_bwd",
       "edc_dwweight_bwd", "edc_expand_dx_bwd", "edc_expand_dw_bwd", "wa_fwd", "wa_bwd")


@pytest.fixture(scope="module")
def ext():
    return cuda_extension_or_fail()


def test_extension_is_built_linked_and_registers_ops(ext):
    assert ext.__file__.startswith(os.path.dirname(emo_kernels.__file__)), ext.__file__
    for ns in (NS, NS + "_emu"):
        for op in OPS:
            assert torch._C._dispatch_has_kernel_for_dispatch_key(
                f"{ns}::{op}", "CPU"), f"{ns}::{op} has no CPU registration"
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"{NS}::{op}", "CUDA"), op
    # the library is linked against this torch's CUDA runtime (c10_cuda), not just compiled
    maps = open(f"/proc/{os.getpid()}/maps").read() if sys.platform == "linux" else ""
    if maps:
        assert "libc10_cuda" in maps


def test_loader_reports_the_extension(ext):
    from emo_kernels import _ext
    assert _ext.cuda_unavailable_reason() is None
    loaded = _ext.load_cuda()
    assert loaded == "emo_kernels._C" or loaded.startswith(_ext.JIT_NAME)


def _cpu_calls():
    x = torch.randn(1, 4, 6, 6)
    w = torch.randn(8, 4)
    v = torch.randn(1, 8, 6, 6)
    wd = torch.randn(8, 3, 3)
    ops = getattr(torch.ops, NS)
    return {
        "edc_expand_fwd": lambda: ops.edc_expand_fwd(x, w, None, 1),
        "edc_dw_fwd": lambda: ops.edc_dw_fwd(v, wd, None, None, None, 1, True, True),
        "edc_dq_bwd": lambda: ops.edc_dq_bwd(v, wd, None, None, None, v, 1, False),
        "edc_expand_dx_bwd": lambda: ops.edc_expand_dx_bwd(w, v),
        "wa_fwd": lambda: ops.wa_fwd(v, v, v, None, None, 4, 7, 0.5, 0),
    }


@pytest.mark.parametrize("op", sorted(_cpu_calls()))
def test_direct_op_on_cpu_tensors_raises_clear_error(ext, op):
    with pytest.raises(RuntimeError, match=r"must be a CUDA tensor, got a tensor on cpu"):
        _cpu_calls()[op]()


def _edc_args():
    return (torch.randn(1, 4, 6, 6), torch.randn(8, 4), torch.randn(8), torch.randn(8, 1, 3, 3),
            None)


def _wa_args():
    return tuple(torch.randn(1, 8, 9, 9) for _ in range(3)) + (torch.randn(8),)


def test_op_api_cuda_backend_on_cpu_tensors_raises(ext):
    with use_backend("cuda"):
        with pytest.raises(BackendUnavailableError, match="cuda backend needs CUDA tensors"):
            emo_kernels.expand_dwconv_act(*_edc_args(), act="silu", skip=True)
        with pytest.raises(BackendUnavailableError, match="cuda backend needs CUDA tensors"):
            emo_kernels.window_attention(*_wa_args(), head_dim=4)


def test_auto_never_picks_the_unmeasured_cuda_backend():
    reasons = emo_kernels.explain("expand_dwconv_act", *_edc_args())
    assert "cuda backend needs CUDA tensors" in reasons["cuda"]
    with use_backend("auto"):  # falls back to another backend, which gives the reference's answer
        x, w, b, wd, bd = _edc_args()
        assert dispatch.which("expand_dwconv_act", x, w, b, wd, bd, skip=True) != "cuda"
        out = emo_kernels.expand_dwconv_act(x, w, b, wd, bd, skip=True)
        ref = emo_kernels.reference.expand_dwconv_act_ref(x, w, b, wd, bd, skip=True)
        err = ((out - ref).abs().max() / ref.abs().max()).item()
        assert err <= TOLERANCE[x.dtype]


def test_unbuilt_extension_gives_the_build_hint(monkeypatch):
    """Without emo_kernels._C (and, here, without a GPU to JIT-build on), the backend's reason
    says how to build it. Simulated by hiding the module; needs no build."""
    from emo_kernels import _ext
    monkeypatch.setitem(sys.modules, "emo_kernels._C", None)  # import raises ImportError
    monkeypatch.delattr(emo_kernels, "_C", raising=False)
    monkeypatch.setattr(_ext, "_STATE", {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reason = _ext.cuda_unavailable_reason()
    assert reason is not None and "pip install -e . --no-build-isolation" in reason
    with pytest.raises(ImportError, match="not built"):
        _ext.load_cuda()
