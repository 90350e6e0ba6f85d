"""Backend selection for the emo_kernels ops.

Backends, in the order ``auto`` prefers them:

* ``cuda``   -- the compiled extension in ``csrc/`` (CUDA tensors only);
* ``triton`` -- Triton kernels (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``);
* ``cpu``    -- the C++ CPU extension in ``csrc/cpu/`` (CPU tensors, inference only: it refuses
  calls that need autograd, so training falls back to ``torch``);
* ``torch``  -- the pure-PyTorch reference (any device): the fallback and the test oracle.

Choose with the environment variable ``EMO_KERNELS_BACKEND=torch|cpu|triton|cuda|auto``
(read at every call), or in code with :func:`set_backend` or the :func:`use_backend`
context manager (which take precedence over the variable; the selection is per thread, kept
in a ``threading.local`` that torch.compile can trace and guard on -- a ``ContextVar`` cannot
be traced by the Dynamo of torch 2.11); both take ``ops=[...]`` to
select a backend for some ops only (``use_backend('triton', ops=['window_attention'])``),
the other ops keeping the outer selection. Asking for a backend that
cannot serve a call raises :class:`BackendUnavailableError` naming the reason; ``auto``
takes the first backend that can, and :func:`explain` says why the others were passed over.

``auto`` never picks the Triton interpreter (it is a test tool, thousands of times slower
than the reference), and picks a GPU kernel (an implementation registered with
``gpu_kernel=True``) for a CUDA call only where a committed GPU measurement shows it faster
than the torch path for that op, GPU family and shape class (:mod:`emo_kernels.measured`);
everywhere else it runs the torch path, and :func:`explain` says why.
"""
import contextlib
import os
import threading
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch

BACKENDS = ("cuda", "triton", "cpu", "torch")
CHOICES = BACKENDS + ("auto",)
ENV_VAR = "EMO_KERNELS_BACKEND"

class _Selection(threading.local):
    """The selection in force in this thread: a tuple of ``(op, backend)`` pairs, op None for
    "every other op" (a tuple of strings: torch.compile guards on it as a constant)."""
    value = ()
    dispatch_log = None   # a list while record_dispatch() is active


_selected = _Selection()


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run this call; the message says why."""


@dataclass
class Impl:
    fn: Callable
    # returns None when the backend can run these arguments, else the reason it cannot
    can_run: Callable[..., Optional[str]]
    # a GPU kernel: auto picks it only where emo_kernels.measured shows it faster
    gpu_kernel: bool = False


# op name -> backend name -> Impl
_REGISTRY: Dict[str, Dict[str, Impl]] = {}


def register(op: str, backend: str, fn: Callable, can_run: Callable[..., Optional[str]] = None,
             gpu_kernel: bool = False) -> None:
    """Register ``fn`` as ``backend``'s implementation of ``op``; ``can_run(*args, **kwargs)``
    returns None when it can run a call, else the reason it cannot. ``gpu_kernel=True``: auto
    picks it on CUDA only where a committed measurement shows it faster (emo_kernels.measured)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    _REGISTRY.setdefault(op, {})[backend] = Impl(fn, can_run or (lambda *a, **k: None),
                                                 gpu_kernel)


def _check_name(name: str) -> str:
    if name not in CHOICES:
        raise ValueError(f"unknown emo_kernels backend {name!r}; expected one of {CHOICES}")
    return name


def _selection(name, ops):
    """The thread's new selection (see _Selection) after selecting ``name`` for ``ops``."""
    if ops is None:
        return () if name is None else ((None, _check_name(name)),)
    ops = (ops,) if isinstance(ops, str) else tuple(ops)
    return tuple(p for p in _selected.value if p[0] not in ops) + tuple(
        (op, _check_name(name)) for op in ops)


def _selected_for(op):
    """The backend selected in code for ``op`` in this thread, or None."""
    default = None
    for o, name in _selected.value:
        if o == op:
            return name
        if o is None:
            default = name
    return default


