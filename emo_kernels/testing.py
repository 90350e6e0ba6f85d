"""Helpers for tests of kernels: one tolerance table, NaN-poisoning of outputs."""
import contextlib

import torch

# Relative error (max |out - ref| / max |ref|) allowed against the float64 reference, per dtype.
# One table for every op and backend; never loosen it to make a test pass.
TOLERANCE = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 5e-3,
    torch.bfloat16: 4e-2,
}


@contextlib.contextmanager
def poison_empty():
    """Make torch.empty / empty_like return NaN-filled tensors (unwritten outputs show up)."""
    orig_empty, orig_like = torch.empty, torch.empty_like

    def empty(*a, **k):
        t = orig_empty(*a, **k)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    def empty_like(*a, **k):
        t = orig_like(*a, **k)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    torch.empty, torch.empty_like = empty, empty_like
    try:
        yield
    finally:
        torch.empty, torch.empty_like = orig_empty, orig_like


@contextlib.contextmanager
def poison_cpu_outputs():
    """Make the CPU extension's C++ fill every output and every scratch buffer with NaN before
    its kernels write them (the ``set_poison`` op of every loaded ISA variant), so a test
    proves no kernel reads memory it has not written. No-op when the extension is unavailable.
    Process-wide while it lasts (not per thread)."""
    from . import _ext
    from .backends import cpu
    if _ext.cpu_unavailable_reason() is None:
        cpu._ops()  # loaded, with its fake functions
    namespaces = _ext.loaded_cpu_namespaces()
    for ns in namespaces:
        getattr(torch.ops, ns).set_poison(True)
    try:
        yield
    finally:
        for ns in namespaces:
            getattr(torch.ops, ns).set_poison(False)
