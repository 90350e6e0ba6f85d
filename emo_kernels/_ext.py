"""The one loader of the compiled extensions (build settings: emo_kernels/_build.py).

Two extensions, loaded the same way on first use:

* CPU (csrc/cpu/): one library per ISA variant (AVX512, AVX2, DEFAULT), each registering its
  ops under ``torch.ops.emo_kernels_cpu_<isa>``. :func:`cpu_ops` loads the best variant this
  CPU supports, or the one ``$EMO_KERNELS_CPU_ISA`` forces (an error if the CPU lacks it).
* CUDA (csrc/cuda/*.cu): ``emo_kernels._C``, registering ``torch.ops.emo_kernels_cuda``
  (:func:`load_cuda`); its JIT build runs only on a machine with a CUDA GPU and nvcc.

Order of attempts, for each: (1) the library built by ``pip install -e . --no-build-isolation``
(setup.py) into this package's folder, unless ``$EMO_KERNELS_<CPU|CUDA>_PREBUILT=0`` (e.g. while
editing csrc/, where an in-place build would be stale); one that another checkout's editable
install would supply is not taken. (2) A JIT build with ``torch.utils.cpp_extension.load``,
unless ``$EMO_KERNELS_<CPU|CUDA>_JIT=0``, into
``$EMO_KERNELS_BUILD_DIR/jit_<cpu|cuda>/<torch version>-<isa or sm arch>-<python>/`` (default
build root: the checkout's ``build/``), so environments never share or overwrite one another's
library. (3) Otherwise the extension is unavailable and :func:`cpu_unavailable_reason` /
:func:`cuda_unavailable_reason` say why (the backends' can_run report it).

Concurrent builds: a process builds or loads a folder only while it holds an exclusive
``flock`` on ``<folder>/emo_build.lock`` (the file names its owner). The kernel drops that lock
when its owner exits or is killed, so a build interrupted midway never blocks a later one:
the next process finds its ``emo_build.incomplete`` marker, says so, clears the partial build
(and a ``lock`` file of torch's that no process holds: older torch waits on one forever) and
builds again. A live owner is waited for at most ``$EMO_KERNELS_BUILD_WAIT`` seconds
(default 900), then the extension is unavailable with a message naming the lock and its owner.
"""
import contextlib
import dataclasses
import os
import shutil
import socket
import sys
import threading
import time
import warnings
from typing import Callable, List, Optional

from . import _build

BUILD_DIR_ENV = "EMO_KERNELS_BUILD_DIR"
WAIT_ENV = "EMO_KERNELS_BUILD_WAIT"
LOCK_NAME = "emo_build.lock"
INCOMPLETE = "emo_build.incomplete"
_ROOT = _build.ROOT
_HERE = os.path.dirname(os.path.abspath(__file__))
_STATE = {}  # Extension.name -> (handle or None, reason or None)
_STATE_LOCK = threading.RLock()


@dataclasses.dataclass
class Extension:
    """One compiled library: where a prebuilt one is, and how to JIT-build it."""
    name: str                # torch.library namespace (CPU) or label (CUDA)
    kind: str                # "cpu" or "cuda": the env switches and the jit_<kind> folder
    module: str              # prebuilt module inside the package
    key: str                 # build-folder key beside torch version and Python (isa, sm arch)
    sources: List[str]
    cflags: List[str]
    hint: str                # how to build it, for messages
    cuda_cflags: Optional[List[str]] = None
    ldflags: List[str] = dataclasses.field(default_factory=list)
    includes: List[str] = dataclasses.field(default_factory=list)
    jit_reason: Callable[[], Optional[str]] = lambda: None  # why no JIT build here, or None

    def env(self, what):
        return f"EMO_KERNELS_{self.kind.upper()}_{what}"


def build_dir(ext):
    """The JIT build folder of ``ext`` for this torch version and Python."""
    import torch
    root = os.environ.get(BUILD_DIR_ENV) or os.path.join(_ROOT, "build")
    key = f"torch{torch.__version__}-{ext.key}-{sys.implementation.cache_tag}"
    return os.path.join(root, f"jit_{ext.kind}", "".join(
        c if c.isalnum() or c in "._+-" else "_" for c in key))


def _owner(path):
    try:
        with open(path) as f:
            return f.read().strip() or "an unknown process"
    except OSError:
        return "an unknown process"