def get_backend(op: Optional[str] = None) -> str:
    """The backend in force (for ``op``): set_backend/use_backend, else $EMO_KERNELS_BACKEND,
    else 'auto'."""
    name = _selected_for(op)
    if name is None:
        name = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
        if name not in CHOICES:
            raise ValueError(f"${ENV_VAR}={name!r} is not one of {CHOICES}")
    return name


def set_backend(name: Optional[str], ops=None) -> None:
    """Select a backend for this thread/context (None: back to $EMO_KERNELS_BACKEND/auto);
    with ``ops``, only for those ops."""
    _selected.value = _selection(name, ops)


@contextlib.contextmanager
def use_backend(name: str, ops=None):
    """``with use_backend('triton'): ...`` -- select a backend inside the block (with
    ``ops=[...]``, only for those ops)."""
    outer = _selected.value
    _selected.value = _selection(name, ops)
    try:
        yield
    finally:
        _selected.value = outer


def _reason(op: str, backend: str, args, kwargs) -> Optional[str]:
    impl = _REGISTRY.get(op, {}).get(backend)
    if impl is None:
        from . import _ext  # (stubs say how to build)
        return f"no {backend} implementation of {op} is available" + (
            f" ({_ext.cuda_build_hint()})" if backend == "cuda" else "")
    return impl.can_run(*args, **kwargs)


def _auto_skip(op: str, backend: str, impl: Impl, args, kwargs) -> Optional[str]:
    """Why ``auto`` passes over an implementation that could run this call, or None."""
    if impl.gpu_kernel:
        x = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if x is not None and x.device.type == "cpu" and triton_interpreted():
            return "it runs only in the Triton interpreter here (TRITON_INTERPRET=1)"
        from . import measured
        return measured.auto_reason(op, backend, args, kwargs)
    return None


def explain(op: str, *args, **kwargs) -> Dict[str, Optional[str]]:
    """For each backend: None if ``auto`` would use it for ``op`` on these arguments, else why
    not (it cannot run them, or auto passes it over: "usable when asked for explicitly, but
    ...")."""
    out = {}
    for b in BACKENDS:
        r = _reason(op, b, args, kwargs)
        if r is None:
            skip = _auto_skip(op, b, _REGISTRY[op][b], args, kwargs)
            if skip is not None:
                r = f"usable when asked for explicitly, but {skip}, so auto skips it"
        out[b] = r
    return out


def _resolve(op: str, args, kwargs):
    """(backend name, Impl) that the selected backend provides for these arguments."""
    name = get_backend(op)
    if name == "auto":
        impls = _REGISTRY.get(op, {})
        for b in BACKENDS:  # the first that can run it; the reasons only when none can
            impl = impls.get(b)
            if impl is None or impl.can_run(*args, **kwargs) is not None:
                continue
            if _auto_skip(op, b, impl, args, kwargs) is None:
                return b, impl
        reasons = explain(op, *args, **kwargs)
        raise BackendUnavailableError(
            f"no backend can run {op}: " + "; ".join(f"{b}: {r}" for b, r in reasons.items()))
    reason = _reason(op, name, args, kwargs)
    if reason is not None:
        raise BackendUnavailableError(f"backend {name!r} cannot run {op}: {reason}")
    return name, _REGISTRY[op][name]


def which(op: str, *args, **kwargs) -> str:
    """The name of the backend that would run ``op`` on these arguments (raises
    BackendUnavailableError as a call would)."""
    return _resolve(op, args, kwargs)[0]


def resolve(op: str, *args, **kwargs) -> Callable:
    """The implementation of ``op`` that the selected backend provides for these arguments."""
    name, impl = _resolve(op, args, kwargs)
    log = _selected.dispatch_log
    if log is None:
        return impl.fn

    def recorded(*a, **k):
        log.append((op, name))
        return impl.fn(*a, **k)
    recorded.__wrapped__ = impl.fn
    return recorded


@contextlib.contextmanager
def record_dispatch():
    """``with record_dispatch() as calls:`` -- every op call dispatched in this thread inside
    the block appends ``(op, backend name)`` to ``calls`` (a debugging and testing aid: which
    backend really ran)."""
    outer = _selected.dispatch_log
    log = _selected.dispatch_log = []
    try:
        yield log
    finally:
        _selected.dispatch_log = outer


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
