"""Backend selection for the emo_kernels ops.

Backends, in the order ``auto`` prefers them:

* ``cuda``   -- the compiled extension in ``csrc/`` (CUDA tensors only);
* ``triton`` -- Triton kernels (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``);
* ``cpu``    -- the C++ CPU extension in ``csrc/cpu/`` (CPU tensors, inference only: it refuses
  calls that need autograd, so training falls back to ``torch``);
* ``torch``  -- the pure-PyTorch reference (any device): the fallback and the test oracle.

Choose with the environment variable ``EMO_KERNELS_BACKEND=torch|cpu|triton|cuda|auto``
(read at every call), or in code with :func:`set_backend` or the :func:`use_backend`
context manager (which take precedence over the variable); both take ``ops=[...]`` to
select a backend for some ops only (``use_backend('triton', ops=['window_attention'])``),
the other ops keeping the outer selection. Asking for a backend that
cannot serve a call raises :class:`BackendUnavailableError` naming the reason; ``auto``
takes the first backend that can, and :func:`explain` says why the others were passed over.

``auto`` never picks the Triton interpreter (it is a test tool, thousands of times slower
than the reference) and never picks an implementation marked ``auto_ok=False`` (kernels
not yet verified on hardware).
"""
import contextlib
import contextvars
import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional

BACKENDS = ("cuda", "triton", "cpu", "torch")
CHOICES = BACKENDS + ("auto",)
ENV_VAR = "EMO_KERNELS_BACKEND"

_selected: contextvars.ContextVar = contextvars.ContextVar("emo_kernels_backend", default=None)


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run this call; the message says why."""


@dataclass
class Impl:
    fn: Callable
    # returns None when the backend can run these arguments, else the reason it cannot
    can_run: Callable[..., Optional[str]]
    auto_ok: bool = True


# op name -> backend name -> Impl
_REGISTRY: Dict[str, Dict[str, Impl]] = {}


def register(op: str, backend: str, fn: Callable, can_run: Callable[..., Optional[str]] = None,
             auto_ok: bool = True) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    _REGISTRY.setdefault(op, {})[backend] = Impl(fn, can_run or (lambda *a, **k: None), auto_ok)


def _check_name(name: str) -> str:
    if name not in CHOICES:
        raise ValueError(f"unknown emo_kernels backend {name!r}; expected one of {CHOICES}")
    return name


def _selection(name, ops):
    """The context value: {op: backend} with key None for "every other op"."""
    if ops is None:
        return None if name is None else {None: _check_name(name)}
    sel = dict(_selected.get() or {})
    sel.update({op: _check_name(name) for op in ([ops] if isinstance(ops, str) else ops)})
    return sel


def get_backend(op: Optional[str] = None) -> str:
    """The backend in force (for ``op``): set_backend/use_backend, else $EMO_KERNELS_BACKEND,
    else 'auto'."""
    sel = _selected.get() or {}
    name = sel.get(op, sel.get(None))
    if name is None:
        name = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
        if name not in CHOICES:
            raise ValueError(f"${ENV_VAR}={name!r} is not one of {CHOICES}")
    return name


def set_backend(name: Optional[str], ops=None) -> None:
    """Select a backend for this thread/context (None: back to $EMO_KERNELS_BACKEND/auto);
    with ``ops``, only for those ops."""
    _selected.set(_selection(name, ops))


@contextlib.contextmanager
def use_backend(name: str, ops=None):
    """``with use_backend('triton'): ...`` -- select a backend inside the block (with
    ``ops=[...]``, only for those ops)."""
    token = _selected.set(_selection(name, ops))
    try:
        yield
    finally:
        _selected.reset(token)


def _reason(op: str, backend: str, args, kwargs) -> Optional[str]:
    impl = _REGISTRY.get(op, {}).get(backend)
    if impl is None:
        from . import _cuda  # noqa: F401  (stubs say how to build)
        return f"no {backend} implementation of {op} is available" + (
            f" ({_cuda.build_hint()})" if backend == "cuda" else "")
    return impl.can_run(*args, **kwargs)


def explain(op: str, *args, **kwargs) -> Dict[str, Optional[str]]:
    """For each backend: None if it can run ``op`` on these arguments, else why not."""
    out = {}
    for b in BACKENDS:
        r = _reason(op, b, args, kwargs)
        if r is None and b == "triton" and triton_interpreted():
            r = "runs only in the Triton interpreter here (TRITON_INTERPRET=1), which auto skips"
        elif r is None and not _REGISTRY[op][b].auto_ok:
            r = "usable when asked for explicitly, but not verified on hardware, so auto skips it"
        out[b] = r
    return out


def resolve(op: str, *args, **kwargs) -> Callable:
    """The implementation of ``op`` that the selected backend provides for these arguments."""
    name = get_backend(op)
    if name == "auto":
        impls = _REGISTRY.get(op, {})
        for b in BACKENDS:  # the first that can run it; the reasons only when none can
            impl = impls.get(b)
            if impl is None or not impl.auto_ok:
                continue
            if b == "triton" and triton_interpreted():
                continue
            if impl.can_run(*args, **kwargs) is None:
                return impl.fn
        reasons = explain(op, *args, **kwargs)
        raise BackendUnavailableError(
            f"no backend can run {op}: " + "; ".join(f"{b}: {r}" for b, r in reasons.items()))
    reason = _reason(op, name, args, kwargs)
    if reason is not None:
        raise BackendUnavailableError(f"backend {name!r} cannot run {op}: {reason}")
    return _REGISTRY[op][name].fn


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