@contextlib.contextmanager
def build_lock(build, wait=None):
    """Hold the exclusive flock of the build folder ``build`` (see the module docstring):
    waits at most ``wait`` seconds ($EMO_KERNELS_BUILD_WAIT, default 900) for a live owner,
    then raises ImportError naming the lock file and its owner."""
    import fcntl
    wait = float(os.environ.get(WAIT_ENV, 900)) if wait is None else wait
    path = os.path.join(build, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is None:
                    deadline = time.monotonic() + wait
                    warnings.warn(f"emo_kernels: waiting (at most {wait:g} s) for "
                                  f"{_owner(path)}, which builds an extension in {build} "
                                  f"(lock {path})", stacklevel=4)
                elif time.monotonic() > deadline:
                    raise ImportError(f"the extension build folder {build} is locked by "
                                      f"{_owner(path)} for over {wait:g} s (lock {path}); "
                                      f"wait for it, or set ${WAIT_ENV} higher") from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        yield
    finally:
        os.close(fd)  # drops the flock


def _clear_interrupted(build):
    """Under the build lock: make ``build`` safe to build or load. INCOMPLETE there means the
    previous build was interrupted or failed (its owner held the build lock and is gone): say
    so and clear its partial output. torch's own ``lock`` (a FileBaton in older torch, which
    waits forever on a file left by a killed build; a flock in newer torch) is removed when no
    process holds it, and refused when one does (a process outside this protocol)."""
    import fcntl
    if os.path.exists(os.path.join(build, INCOMPLETE)):
        warnings.warn(f"emo_kernels: an earlier build of the extension in {build} was "
                      "interrupted or failed (its owner is gone); clearing its partial output "
                      "and building again", stacklevel=5)
        for name in os.listdir(build):
            p = os.path.join(build, name)
            if name == LOCK_NAME:
                continue
            shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.remove(p)
    baton = os.path.join(build, "lock")
    try:
        fd = os.open(baton, os.O_RDWR)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.remove(baton)
    except BlockingIOError:
        raise ImportError(f"torch's build lock {baton} is held by a process outside emo_kernels' "
                          f"build lock ({LOCK_NAME}); let it finish") from None
    finally:
        os.close(fd)


def _jit(ext):
    """Build ``ext`` (or reuse its build) under the build lock and load it (torch.ops)."""
    from torch.utils.cpp_extension import load as load_ext
    sources = [os.path.join(_ROOT, s) for s in ext.sources]
    if not sources or not all(os.path.exists(s) for s in sources):
        raise ImportError("its sources (csrc/) are not here to JIT-build it")
    build = build_dir(ext)
    os.makedirs(build, exist_ok=True)
    with build_lock(build):
        _clear_interrupted(build)
        if not any(f.endswith(".so") for f in os.listdir(build)):
            warnings.warn(f"emo_kernels: compiling the extension {ext.name} ({ext.key}) with "
                          f"torch.utils.cpp_extension.load into {build} (once, ~1-2 min); "
                          "`pip install -e . --no-build-isolation` builds it ahead of time",
                          stacklevel=5)
        marker = os.path.join(build, INCOMPLETE)
        open(marker, "w").close()  # removed once the library is built and loaded
        load_ext(name=ext.name, sources=sources, build_directory=build,
                 extra_cflags=ext.cflags, extra_cuda_cflags=ext.cuda_cflags,
                 extra_ldflags=ext.ldflags, extra_include_paths=ext.includes,
                 is_python_module=False,
                 verbose=os.environ.get("EMO_KERNELS_VERBOSE_BUILD", "0") != "0")
        os.remove(marker)
    return f"{ext.name} (JIT, {build})"


def _prebuilt(ext):
    """Import the library setup.py built into this package's folder: (handle, None), or
    (None, why not)."""
    import importlib.util
    if os.environ.get(ext.env("PREBUILT"), "1") in ("", "0"):
        return None, f"${ext.env('PREBUILT')}=0"
    full = f"{__package__}.{ext.module}"
    try:
        spec = importlib.util.find_spec(full)
    except (ImportError, ValueError) as e:
        return None, e
    if spec is None or not spec.origin:
        return None, f"{full} is not in {_HERE}"
    if os.path.dirname(os.path.abspath(spec.origin)) != _HERE:
        return None, f"the one found, {spec.origin}, belongs to another checkout"
    try:
        importlib.import_module(full)  # registers the ops
    except ImportError as e:
        return None, e
    return full, None


def _load(ext):
    handle, first = _prebuilt(ext)
    if handle is not None:
        return handle, None
    if os.environ.get(ext.env("JIT"), "1") in ("", "0"):
        return None, f"{ext.hint} (not built: {first}; ${ext.env('JIT')}=0 forbids the JIT build)"
    why = ext.jit_reason()
    if why is not None:
        return None, f"{ext.hint} (not built: {first}; no JIT build: {why})"
    try:
        return _jit(ext), None
    except Exception as e:  # noqa: BLE001  (compiler missing, build error...: report it)
        return None, f"{ext.hint} (not built: {first}; the JIT build failed: {e})"


def load(ext, on_load=None):
    """Load ``ext`` once per process (whichever thread asks first) and return what loaded it
    (module name or JIT folder); raises ImportError saying why it cannot be used.
    ``on_load(handle)`` runs once after a successful load (fake registrations)."""
    state = _STATE.get(ext.name)
    if state is None:
        with _STATE_LOCK:
            state = _STATE.get(ext.name)
            if state is None:
                handle, reason = _load(ext)
                if handle is not None and on_load is not None:
                    on_load(handle)
                state = _STATE[ext.name] = (handle, reason)
    if state[0] is None:
        raise ImportError(state[1])
    return state[0]


# ---- CPU ---------------------------------------------------------------------------------------
CPU_HINT = ("the CPU extension is not usable: run `pip install -e . --no-build-isolation`, or "
            "let it be JIT-built from csrc/cpu/ (a C++ compiler needed)")


def cpu_extension(isa):
    isa = isa.upper()
    return Extension(name=_build.cpu_namespace(isa), kind="cpu", module=_build.cpu_module(isa),
                     key=isa.lower(), sources=_build.CPU_SOURCES, cflags=_build.cpu_cxx_flags(isa),
                     ldflags=_build.CPU_LDFLAGS, hint=CPU_HINT)


def cpu_isa():
    """The variant to use here: ``$EMO_KERNELS_CPU_ISA`` when it is set and this CPU supports
    it (else ImportError), otherwise the best one this CPU supports."""
    import torch
    here = _build.best_isa(torch.backends.cpu.get_cpu_capability())
    try:
        forced = _build.forced_isa()
    except ValueError as e:
        raise ImportError(str(e)) from None
    if forced is None:
        return here
    if _build.RANK[forced] > _build.RANK[here]:
        raise ImportError(f"${_build.ISA_ENV}={forced.lower()} but this CPU supports "
                          f"{here} at best; unset it or choose {here.lower()}")
    return forced


def _cpu_registered(ns):
    from .backends import cpu
    cpu.register_fakes(ns)  # FakeTensor/torch.compile support for the ops just registered


def cpu_ops(isa=None):
    """``torch.ops.<namespace>`` of the CPU variant ``isa`` (default :func:`cpu_isa`), loaded
    on first use (with its fake functions); raises ImportError saying why it cannot be used."""
    import torch
    isa = isa or cpu_isa()
    ext = cpu_extension(isa)
    load(ext, on_load=lambda _handle: _cpu_registered(ext.name))
    return getattr(torch.ops, ext.name)


def loaded_cpu_namespaces():
    """The torch.ops namespaces of the CPU variants loaded in this process."""
    return [name for name, (handle, _) in list(_STATE.items())
            if handle is not None and name.startswith("emo_kernels_cpu_")]


def cpu_unavailable_reason():
    """None if the CPU extension can be used here, else why not."""
    try:
        cpu_ops()
    except ImportError as e:
        return str(e)
    return None


# ---- CUDA --------------------------------------------------------------------------------------
CUDA_NAME = "emo_kernels_cuda"
JIT_NAME = "emo_kernels_cuda_jit"
CUDA_HINT = ("the CUDA extension emo_kernels._C is not built: on a machine with CUDA and nvcc, "
             "run `pip install -e . --no-build-isolation` (see README, 'Building the CUDA "
             "extension'); on a CUDA GPU machine it is otherwise JIT-built from csrc/ on first "
             "use unless EMO_KERNELS_CUDA_JIT=0")


def _cuda_jit_reason():
    import torch
    if torch.version.cuda is None or not torch.cuda.is_available():
        return "the JIT build needs a CUDA GPU"
    return None


def cuda_extension():
    """The CUDA extension; its JIT build targets $TORCH_CUDA_ARCH_LIST, else this GPU."""
    import torch
    archs = "?"
    if torch.version.cuda is not None and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        archs = _build.cuda_arch_list(default=f"{major}.{minor}")
    return Extension(name=JIT_NAME, kind="cuda", module="_C",
                     key="sm" + "-".join(a.replace(".", "") for a in archs.split(";")),
                     sources=[os.path.relpath(s, _ROOT) for s in _build.cuda_sources()],
                     cflags=list(_build.CUDA_CXX_FLAGS),
                     cuda_cflags=_build.cuda_nvcc_flags(archs) if archs != "?" else None,
                     includes=[os.path.join(_ROOT, "csrc")] + _build.nvidia_wheel_includes(),
                     hint=CUDA_HINT, jit_reason=_cuda_jit_reason)


def _cuda_registered(_handle):
    from .backends.cuda import _fake
    _fake.register()  # FakeTensor/torch.compile support for the ops just registered


def cuda_loaded():
    """True once the CUDA extension is loaded (cheap: what torch.compile traces)."""
    state = _STATE.get(JIT_NAME)
    return state is not None and state[0] is not None


def load_cuda():
    """Load the CUDA extension (ops under torch.ops.emo_kernels_cuda) and return what loaded
    it ('emo_kernels._C' or the JIT folder); ImportError says how to build it."""
    if not cuda_loaded() and JIT_NAME not in _STATE:
        _build.default_cuda_home()
        try:
            from torch.utils import cpp_extension
            if os.environ.get("CUDA_HOME"):
                cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]
        except ImportError:
            pass
    return load(cuda_extension(), on_load=_cuda_registered)


def cuda_unavailable_reason():
    """None when the CUDA extension is loaded (or loads now), else why not, with the hint."""
    if cuda_loaded():
        return None
    try:
        load_cuda()
    except ImportError as e:
        return str(e)
    return None


def cuda_build_hint():
    return CUDA_HINT
