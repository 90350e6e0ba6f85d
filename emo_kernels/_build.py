"""Build configuration of the compiled extensions, one place for setup.py and the JIT
(emo_kernels/_ext.py). Free of package imports: setup.py loads this file by path.

CPU extension (csrc/cpu/): the same sources compiled once per ISA variant -- ``AVX512``,
``AVX2``, ``DEFAULT`` -- into ``emo_kernels/_C_cpu_<isa>`` (setup.py builds all three; the JIT
builds the one it needs). ATen's ``at::vec`` takes its vector width from ``CPU_CAPABILITY``;
``EMO_CPU_NS`` (``emo_kernels_cpu_<isa>``) names the variant's C++ namespace and its
torch.library namespace, so variants never share a symbol or an op. At run time the best
variant the CPU supports (``torch.backends.cpu.get_cpu_capability()``) is loaded;
``EMO_KERNELS_CPU_ISA=avx512|avx2|default`` forces one (an error if the CPU lacks it).

CUDA extension (csrc/cuda/*.cu, csrc/cuda/bindings.cpp): ``emo_kernels._C``, registering
``torch.ops.emo_kernels_cuda``. Architectures: ``TORCH_CUDA_ARCH_LIST`` (e.g. ``"8.0;9.0"``,
``"9.0+PTX"``; ``EMO_KERNELS_CUDA_ARCHS`` is an older alias, ``"80;90"``), else setup.py builds
for 8.0 and 9.0 and the JIT for the present GPU.
"""
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---- CPU ---------------------------------------------------------------------------------------
CPU_SOURCES = ["csrc/cpu/common.cpp", "csrc/cpu/linear.cpp", "csrc/cpu/expand_dwconv_act.cpp",
               "csrc/cpu/window_attention.cpp", "csrc/cpu/irmb_inference.cpp", "csrc/cpu/ops.cpp"]
CPU_HEADERS = ["csrc/geometry.h", "csrc/cpu/common.h", "csrc/cpu/gemm.h"]
ISA_ENV = "EMO_KERNELS_CPU_ISA"
_ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
    "DEFAULT": [],
}
ISAS = ("AVX512", "AVX2", "DEFAULT")  # best first
RANK = {"DEFAULT": 0, "AVX2": 1, "AVX512": 2}


def cpu_namespace(isa):
    """The C++ and torch.library namespace of the variant ``isa``."""
    return f"emo_kernels_cpu_{isa.lower()}"


def cpu_module(isa):
    """The module name setup.py builds for the variant ``isa`` (inside the package)."""
    return f"_C_cpu_{isa.lower()}"


def cpu_cxx_flags(isa):
    isa = isa.upper()
    flags = ["-O3", "-fopenmp", f"-DCPU_CAPABILITY={isa}", f"-DEMO_CPU_NS={cpu_namespace(isa)}"]
    flags += _ISA_FLAGS[isa]
    if isa != "DEFAULT":
        flags.append(f"-DCPU_CAPABILITY_{isa}")
    return flags


CPU_LDFLAGS = ["-fopenmp"]


def forced_isa():
    """``EMO_KERNELS_CPU_ISA`` upper-cased, or None; ValueError if it names no variant."""
    isa = os.environ.get(ISA_ENV, "").strip().upper()
    if not isa:
        return None
    if isa not in _ISA_FLAGS:
        raise ValueError(f"${ISA_ENV}={isa.lower()} names no variant (avx512, avx2, default)")
    return isa


def best_isa(capability):
    """The best variant for a CPU of torch's ``capability`` (SVE, VSX, ...: DEFAULT)."""
    capability = capability.upper()
    return capability if capability in _ISA_FLAGS else "DEFAULT"


# ---- CUDA --------------------------------------------------------------------------------------
ARCH_ENV = "TORCH_CUDA_ARCH_LIST"
ARCH_ALIAS_ENV = "EMO_KERNELS_CUDA_ARCHS"
DEFAULT_CUDA_ARCHS = "8.0;9.0"
CUDA_CXX_FLAGS = ["-O3", "-g0"]


def cuda_sources():
    return sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")) +
                  glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cpp")))


def cuda_arch_list(default=DEFAULT_CUDA_ARCHS):
    """$TORCH_CUDA_ARCH_LIST, else $EMO_KERNELS_CUDA_ARCHS, else ``default``."""
    return (os.environ.get(ARCH_ENV) or os.environ.get(ARCH_ALIAS_ENV) or default).strip()


def cuda_arch_flags(archs):
    """nvcc flags for an arch list in TORCH_CUDA_ARCH_LIST's syntax ("8.0;9.0+PTX", also "80",
    separators ; , or space): SASS per arch, plus PTX for those marked +PTX."""
    flags = []
    for a in archs.replace(",", ";").replace(" ", ";").split(";"):
        a = a.strip()
        if not a:
            continue
        ptx = a.endswith("+PTX")
        num = a[:-4] if ptx else a
        num = num.replace(".", "")
        if not num.isdigit():
            raise ValueError(f"CUDA architecture {a!r}: expected a compute capability like 8.0 "
                             f"or 9.0+PTX (${ARCH_ENV})")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    return flags


def cuda_nvcc_flags(archs):
    return ["-O3"] + cuda_arch_flags(archs)


def nvidia_wheel_includes():
    """Include dirs of the nvidia CUDA wheels (cuBLAS/cuSPARSE headers that torch's CUDA
    headers include), so the build needs no CPATH."""
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


def default_cuda_home():
    """torch guesses CUDA_HOME from the nvcc on PATH, which can be a wrapper script: prefer the
    standard location. Set before torch.utils.cpp_extension is imported."""
    if not os.environ.get("CUDA_HOME") and os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
    return os.environ.get("CUDA_HOME")
