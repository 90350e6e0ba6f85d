"""emo-kernels: fused kernels for EMO's iRMB, and the EMO model zoo.

Build switches (environment variables):
    EMO_KERNELS_SKIP_CUDA_BUILD=1   do not build the CUDA extension emo_kernels._C
    EMO_KERNELS_CUDA_ARCHS="80;90"  compute capabilities to build for (default 80;90)
The CUDA extension is built only when torch has CUDA, nvcc is found and csrc/ has sources.
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


ext_modules, cmdclass = cuda_extensions()

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
