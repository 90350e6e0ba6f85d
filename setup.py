"""emo-kernels: fused kernels for EMO's iRMB, and the EMO model zoo.

Build switches (environment variables):
    EMO_KERNELS_SKIP_CUDA_BUILD=1   do not build the CUDA extension emo_kernels._C
    EMO_KERNELS_CUDA_ARCHS="80;90"  compute capabilities to build for (default 80;90)
    EMO_KERNELS_SKIP_CPU_BUILD=1    do not build the CPU extension emo_kernels._C_cpu
    EMO_KERNELS_CPU_ISA=avx512|avx2|default   vector ISA of the CPU extension (default: the
                                    best this machine and torch support)
The CUDA extension is built only when torch has CUDA, nvcc is found and csrc/ has sources.
The CPU extension (csrc/cpu/) is built always (one C++ file, ~30-50 s on 2 cores); without it
the cpu backend JIT-compiles the same file on first use (emo_kernels/_cpu.py).
"""
import glob
import os

from setuptools import find_packages, setup


def cuda_extensions():
    if os.environ.get("EMO_KERNELS_SKIP_CUDA_BUILD", "0") not in ("", "0"):
        return [], {}
    sources = sorted(glob.glob("csrc/*.cu") + glob.glob("csrc/*.cpp"))
    if not sources:
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        return [], {}
    if torch.version.cuda is None or CUDA_HOME is None:
        return [], {}
    archs = os.environ.get("EMO_KERNELS_CUDA_ARCHS", "80;90").replace(",", ";").split(";")
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs if a.strip()]
    ext = CUDAExtension("emo_kernels._C", sources,
                        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"] + gencode})
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
    ext = CppExtension("emo_kernels._C_cpu", build.SOURCES,
                       extra_compile_args={"cxx": build.cxx_flags()},
                       extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = cuda_extensions()
_cpu_ext, _cpu_cmd = cpu_extensions()
ext_modules, cmdclass = ext_modules + _cpu_ext, {**_cpu_cmd, **cmdclass}

setup(
    name="emo-kernels",
    version="0.1.0",
    description="Fused Triton/CUDA kernels for the EMO vision backbone, and an exact EMO model zoo",
    packages=find_packages(include=["emo", "emo.*", "emo_kernels", "emo_kernels.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4"],
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
