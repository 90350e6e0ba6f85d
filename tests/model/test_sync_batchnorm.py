"""SyncBatchNorm in the fused path: two processes on gloo (CPU, localhost, bounded) train
exactly like one process with the whole batch.

A ``fused=True`` EMO converted by ``emo.convert_sync_batchnorm`` (PyTorch's own
``nn.SyncBatchNorm`` accepts only accelerator tensors) under DistributedDataParallel: each
process runs half of a batch; the depthwise BatchNorms run inside the fused op with the group's
statistics (``bn_process_group``). Parameter gradients (DDP's average), running statistics and
``num_batches_tracked`` must equal those of one process running ``fused=False`` with plain
BatchNorm on the whole batch, in float64. The Triton op's own all-reduces (between its
depthwise and normalisation kernels, and in its backward) are checked the same way at the op
level (the interpreter on CPU).
"""
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import emo
import emo_kernels
from emo.layers import BATCHNORM, batch_norm_args, norm_kind

from conftest import rel_err

TIMEOUT_S = 240
WORLD = 2
BATCH = 4  # the whole batch; each process runs BATCH // WORLD images


def _init(rank, tmp):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank,
                            world_size=WORLD)


def _run(worker, tmp_path, *args):
    """Run ``worker(rank, tmp, *args)`` in WORLD spawned processes; each saves its results
    to tmp/rank{r}.pt. Fails (and kills them) after TIMEOUT_S."""
    import torch.multiprocessing as mp
    ctx = mp.start_processes(worker, args=(str(tmp_path), *args), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the {WORLD} processes did not finish in {TIMEOUT_S} s")
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]


def _model(fused):
    torch.manual_seed(0)
    m = emo.emo_1m(fused=fused, drop_path_rate=0.0).double().train()
    for i, bn in enumerate(b for b in m.modules() if isinstance(b, nn.BatchNorm2d)):
        if i % 3 == 1:
            bn.momentum = None  # the cumulative average too
    return m


def _batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 3, 64, 64, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 1000, (BATCH,), generator=g)


def _state(m):
    return ({n: p.grad.clone() for n, p in m.named_parameters()},
            {n: b.clone() for n, b in m.named_buffers()})


def _model_worker(rank, tmp):
    from torch.nn.parallel import DistributedDataParallel as DDP
    _init(rank, tmp)
    model = emo.convert_sync_batchnorm(_model(fused=True))
    ddp = DDP(model)
    x, y = _batch()
    part = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    with emo_kernels.dispatch.record_dispatch() as calls:
        for _ in range(2):  # two steps: the running statistics are updated twice
            F.cross_entropy(ddp(x[part]), y[part]).backward()
    grads, buffers = _state(model)
    torch.save(dict(grads=grads, buffers=buffers, calls=calls), f"{tmp}/rank{rank}.pt")
    dist.destroy_process_group()


def test_fused_sync_bn_under_ddp_equals_one_process_full_batch(tmp_path):
    results = _run(_model_worker, tmp_path)
    ref = _model(fused=False)
    x, y = _batch()
    for _ in range(2):
        F.cross_entropy(ref(x), y).backward()
    grads, buffers = _state(ref)
    for r in results:
        # every depthwise BatchNorm ran inside the fused op (not as a module)
        assert sum(op == "expand_dwconv_act" for op, _ in r["calls"]) == 2 * sum(
            1 for m in ref.modules() if isinstance(m, emo.iRMB))
        for n, g in grads.items():  # (atol: the stem conv's bias feeds a BatchNorm: ~0)
            torch.testing.assert_close(r["grads"][n], g, rtol=1e-9, atol=1e-12, msg=n)
        for n, b in buffers.items():
            if b.is_floating_point():
                torch.testing.assert_close(r["buffers"][n], b, rtol=1e-10, atol=0, msg=n)
            else:
                assert torch.equal(r["buffers"][n], b), n


# ----- the Triton op's all-reduces -------------------------------------------------------------
def _op_inputs():
    g = torch.Generator().manual_seed(2)
    r = lambda *s, scale=1.0: torch.randn(*s, generator=g, dtype=torch.float64) * scale  # noqa: E731
    cin, cmid, k = 3, 5, 3
    return dict(x=r(BATCH, cin, 5, 7), w_exp=r(cmid, cin, 1, 1, scale=cin ** -0.5),
                b_exp=r(cmid, scale=0.5), w_dw=r(cmid, 1, k, k, scale=1 / k), b_dw=r(cmid),
                bn_weight=0.5 + torch.rand(cmid, generator=g, dtype=torch.float64),
                bn_bias=r(cmid, scale=0.5)), r(BATCH, cmid, 5, 7)


