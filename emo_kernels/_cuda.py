"""Loading the compiled CUDA extension (csrc/), which registers ``torch.ops.emo_kernels_cuda``.

Order of attempts, on first use:

1. ``import emo_kernels._C`` -- built by ``pip install -e . --no-build-isolation`` (setup.py)
   or ``python setup.py build_ext --inplace``.
2. On a machine with a CUDA GPU and nvcc only: a JIT build of csrc/ with
   ``torch.utils.cpp_extension.load`` (ninja; cached under $TORCH_EXTENSIONS_DIR, default
   ~/.cache/torch_extensions) for the GPU's architecture. Needs a source checkout (csrc/ next to
   the package). Disable with EMO_KERNELS_CUDA_JIT=0.

Without either, :func:`load` raises ImportError saying how to build, and
:func:`unavailable_reason` returns that text (the cuda backend's can_run reports it).
"""
import glob
import os
from typing import Optional

_BUILD_HINT = ("the CUDA extension emo_kernels._C is not built: on a machine with CUDA and nvcc, "
               "run `pip install -e . --no-build-isolation` (see README, 'Building the CUDA "
               "extension'); on a CUDA GPU machine it is otherwise JIT-built from csrc/ on first "
               "use unless EMO_KERNELS_CUDA_JIT=0")

CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
JIT_NAME = "emo_kernels_cuda_jit"

_state = {"loaded": None, "error": None}


def build_hint() -> str:
    return _BUILD_HINT


def _jit_build():
    import torch
    from torch.utils import cpp_extension

    if not os.environ.get("CUDA_HOME") and os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
        cpp_extension.CUDA_HOME = "/usr/local/cuda"
    sources = sorted(glob.glob(os.path.join(CSRC, "*.cu")) + glob.glob(os.path.join(CSRC, "*.cpp")))
    if not sources:
        raise ImportError(f"no CUDA sources under {CSRC} (JIT needs a source checkout)")
    major, minor = torch.cuda.get_device_capability()
    arch = f"{major}{minor}"
    includes = [CSRC]
    try:
        import importlib.util
        spec = importlib.util.find_spec("nvidia")
        for root in (spec.submodule_search_locations if spec else None) or []:
            includes += [os.path.join(root, s, "include") for s in ("cu13", "cu12")
                         if os.path.isdir(os.path.join(root, s, "include"))]
    except (ImportError, ValueError):
        pass
    cpp_extension.load(
        name=JIT_NAME, sources=sources, extra_include_paths=includes,
        extra_cflags=["-O3", "-g0"],
        extra_cuda_cflags=["-O3", f"-gencode=arch=compute_{arch},code=sm_{arch}"],
        is_python_module=False, verbose=os.environ.get("EMO_KERNELS_VERBOSE_BUILD", "0") != "0")
    return JIT_NAME


def _loaded(name):
    from .backends.cuda import _fake
    _fake.register()  # FakeTensor/torch.compile support for the ops just registered
    _state["loaded"] = name
    return name


def load():
    """Load the extension (ops under torch.ops.emo_kernels_cuda) and return its name
    ('emo_kernels._C' or the JIT module name); ImportError says how to build it."""
    if _state["loaded"] is not None:
        return _state["loaded"]
    if _state["error"] is not None:
        raise ImportError(_state["error"])
    try:
        from . import _C  # noqa: F401  (registers the ops)
        return _loaded("emo_kernels._C")
    except ImportError as e:
        first = e
    import torch
    jit_ok = os.environ.get("EMO_KERNELS_CUDA_JIT", "1") not in ("", "0")
    if jit_ok and torch.version.cuda is not None and torch.cuda.is_available():
        try:
            return _loaded(_jit_build())
        except Exception as e:  # noqa: BLE001  (any build failure: report it with the hint)
            _state["error"] = f"{_BUILD_HINT}; the JIT build failed: {e}"
            raise ImportError(_state["error"]) from e
    _state["error"] = f"{_BUILD_HINT} (import error: {first})"
    raise ImportError(_state["error"]) from first


def unavailable_reason() -> Optional[str]:
    """None when the extension is loaded (or loads now), else why not, with the build hint."""
    if _state["loaded"] is not None:  # cheap path (also what torch.compile traces)
        return None
    try:
        load()
        return None
    except ImportError as e:
        return str(e)
