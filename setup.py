"""emo-kernels: fused kernels for EMO's iRMB, and the EMO model zoo.

Build switches (environment variables):
    EMO_KERNELS_SKIP_CUDA_BUILD=1   do not build the CUDA extension emo_kernels._C
    TORCH_CUDA_ARCH_LIST="8.0;9.0"  CUDA architectures to build for (default 8.0;9.0; "+PTX"
                                    adds PTX; EMO_KERNELS_CUDA_ARCHS="80;90" is an alias)
    EMO_KERNELS_SKIP_CPU_BUILD=1    do not build the CPU extension emo_kernels._C_cpu_<isa>
    EMO_KERNELS_CPU_ISA=avx512|avx2|default   build only that CPU variant (default: all three)
    MAX_JOBS=N                      parallel compile jobs (ninja), as for any torch extension
    CUDA_HOME                       CUDA toolkit (default /usr/local/cuda when it has bin/nvcc)
The CUDA extension is built only when torch has CUDA, nvcc is found and csrc/ has sources;
otherwise setup.py says why on stderr. The CPU extension (csrc/cpu/) is built always, once per
ISA variant (AVX512, AVX2, DEFAULT: the library runs on any x86-64 CPU, which loads the best
variant it supports); without it the cpu backend JIT-compiles the variant it needs on first
use (emo_kernels/_ext.py). Sources and flags: emo_kernels/_build.py, shared with the JIT.
"""
import importlib.util
import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _say(msg):
    print(f"emo-kernels setup: {msg}", file=sys.stderr)


def _build_config():
    """emo_kernels/_build.py, loaded by path (the package itself is not importable yet)."""
    spec = importlib.util.spec_from_file_location(
        "_emo_build", os.path.join(HERE, "emo_kernels", "_build.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


BUILD = _build_config()


def cuda_extensions():
    if os.environ.get("EMO_KERNELS_SKIP_CUDA_BUILD", "0") not in ("", "0"):
        _say("EMO_KERNELS_SKIP_CUDA_BUILD is set: not building the CUDA extension")
        return [], {}
    sources = [os.path.relpath(s, HERE) for s in BUILD.cuda_sources()]
    if not sources:
        return [], {}
    BUILD.default_cuda_home()  # before torch.utils.cpp_extension is imported
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
        include_dirs=[os.path.join(HERE, "csrc")] + BUILD.nvidia_wheel_includes(),
        extra_compile_args={"cxx": BUILD.CUDA_CXX_FLAGS,
                            "nvcc": BUILD.cuda_nvcc_flags(BUILD.cuda_arch_list())})
    return [ext], {"build_ext": BuildExtension}


def cpu_extensions():
    """The CPU backend: one CppExtension per ISA variant (emo_kernels._C_cpu_<isa>), no CUDA
    needed."""
    if os.environ.get("EMO_KERNELS_SKIP_CPU_BUILD", "0") not in ("", "0"):
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        return [], {}
    forced = BUILD.forced_isa()
    exts = [CppExtension(f"emo_kernels.{BUILD.cpu_module(isa)}", BUILD.CPU_SOURCES,
                         depends=BUILD.CPU_HEADERS,
                         extra_compile_args={"cxx": BUILD.cpu_cxx_flags(isa)},
                         extra_link_args=BUILD.CPU_LDFLAGS)
            for isa in ((forced,) if forced else BUILD.ISAS)]
    return exts, {"build_ext": BuildExtension}


def _per_extension_temp(build_ext):
    """build_ext with one object folder per extension: the CPU variants compile the same
    sources with different flags, and must not link one another's objects."""
    class BuildExt(build_ext):
        def build_extension(self, ext):
            temp = self.build_temp
            self.build_temp = os.path.join(temp, ext.name)
            try:
                super().build_extension(ext)
            finally:
                self.build_temp = temp
    return BuildExt


ext_modules, cmdclass = cuda_extensions()
_cpu_ext, _cpu_cmd = cpu_extensions()
ext_modules, cmdclass = ext_modules + _cpu_ext, {**_cpu_cmd, **cmdclass}
if "build_ext" in cmdclass:
    cmdclass["build_ext"] = _per_extension_temp(cmdclass["build_ext"])

# metadata (name, version, dependencies, packages) is in pyproject.toml; setup.py only adds
# the compiled extensions
setup(
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