def _op_run(inputs, gz, backend, part, group):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    t = {n: v.to(dev).requires_grad_(True) for n, v in inputs.items()}
    rm, rv = torch.zeros(5, dtype=torch.float64, device=dev), torch.ones(5, dtype=torch.float64,
                                                                          device=dev)
    with emo_kernels.use_backend(backend):
        z = emo_kernels.expand_dwconv_act(
            t["x"][part], t["w_exp"], t["b_exp"], t["w_dw"], t["b_dw"], act="gelu", stride=1,
            skip=True, bn_weight=t["bn_weight"], bn_bias=t["bn_bias"], running_mean=rm,
            running_var=rv, bn_training=True, momentum=0.3, bn_process_group=group)
    (z * gz[part].to(dev)).sum().backward()
    grads = {n: v.grad for n, v in t.items()}
    grads["x"] = grads["x"][part]
    return z.detach().cpu(), {n: v.cpu() for n, v in grads.items()}, rm.cpu(), rv.cpu()


def _op_worker(rank, tmp):
    _init(rank, tmp)
    inputs, gz = _op_inputs()
    part = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    out = _op_run(inputs, gz, "triton", part, dist.group.WORLD)
    torch.save(out, f"{tmp}/rank{rank}.pt")
    dist.destroy_process_group()


def test_triton_op_sync_bn_equals_full_batch(tmp_path):
    pytest.importorskip("triton")
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        pytest.skip("needs a GPU or TRITON_INTERPRET=1")
    inputs, gz = _op_inputs()
    z, grads, rm, rv = _op_run(inputs, gz, "torch", slice(None), None)
    results = _run(_op_worker, tmp_path)
    half = BATCH // WORLD
    for r, (zr, gr, rmr, rvr) in enumerate(results):
        assert rel_err(zr, z[r * half:(r + 1) * half]) <= 1e-10
        assert rel_err(gr["x"], grads["x"][r * half:(r + 1) * half]) <= 1e-10
        assert rel_err(rmr, rm) <= 1e-12 and rel_err(rvr, rv) <= 1e-12
    for n in ("w_exp", "b_exp", "w_dw", "b_dw", "bn_weight", "bn_bias"):
        # the loss is a sum: the parameters' gradients over the group add up (atol: b_dw feeds
        # the BatchNorm, its gradient is ~0, the two processes' parts cancel)
        torch.testing.assert_close(results[0][1][n] + results[1][1][n], grads[n], rtol=1e-10,
                                   atol=1e-12, msg=n)


# ----- single process ------------------------------------------------------------------------
@pytest.fixture
def group_of_one(tmp_path):
    """torch.distributed initialised in this process: a gloo group of one process."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0,
                            world_size=1)
    yield dist.group.WORLD
    dist.destroy_process_group()


def test_syncing_sync_bn_passes_its_group_to_the_op(group_of_one):
    """In training inside an initialised process group a SyncBatchNorm (PyTorch's or this
    package's) is a ``batchnorm`` norm whose arguments carry its process group (the default
    group when it has none); in eval it has none."""
    own = dist.new_group([0], backend="gloo")
    for bn in (nn.SyncBatchNorm(4), emo.SyncBatchNorm(4), nn.SyncBatchNorm(4, process_group=own),
               emo.SyncBatchNorm(4, process_group=own)):
        assert norm_kind(bn) == BATCHNORM
        want = own if bn.process_group is not None else group_of_one
        assert batch_norm_args(bn)["bn_process_group"] is want
        assert "bn_process_group" not in batch_norm_args(bn.eval())


def test_group_of_one_trains_like_batchnorm(group_of_one):
    """A converted fused model in a group of one process: the op gets the group (nothing to
    all-reduce) and the step equals fused=False with plain BatchNorm."""
    ref, fused = _model(fused=False), emo.convert_sync_batchnorm(_model(fused=True))
    x, y = _batch()
    for m in (ref, fused):
        F.cross_entropy(m(x), y).backward()
    for (n, a), b in zip(fused.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-13, msg=n)
    for (n, a), b in zip(fused.named_buffers(), ref.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14, msg=n)


def test_convert_sync_batchnorm_keeps_the_state_dict():
    m = emo.emo_1m(fused=True)
    sd = m.state_dict()
    c = emo.convert_sync_batchnorm(m)
    assert not any(type(b) is nn.BatchNorm2d for b in c.modules())
    assert any(type(b) is emo.SyncBatchNorm for b in c.modules())
    c.load_state_dict(sd, strict=True)
    ref = emo.emo_1m(fused=False)
    ref.load_state_dict(sd)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # outside a process group it is a BatchNorm, in eval and training
        assert rel_err(c.eval()(x), ref.eval()(x)) <= 1e-5
        assert rel_err(c.train()(x), ref.train()(x)) <= 1e-5


def test_bn_process_group_needs_torch_distributed():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="torch.distributed is not initialised"):
        emo_kernels.expand_dwconv_act(x, torch.randn(6, 3), None, torch.randn(6, 1, 3, 3),
                                      bn_training=True, bn_process_group=object())


def test_cuda_backend_names_its_sync_bn_limitation():
    from emo_kernels.backends.cuda.expand_dwconv_act import can_run_expand_dwconv_act
    x = torch.randn(2, 3, 4, 4)
    reason = can_run_expand_dwconv_act(x, torch.randn(6, 3), None, torch.randn(6, 1, 3, 3),
                                       bn_training=True, bn_process_group=object())
    assert "does not all-reduce BatchNorm statistics" in reason
