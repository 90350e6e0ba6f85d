"""Activation memory of a training step: the bytes autograd saves for backward, per image.

    python -m bench.saved_memory [--models emo_5m] [--size 224] [--dtypes fp32,bf16] [--json]

Counted with ``torch.autograd.graph.saved_tensors_hooks`` over unique storages (a view of a
saved tensor costs nothing more; a weight and its cast copies count once per step, so the
per-image figure is saved(batch 2) - saved(batch 1)).

What is counted, and where: the model runs on tensors of a fake CUDA device
(``FakeTensorMode``: shapes, dtypes and the tensors each op saves, no data, no GPU), so the
count is that of the GPU training path, made on this CPU machine:

* ``fused=False``: eager PyTorch (the saves of its convolutions, norms and activations);
* ``fused=True``: the Triton backend's ops (``emo_kernels/backends/triton``: their
  ``torch.library`` fake functions and autograd ``setup_context`` decide what is saved), with
  the model's own torch ops around them.

The fused model runs its reference computation under fake tensors (an exporter's view:
``emo.layers.is_tracing``); ``count_saved`` lifts that check for the count, so the ops run.
``--real`` counts the fused=False model on real CPU tensors instead (a cross-check: the same
number). bf16 is the model cast with ``.to(torch.bfloat16)`` (BatchNorm running statistics kept
float32, as in mixed precision).
"""
import argparse
import contextlib
import json
from typing import Dict
from unittest import mock

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def saved_bytes(fn) -> int:
    """Bytes of the unique storages autograd saves while ``fn()`` runs."""
    seen: Dict[int, torch.UntypedStorage] = {}

    def pack(t):
        s = t.untyped_storage()
        seen.setdefault(id(s), s)  # the storages stay referenced: ids are not reused
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(s.nbytes() for s in seen.values())


@contextlib.contextmanager
def _ops_under_fake_tensors():
    """The fused model runs its kernels' path on fake tensors (not the reference)."""
    import emo.model
    with mock.patch.object(emo.model, "is_tracing", lambda x=None: False):
        yield


def count_saved(model, batch, size, dtype, device="cuda", fake=True, backend=None) -> int:
    """Bytes saved for backward by ``model`` (training mode) on a batch of ``batch`` images of
    ``size`` x ``size`` in ``dtype``, channels_last. ``fake``: on a fake ``device`` (no data);
    else on real tensors of ``device``. ``backend``: the emo_kernels backend to force."""
    import emo_kernels
    from torch._subclasses.fake_tensor import FakeTensorMode
    model = model.train()
    params = dict(model.named_parameters())
    mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext()
    selected = emo_kernels.use_backend(backend) if backend else contextlib.nullcontext()
    with mode, selected, _ops_under_fake_tensors():
        state = {}
        for n, t in list(model.named_parameters()) + list(model.named_buffers()):
            keep = not t.is_floating_point() or n.endswith(("running_mean", "running_var"))
            v = torch.empty_like(t, device=device, dtype=None if keep else dtype)
            if not fake:
                v.copy_(t)
            state[n] = v.requires_grad_(True) if n in params else v
        x = torch.randn(batch, 3, size, size, device=device, dtype=dtype).contiguous(
            memory_format=torch.channels_last)
        return saved_bytes(lambda: torch.func.functional_call(model, state, (x,)))


def per_image(name, fused, size=224, dtype=torch.float32, fake=True) -> int:
    """Saved bytes per image of EMO ``name``: saved(batch 2) - saved(batch 1). fused=True
    counts the Triton backend's training path."""
    import emo
    torch.manual_seed(0)
    model = emo.create_model(name, fused=fused)
    backend = "triton" if fused else None
    dev = "cuda" if fake else "cpu"
    return (count_saved(model, 2, size, dtype, dev, fake, backend)
            - count_saved(model, 1, size, dtype, dev, fake, backend))


def rows(models, size, dtypes, real=False):
    out = []
    for name in models:
        for dt in dtypes:
            eager = per_image(name, False, size, DTYPES[dt], fake=not real)
            fused = per_image(name, True, size, DTYPES[dt])
            out.append(dict(model=name, size=size, dtype=dt, eager_bytes=eager,
                            fused_bytes=fused, fused_over_eager=fused / eager,
                            counted="fake CUDA tensors" + (" (eager: real CPU tensors)"
                                                           if real else "")))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="emo_5m")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--real", action="store_true",
                    help="count fused=False on real CPU tensors (fp32/bf16)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    res = rows(a.models.split(","), a.size, a.dtypes.split(","), a.real)
    if a.json:
        for r in res:
            print(json.dumps(r))
        return res
    print("Bytes saved for backward per image (unique storages; saved(b=2) - saved(b=1)); "
          "fused=True = the Triton training path, counted on fake CUDA tensors on this CPU.")
    print("| model | size | dtype | fused=False MiB | fused=True MiB | fused/eager |")
    print("|---|---|---|---|---|---|")
    for r in res:
        print(f"| {r['model']} | {r['size']} | {r['dtype']} | {r['eager_bytes'] / 2**20:.2f} | "
              f"{r['fused_bytes'] / 2**20:.2f} | {r['fused_over_eager']:.3f} |")
    return res


if __name__ == "__main__":
    main()
