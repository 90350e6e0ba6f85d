"""Backend selection: env var, set_backend/use_backend, clear errors for unavailable dispatch."""
import os

import pytest
import torch

import emo_kernels
from emo_kernels import BackendUnavailableError, dispatch


def _args():
    x = torch.randn(1, 4, 5, 5)
    return x, torch.randn(8, 4), torch.randn(8), torch.randn(8, 1, 3, 3)


def test_default_is_auto_and_cpu_tensors_pick_cpu(monkeypatch):
    """auto on CPU tensors: the C++ cpu backend (built in every setup: a missing build fails
    here, unless deliberately skipped), the torch path when autograd is needed."""
    if os.environ.get("EMO_KERNELS_SKIP_CPU_BUILD", "0") not in ("", "0"):
        pytest.skip("EMO_KERNELS_SKIP_CPU_BUILD is set: the cpu extension was deliberately "
                    "not built")
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    assert emo_kernels.get_backend() == "auto"
    x, w, b, wd = _args()
    assert dispatch.which("expand_dwconv_act", x, w, b, wd) == "cpu"
    with dispatch.record_dispatch() as calls:
        emo_kernels.expand_dwconv_act(x, w, b, wd)
    assert calls == [("expand_dwconv_act", "cpu")]
    w.requires_grad_(True)  # training: the inference-only cpu backend steps aside
    assert dispatch.which("expand_dwconv_act", x, w, b, wd) == "torch"
    assert "grad" in emo_kernels.explain("expand_dwconv_act", x, w, b, wd)["cpu"]


def test_env_var(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "torch")
    assert emo_kernels.get_backend() == "torch"
    monkeypatch.setenv(dispatch.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="EMO_KERNELS_BACKEND"):
        emo_kernels.get_backend()


def test_set_and_use_backend(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "cuda")
    emo_kernels.set_backend("torch")
    assert emo_kernels.get_backend() == "torch"  # code beats the variable
    with emo_kernels.use_backend("auto"):
        assert emo_kernels.get_backend() == "auto"
    assert emo_kernels.get_backend() == "torch"
    with pytest.raises(ValueError, match="unknown emo_kernels backend"):
        emo_kernels.set_backend("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_unavailable_backend_says_why(monkeypatch):
    monkeypatch.delenv("EMO_KERNELS_CUDA_EMULATE", raising=False)  # no host emulation
    x, w, b, wd = _args()
    with emo_kernels.use_backend("cuda"):
        with pytest.raises(BackendUnavailableError, match="cuda"):
            emo_kernels.expand_dwconv_act(x, w, b, wd)
    reasons = emo_kernels.explain("expand_dwconv_act", x, w, b, wd)
    assert reasons["torch"] is None
    assert isinstance(reasons["cuda"], str) and "CUDA tensors" in reasons["cuda"]
