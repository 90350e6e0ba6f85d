"""Loading the CPU extension ``emo_kernels._C_cpu`` (csrc/cpu/).

``pip install -e . --no-build-isolation`` (scripts/setup.sh) builds it on every machine (no
CUDA needed). In a source checkout without that build it is compiled once with
``torch.utils.cpp_extension.load`` (~30-60 s, cached after) into
``$EMO_KERNELS_BUILD_DIR/jit_cpu/<torch version>-<ISA>-<python>/`` (default build root: the
checkout's ``build/``), one folder per torch version, target ISA and Python, so environments
never share or overwrite one another's library. Set ``EMO_KERNELS_CPU_JIT=0`` to forbid the
build, ``EMO_KERNELS_CPU_PREBUILT=0`` to ignore setup.py's build and use the JIT one (e.g.
while editing csrc/cpu/, where an in-place build would be stale). :func:`unavailable_reason`
says why the backend cannot be used (not built, JIT disabled or failed, built for an ISA this
CPU lacks).

Concurrent builds: a process builds or loads a folder only while it holds an exclusive
``flock`` on ``<folder>/emo_build.lock`` (the file names its owner). The kernel drops that lock
when its owner exits or is killed, so a build interrupted midway never blocks a later one:
the next process finds its ``emo_build.incomplete`` marker, says so, clears the partial build
(and a ``lock`` file of torch's that no process holds: older torch waits on one forever) and
builds again. A live owner is waited for at most ``$EMO_KERNELS_BUILD_WAIT`` seconds
(default 900), then the backend is unavailable with a message naming the lock and its owner.
"""
import contextlib
import os
import shutil
import socket
import sys
import threading
import time
import warnings

_STATE = {}
_STATE_LOCK = threading.Lock()
JIT_ENV = "EMO_KERNELS_CPU_JIT"
BUILD_DIR_ENV = "EMO_KERNELS_BUILD_DIR"
WAIT_ENV = "EMO_KERNELS_BUILD_WAIT"
PREBUILT_ENV = "EMO_KERNELS_CPU_PREBUILT"
LOCK_NAME = "emo_build.lock"
INCOMPLETE = "emo_build.incomplete"
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_dir():
    """The JIT build folder of this torch version, target ISA and Python."""
    import torch
    from ._cpu_build import target_isa
    root = os.environ.get(BUILD_DIR_ENV) or os.path.join(_ROOT, "build")
    key = f"torch{torch.__version__}-{target_isa().lower()}-{sys.implementation.cache_tag}"
    return os.path.join(root, "jit_cpu", "".join(c if c.isalnum() or c in "._+-" else "_"
                                                  for c in key))


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
                                  f"{_owner(path)}, which builds the CPU extension in {build} "
                                  f"(lock {path})", stacklevel=4)
                elif time.monotonic() > deadline:
                    raise ImportError(f"the CPU extension's build folder {build} is locked by "
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
    so and clear its partial output. torch's own ``lock`` (a FileBaton in older torch, which waits
    forever on a file left by a killed build; a flock in newer torch) is removed when no
    process holds it, and refused when one does (a process outside this protocol)."""
    import fcntl
    if os.path.exists(os.path.join(build, INCOMPLETE)):
        warnings.warn(f"emo_kernels: an earlier build of the CPU extension in {build} was "
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


def _jit():
    from . import _cpu_build
    from torch.utils.cpp_extension import load as load_ext
    sources = [os.path.join(_ROOT, s) for s in _cpu_build.SOURCES]
    if not all(os.path.exists(s) for s in sources):
        raise ImportError("emo_kernels._C_cpu is not built and csrc/cpu/ is not here to JIT it")
    build = build_dir()
    os.makedirs(build, exist_ok=True)
    with build_lock(build):
        _clear_interrupted(build)
        if not any(f.endswith(".so") for f in os.listdir(build)):
            warnings.warn("emo_kernels: compiling the CPU extension emo_kernels_C_cpu "
                          f"({_cpu_build.target_isa()}) with torch.utils.cpp_extension.load into "
                          f"{build} (once, ~30-60 s); `pip install -e . --no-build-isolation` "
                          "builds it ahead of time", stacklevel=4)
        marker = os.path.join(build, INCOMPLETE)
        open(marker, "w").close()  # removed once the library is built and loaded
        mod = load_ext(name="emo_kernels_C_cpu", sources=sources, build_directory=build,
                       extra_cflags=_cpu_build.cxx_flags(), extra_ldflags=["-fopenmp"],
                       verbose=False)
        os.remove(marker)
        return mod


def _prebuilt():
    """The extension built by setup.py into this package's folder, or (None, why not). One
    that another checkout's editable install would supply is not taken: it was built from
    other sources."""
    import importlib.util
    if os.environ.get(PREBUILT_ENV, "1") in ("", "0"):
        return None, f"${PREBUILT_ENV}=0"
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.find_spec(__package__ + "._C_cpu")
    if spec is None or not spec.origin:
        return None, f"not in {here}"
    if os.path.dirname(os.path.abspath(spec.origin)) != here:
        return None, f"the one found, {spec.origin}, belongs to another checkout"
    try:
        from . import _C_cpu as mod
        return mod, None
    except ImportError as e:
        return None, e


def _load():
    mod, first = _prebuilt()
    if mod is not None:
        return mod, None
    if os.environ.get(JIT_ENV, "1") in ("", "0"):
        return None, (f"emo_kernels._C_cpu is not built ({first}) and ${JIT_ENV}=0 forbids the "
                      "JIT build; run `pip install -e . --no-build-isolation`")
    try:
        return _jit(), None
    except Exception as e:  # compiler missing, build error...
        return None, f"emo_kernels._C_cpu is not built and the JIT build failed: {e}"


def _isa_reason(mod):
    import torch
    from ._cpu_build import RANK
    built = mod.isa().upper()
    here = torch.backends.cpu.get_cpu_capability().upper()
    if RANK.get(built, 0) > RANK.get(here, 0):
        return (f"emo_kernels._C_cpu was built for {built} but this CPU supports {here}; "
                f"rebuild with EMO_KERNELS_CPU_ISA={here.lower()}")
    return None


def load():
    """The extension module; raises ImportError saying why it cannot be used."""
    if "mod" not in _STATE:
        with _STATE_LOCK:  # one load per process, whichever thread asks first
            if "mod" not in _STATE:
                mod, reason = _load()
                if mod is not None:
                    reason = _isa_reason(mod)
                _STATE["reason"], _STATE["mod"] = reason, (None if reason else mod)
    if _STATE["mod"] is None:
        raise ImportError(_STATE["reason"])
    return _STATE["mod"]


def unavailable_reason():
    """None if the extension can be used here, else why not."""
    try:
        load()
    except ImportError as e:
        return str(e)
    return None
