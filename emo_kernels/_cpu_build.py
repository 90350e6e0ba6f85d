"""Build settings of the CPU extension ``emo_kernels._C_cpu`` (used by setup.py and the JIT).

Kept free of package imports so that setup.py can load it by path.

The kernels use ATen's ``at::vec`` at the vector width of ``CPU_CAPABILITY``. By default the
build targets the best ISA of the building machine that torch itself reports
(``torch.backends.cpu.get_cpu_capability()``: AVX512, AVX2 or DEFAULT); override with
``EMO_KERNELS_CPU_ISA=avx512|avx2|default`` (e.g. to build a wheel for older CPUs). At run
time the backend refuses (with the reason) a build whose ISA the present CPU lacks.
"""
import os

SOURCES = ["csrc/cpu/emo_cpu.cpp"]
HEADERS = ["csrc/cpu/gemm.h"]
ISA_ENV = "EMO_KERNELS_CPU_ISA"
_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
    "DEFAULT": [],
}
RANK = {"DEFAULT": 0, "AVX2": 1, "AVX512": 2}


def target_isa():
    isa = os.environ.get(ISA_ENV, "").strip().upper()
    if not isa:
        import torch
        isa = torch.backends.cpu.get_cpu_capability().upper()
    if isa not in _FLAGS:  # e.g. SVE, ZVECTOR, VSX: build the portable version
        isa = "DEFAULT"
    return isa


def cxx_flags(isa=None):
    isa = isa or target_isa()
    flags = ["-O3", "-fopenmp", f"-DCPU_CAPABILITY={isa}"] + _FLAGS[isa]
    if isa != "DEFAULT":
        flags.append(f"-DCPU_CAPABILITY_{isa}")
    return flags
