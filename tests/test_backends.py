"""Backend selection: env var, set_backend/use_backend, clear errors for unavailable backends."""
import pytest
import torch

import emo_kernels
from emo_kernels import BackendUnavailableError, backends


def _args():
    x = torch.randn(1, 4, 5, 5)
    return x, torch.randn(8, 4), torch.randn(8), torch.randn(8, 1, 3, 3)


def test_default_is_auto_and_cpu_tensors_pick_cpu_else_torch(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    assert emo_kernels.get_backend() == "auto"
    x, w, b, wd = _args()
    fn = backends.resolve("expand_dwconv_act", x, w, b, wd)
    # the C++ cpu backend when it is built (or JIT-buildable) here, else the torch reference
    expected = "torch" if emo_kernels.explain("expand_dwconv_act", x, w, b, wd)["cpu"] else "cpu"
    assert fn is backends._REGISTRY["expand_dwconv_act"][expected].fn
    w.requires_grad_(True)  # training: the inference-only cpu backend steps aside
    fn = backends.resolve("expand_dwconv_act", x, w, b, wd)
    assert fn is backends._REGISTRY["expand_dwconv_act"]["torch"].fn


def test_env_var(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "torch")
    assert emo_kernels.get_backend() == "torch"
    monkeypatch.setenv(backends.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="EMO_KERNELS_BACKEND"):
        emo_kernels.get_backend()


def test_set_and_use_backend(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "cuda")
    emo_kernels.set_backend("torch")
    assert emo_kernels.get_backend() == "torch"  # code beats the variable
    with emo_kernels.use_backend("auto"):
        assert emo_kernels.get_backend() == "auto"
    assert emo_kernels.get_backend() == "torch"
    with pytest.raises(ValueError, match="unknown emo_kernels backend"):
        emo_kernels.set_backend("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_unavailable_backend_says_why():
    x, w, b, wd = _args()
    with emo_kernels.use_backend("cuda"):
        with pytest.raises(BackendUnavailableError, match="cuda"):
            emo_kernels.expand_dwconv_act(x, w, b, wd)
    reasons = emo_kernels.explain("expand_dwconv_act", x, w, b, wd)
    assert reasons["torch"] is None
    assert reasons["cuda"] and isinstance(reasons["cuda"], str)
