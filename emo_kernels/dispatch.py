"""The dispatcher: which backend runs an op call. It names no backend.

Backends register themselves (``emo_kernels/backends/<name>/``, imported by
``emo_kernels.backends``) with :func:`register_backend` -- a name and a priority -- and their
implementation of each op with :func:`register`: the function, its ``can_run`` check (None when
it can run a call, else the reason it cannot), and its status for ``auto`` (``gpu_kernel``:
picked only where a committed GPU measurement shows it faster, :mod:`emo_kernels.measured`;
``auto_skip``: a backend-specific reason ``auto`` must pass it over although it can run).
``auto`` tries the backends in priority order and takes the first that can run the call and
that it does not pass over; :func:`explain` says why the others were passed over.

Choose with the environment variable ``EMO_KERNELS_BACKEND=<name>|auto`` (read at every call),
or in code with :func:`set_backend` or the :func:`use_backend` context manager (which take
precedence over the variable; the selection is per thread, kept in a ``threading.local`` that
torch.compile can trace and guard on -- a ``ContextVar`` cannot be traced by the Dynamo of
torch 2.11); both take ``ops=[...]`` to select a backend for some ops only
(``use_backend('triton', ops=['window_attention'])``), the other ops keeping the outer
selection. Asking for a backend that cannot serve a call raises
:class:`BackendUnavailableError` naming the reason.
"""
import contextlib
import os
import threading
from dataclasses import dataclass
from typing import Callable, Dict, Optional


ENV_VAR = "EMO_KERNELS_BACKEND"
AUTO = "auto"

# (priority, name) of every registered backend; auto tries them by increasing priority
_BACKENDS = []


def register_backend(name: str, priority: int) -> None:
    """Declare a backend; ``auto`` tries backends by increasing ``priority``."""
    if name == AUTO or not name.isidentifier():
        raise ValueError(f"invalid backend name {name!r}")
    if name not in backends():
        _BACKENDS.append((priority, name))
        _BACKENDS.sort()


def backends():
    """The registered backends' names, in the order ``auto`` tries them."""
    return tuple(n for _, n in _BACKENDS)


def choices():
    return backends() + (AUTO,)


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
    # returns None, or why auto must pass this implementation over although it can run
    auto_skip: Optional[Callable[..., Optional[str]]] = None
    # optional whole-chain runner (x, plan, outputs) and its can_run (see emo_kernels.plan)
    chain: Optional[Callable] = None
    chain_can_run: Optional[Callable[..., Optional[str]]] = None


# op name -> backend name -> Impl
_REGISTRY: Dict[str, Dict[str, Impl]] = {}


def _always(*args, **kwargs):
    return None


def register(op: str, backend: str, fn: Callable, can_run: Callable[..., Optional[str]] = None,
             *, gpu_kernel: bool = False, auto_skip=None, chain=None, chain_can_run=None) -> None:
    """Register ``fn`` as ``backend``'s implementation of ``op``; ``can_run(*args, **kwargs)``
    returns None when it can run a call, else the reason it cannot. ``gpu_kernel=True``: auto
    picks it on CUDA only where a committed measurement shows it faster (emo_kernels.measured);
    ``auto_skip(*args, **kwargs)``: None, or why auto passes it over. ``chain``: a runner of a
    prepared multi-block plan (``emo_kernels.plan``) in one call, with its ``chain_can_run``."""
    if backend not in backends():
        raise ValueError(f"unknown backend {backend!r}; register_backend it first "
                         f"(known: {backends()})")
    _REGISTRY.setdefault(op, {})[backend] = Impl(fn, can_run or _always, gpu_kernel,
                                                 auto_skip, chain, chain_can_run or _always)


def _check_name(name: str) -> str:
    if name not in choices():
        raise ValueError(f"unknown emo_kernels backend {name!r}; expected one of {choices()}")
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
        if name not in choices():
            raise ValueError(f"${ENV_VAR}={name!r} is not one of {choices()}")
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
        return f"the {backend} backend has no implementation of {op}"
    return impl.can_run(*args, **kwargs)


def cannot_run(op: str, backend: str, *args, **kwargs) -> Optional[str]:
    """None when ``backend`` can run ``op`` on these arguments (asked for explicitly), else
    the reason it cannot."""
    return _reason(op, backend, args, kwargs)


def _auto_skip(op: str, impl: Impl, backend: str, args, kwargs) -> Optional[str]:
    """Why ``auto`` passes over an implementation that could run this call, or None."""
    if impl.auto_skip is not None:
        skip = impl.auto_skip(*args, **kwargs)
        if skip is not None:
            return skip
    if impl.gpu_kernel:
        from . import measured
        return measured.auto_reason(op, backend, args, kwargs)
    return None


def explain(op: str, *args, **kwargs) -> Dict[str, Optional[str]]:
    """For each backend: None if ``auto`` would use it for ``op`` on these arguments, else why
    not (it cannot run them, or auto passes it over: "usable when asked for explicitly, but
    ...")."""
    out = {}
    for b in backends():
        r = _reason(op, b, args, kwargs)
        if r is None:
            skip = _auto_skip(op, _REGISTRY[op][b], b, args, kwargs)
            if skip is not None:
                r = f"usable when asked for explicitly, but {skip}, so auto skips it"
        out[b] = r
    return out


def _resolve(op: str, args, kwargs):
    """(backend name, Impl) that the selected backend provides for these arguments."""
    name = get_backend(op)
    if name == AUTO:
        impls = _REGISTRY.get(op, {})
        for b in backends():  # the first that can run it; the reasons only when none can
            impl = impls.get(b)
            if impl is None or impl.can_run(*args, **kwargs) is not None:
                continue
            if _auto_skip(op, impl, b, args, kwargs) is None:
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


def resolve_chain(op: str, x, plan, outputs) -> Optional[Callable]:
    """The runner of a whole prepared plan of ``op`` blocks (``emo_kernels.plan``) that the
    selected backend provides for it, or None: then the plan calls ``op`` block by block, each
    call dispatched on its own. Under ``auto``, the first backend whose chain runner can run
    the plan (a GPU kernel's only with a measurement, as for the op itself: none exist)."""
    name = get_backend(op)
    for b in (backends() if name == AUTO else (name,)):
        impl = _REGISTRY.get(op, {}).get(b)
        if impl is None or impl.chain is None or (name == AUTO and impl.gpu_kernel):
            continue
        if impl.chain_can_run(x, plan, outputs) is None:
            log = _selected.dispatch_log
            if log is not None:
                log.append((op + " chain", b))
            return impl.chain
    return None


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
