"""Loading the CPU extension ``emo_kernels._C_cpu`` (csrc/cpu/).

``pip install -e . --no-build-isolation`` (scripts/setup.sh) builds it on every machine (no
CUDA needed). In a source checkout without that build it is compiled once with
``torch.utils.cpp_extension.load`` into ``build/jit_cpu/`` (~30 s, cached after); set
``EMO_KERNELS_CPU_JIT=0`` to forbid that. :func:`unavailable_reason` says why the backend
cannot be used (not built, JIT disabled or failed, built for an ISA this CPU lacks).
"""
import os
import warnings

_STATE = {}
JIT_ENV = "EMO_KERNELS_CPU_JIT"
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _jit():
    from . import _cpu_build
    from torch.utils.cpp_extension import load as load_ext
    sources = [os.path.join(_ROOT, s) for s in _cpu_build.SOURCES]
    if not all(os.path.exists(s) for s in sources):
        raise ImportError("emo_kernels._C_cpu is not built and csrc/cpu/ is not here to JIT it")
    build = os.path.join(_ROOT, "build", "jit_cpu")
    os.makedirs(build, exist_ok=True)
    if not any(f.endswith(".so") for f in os.listdir(build)):
        warnings.warn("emo_kernels: compiling the CPU extension with torch.utils.cpp_extension.load "
                      f"into {build} (once, ~30 s); `pip install -e . --no-build-isolation` "
                      "builds it ahead of time", stacklevel=3)
    return load_ext(name="emo_kernels_C_cpu", sources=sources, build_directory=build,
                    extra_cflags=_cpu_build.cxx_flags(), extra_ldflags=["-fopenmp"],
                    verbose=False)


def _load():
    try:
        from . import _C_cpu as mod  # built by setup.py
        return mod, None
    except ImportError as e:
        first = e
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
        mod, reason = _load()
        if mod is not None:
            reason = _isa_reason(mod)
        _STATE["mod"], _STATE["reason"] = (None if reason else mod), reason
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
