"""emo-kernels: fused kernels for EMO's iRMB, and the EMO model zoo.

Build switches (environment variables):
    EMO_KERNELS_SKIP_CUDA_BUILD=1   do not build the CUDA extension emo_kernels._C
    EMO_KERNELS_CUDA_ARCHS="80;90"  compute capabilities to build for (default 80;90)
    EMO_KERNELS_SKIP_CPU_BUILD=1    do not build the CPU extension emo_kernels._C_cpu
    EMO_KERNELS_CPU_ISA=avx512|avx2|default   vector ISA of the CPU extension (default: the
                                    best this machine and torch support)
    MAX_JOBS=N                      parallel compile jobs (ninja), as for any torch extension
    CUDA_HOME                       CUDA toolkit (default /usr/local/cuda when it has bin/nvcc)
The CUDA extension is built only when torch has CUDA, nvcc is found and csrc/ has sources;
otherwise setup.py says why on stderr. The CPU extension (csrc/cpu/) is built always (one C++
file, ~30-50 s on 2 cores); without it the cpu backend JIT-compiles the same file on first use
(emo_kernels/_cpu.py).
"""
import glob
import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _say(msg):
    print(f"emo-kernels setup: {msg}", file=sys.stderr)


def nvidia_wheel_includes():
    """Include dirs of the nvidia CUDA wheels (cuBLAS/cuSPARSE headers that torch's CUDA headers
    include), so the build needs no CPATH."""
    dirs = []
    try:
        import importlib.util
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        spec = None
    for root in (spec.submodule_search_locations if spec else None) or []:
        for sub in ("cu13", "cu12"):
            inc = os.path.join(root, sub, "include")
            if os.path.isdir(inc):
                dirs.append(inc)
    return dirs


def cuda_arch_flags():
    archs = os.environ.get("EMO_KERNELS_CUDA_ARCHS", "80;90").replace(",", ";").split(";")
    archs = [a.strip().replace(".", "") for a in archs if a.strip()]  # "9.0" -> "90"
    return [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]


def cuda_extensions():
    if os.environ.get("EMO_KERNELS_SKIP_CUDA_BUILD", "0") not in ("", "0"):
        _say("EMO_KERNELS_SKIP_CUDA_BUILD is set: not building the CUDA extension")
        return [], {}
    sources = sorted(glob.glob("csrc/*.cu") + glob.glob("csrc/*.cpp"))
    if not sources:
        return [], {}
    # torch guesses CUDA_HOME from the nvcc on PATH, which can be a wrapper script: prefer the
    # standard location. Must happen before torch.utils.cpp_extension is imported.
    if not os.environ.get("CUDA_HOME") and os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError as e:
        _say(f"torch is not importable ({e}): not building the CUDA extension")
        return [], {}
    if torch.version.cuda is None or CUDA_HOME is None:
        _say("torch has no CUDA or nvcc was not found (set CUDA_HOME): not building the CUDA "
             "extension")
        return [], {}
    ext = CUDAExtension(
        "emo_kernels._C", sources,
        include_dirs=[os.path.join(HERE, "csrc")] + nvidia_wheel_includes(),
        extra_compile_args={"cxx": ["-O3", "-g0"], "nvcc": ["-O3"] + cuda_arch_flags()})
    return [ext], {"build_ext": BuildExtension}


def cpu_extensions():
    """The CPU backend (emo_kernels._C_cpu): a CppExtension, no CUDA needed."""
    if os.environ.get("EMO_KERNELS_SKIP_CPU_BUILD", "0") not in ("", "0"):
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        return [], {}
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "_cpu_build", os.path.join(os.path.dirname(os.path.abspath(__file__)), "emo_kernels",
                                   "_cpu_build.py"))
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    ext = CppExtension("emo_kernels._C_cpu", build.SOURCES, depends=build.HEADERS,
                       extra_compile_args={"cxx": build.cxx_flags()},
                       extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = cuda_extensions()
_cpu_ext, _cpu_cmd = cpu_extensions()
ext_modules, cmdclass = ext_modules + _cpu_ext, {**_cpu_cmd, **cmdclass}

# metadata (name, version, dependencies, packages) is in pyproject.toml; setup.py only adds
# the compiled extensions
setup(
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
