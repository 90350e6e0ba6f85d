"""torch.autocast with fused=True (issue #13, item 3): inference and a training step give
results within the tolerance autocast gives fused=False. Both are compared against a float32
run; the fused error may be at most 2x the unfused one (the project's rule). CPU bfloat16
here; CUDA float16/bfloat16 where a GPU is present."""
import pytest
import torch

from conftest import HAS_CUDA, model_pair, rel_err

AMP = [("cpu", torch.bfloat16)]
if HAS_CUDA:
    AMP += [("cuda", torch.float16), ("cuda", torch.bfloat16)]


def _run(model, x, dev, dtype, train):
    model.train(train)
    xi = x.clone().requires_grad_(train)
    ctx = torch.autocast(dev, dtype=dtype) if dtype is not None else torch.autocast(
        dev, enabled=False)
    with torch.set_grad_enabled(train), ctx:
        out = model(xi)
    if not train:
        return out.float(), None
    loss = (out.float() * torch.linspace(-1, 1, out.numel(), device=dev).reshape(out.shape)).sum()
    loss.backward()
    grads = torch.cat([xi.grad.flatten()] + [p.grad.flatten().float()
                                             for p in model.parameters()])
    return out.float(), grads


@pytest.mark.parametrize("dev,dtype", AMP, ids=[f"{d}-{str(t)[6:]}" for d, t in AMP])
@pytest.mark.parametrize("train", [False, True], ids=["eval-no_grad", "train-step"])
def test_autocast_within_unfused_tolerance(dev, dtype, train):
    ref, fused = model_pair("emo_1m", drop_path_rate=0.0)
    ref.to(dev), fused.to(dev)
    x = torch.randn(2, 3, 64, 64, device=dev)
    base = _run(ref, x, dev, None, train)
    ref.load_state_dict(fused.state_dict())  # undo the fp32 run's running-stat update
    unfused = _run(ref, x, dev, dtype, train)
    fused_out = _run(fused, x, dev, dtype, train)
    assert fused_out[0].isfinite().all()
    for i in range(2 if train else 1):
        err_u, err_f = rel_err(unfused[i], base[i]), rel_err(fused_out[i], base[i])
        assert err_f <= 2 * err_u + 1e-6, (i, err_f, err_u)
    if train:  # running statistics stay float32 and move like the unfused model's
        sr, sf = ref.state_dict(), fused.state_dict()
        for k, v in sr.items():
            assert sf[k].dtype == v.dtype, k
            if k.endswith("running_mean") or k.endswith("running_var"):
                assert rel_err(sf[k], v) <= 2e-2, k
