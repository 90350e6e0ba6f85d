"""Whole-model training parity of the Triton backend (issue #15 item 3): EMO-1M and EMO-2M,
``fused=True`` with every op on the Triton backend (the interpreter on CPU), against
``fused=False`` at 64x64 in float64: logits, every parameter gradient, the BatchNorm running
statistics and ``num_batches_tracked``, with drop path and gradient checkpointing on and off."""
import os

import pytest
import torch
import torch.nn as nn

import emo_kernels
from conftest import model_pair, rel_err

pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
    pytest.skip("the Triton kernels need a GPU or TRITON_INTERPRET=1", allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 1e-9  # float64 throughout: the two paths differ by summation order only


def _step(model, x, target, checkpointing):
    model.set_grad_checkpointing(checkpointing)
    torch.manual_seed(1)  # the same drop-path masks in both models
    out = model(x)
    nn.functional.cross_entropy(out, target).backward()
    return (out.detach(), {n: p.grad for n, p in model.named_parameters()},
            {n: b.clone() for n, b in model.named_buffers()})


@pytest.mark.parametrize("name,drop_path,checkpointing", [
    ("emo_1m", 0.0, False), ("emo_1m", 0.1, False), ("emo_1m", 0.0, True),
    ("emo_1m", 0.1, True), ("emo_2m", 0.1, False), ("emo_2m", 0.0, True)])
def test_triton_training_step_equals_reference(name, drop_path, checkpointing):
    ref, fused = model_pair(name, drop_path_rate=drop_path)
    ref, fused = (m.double().to(DEVICE).train() for m in (ref, fused))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 64, 64, generator=g, dtype=torch.float64).to(DEVICE)
    target = torch.randint(0, 1000, (2,), generator=g).to(DEVICE)
    want = _step(ref, x, target, checkpointing)
    with emo_kernels.use_backend("triton"), emo_kernels.dispatch.record_dispatch() as calls:
        got = _step(fused, x, target, checkpointing)
    assert {b for _, b in calls} == {"triton"} and len(calls) > 0
    assert rel_err(got[0], want[0]) <= TOL
    for n, gr in want[1].items():
        assert got[1][n] is not None, n
        torch.testing.assert_close(got[1][n], gr, rtol=TOL, atol=1e-12, msg=n)
    for n, b in want[2].items():
        if b.is_floating_point():
            torch.testing.assert_close(got[2][n], b, rtol=TOL, atol=1e-14, msg=n)
        else:
            assert torch.equal(got[2][n], b), n
