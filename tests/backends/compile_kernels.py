"""Compile every Triton kernel for sm_80 and sm_90 without a GPU (ttir -> ... -> cubin).

Run in a subprocess by tests/backends/test_triton_compile.py on every software stack CI tests (torch
2.14 + triton 3.8, and the GPU machine's torch 2.11 + triton 3.6): the interpreter accepts
code the GPU compiler rejects, so this catches compiled-mode-only errors (constexpr misuse,
dot shapes, accumulator dtypes such as triton 3.6's fp64 ``tl.dot`` needing ``out_dtype``)
for every kernel in every dtype, fp64 included, and every constexpr branch the launchers use.
It needs no driver: triton ships ptxas.

Usage: python tests/backends/compile_kernels.py [--archs 80,90] [--dtypes fp16,bf16,fp32,fp64] [-j N]
Prints one line per arch and "compiled N kernels"; exits non-zero on the first failure.
"""
import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import emo_kernels.backends.triton.expand_dwconv_act as EDA  # noqa: E402
import emo_kernels.backends.triton.window_attention as WA  # noqa: E402

DTYPES = ("fp16", "bf16", "fp32", "fp64")
# pointer arguments that carry the op's dtype; every other pointer is the accumulator dtype
EDA_IO = ("x_ptr", "wexp_ptr", "bexp_ptr", "wdw_ptr", "bdw_ptr", "z_ptr", "gz_ptr", "gx_ptr")
WA_IO = ("Q", "K", "V", "KPAD", "O", "DO", "DQ", "DK", "DV")
WA_ACC = ("LSE", "DKPAD")
WA_FLOATS = ("scale_hi", "scale_lo")


def _acc(dt):
    return "fp64" if dt == "fp64" else "fp32"


def _eda_sig(kernel, dt, const):
    sig = {}
    for name in kernel.arg_names:
        if name in const:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*" + (dt if name in EDA_IO else _acc(dt))
        else:
            sig[name] = "i32"
    return sig


def _wa_sig(kernel, dt, const):
    sig = {}
    for name in kernel.arg_names:
        if name in const:
            sig[name] = "constexpr"
        elif name in WA_IO:
            sig[name] = "*" + dt
        elif name in WA_ACC:
            sig[name] = "*" + _acc(dt)
        elif name in WA_FLOATS:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def eda_cases(dt):
    """expand_dwconv_act: its 7 kernels, with the constexpr branches varied over the dtypes."""
    native = dt in ("fp16", "bf16")
    k, s, skip, has_exp, act = {"fp16": (5, 2, False, True, 2), "bf16": (3, 1, False, False, 0),
                                "fp32": (3, 1, True, True, 1), "fp64": (5, 1, True, True, 2)}[dt]
    blocks = dict(BLOCK_P=64, BLOCK_C=32, BLOCK_K=32,
                  ACC_DT=tl.float64 if dt == "fp64" else tl.float32)
    common = dict(HAS_EXP=has_exp, HAS_BEXP=has_exp, ACT=act, SKIP=skip, NATIVE_DOT=native,
                  **blocks)
    conv = dict(K=k, STRIDE=s, PAD=-(-(k - s) // 2))
    return [
        (EDA._fwd_kernel, dict(**conv, HAS_BDW=True, STORE_Z=True, STORE_P=True, STATS=False,
                               **common)),
        (EDA._fwd_kernel, dict(**conv, HAS_BDW=False, STORE_Z=False, STORE_P=True, STATS=True,
                               **common)),
        (EDA._bn_apply_kernel, common),
        (EDA._bwd_stats_kernel, dict(BLOCK_P=64, BLOCK_C=32, ACC_DT=blocks["ACC_DT"])),
        (EDA._bwd_dv_kernel, dict(**conv, **common)),
        (EDA._gemm_gx_kernel, blocks),
        (EDA._gemm_gw_kernel, blocks),
    ]


def wa_cases(dt):
    """window_attention: forward and backward, with and without the padding key, head dims
    padded (20 -> 32) and exact (32)."""
    out = []
    for has_kpad, d in ((True, 20), (False, 32)):
        const = dict(D=d, WS=7, BLOCK_L=64, BLOCK_D=32, HAS_KPAD=has_kpad, UPCAST=False,
                     IS_F64=dt == "fp64")
        out += [(WA._window_attention_fwd, const), (WA._window_attention_bwd, const)]
    return out


def jobs(archs, dtypes):
    for arch in archs:
        for dt in dtypes:
            for i, (kernel, const) in enumerate(eda_cases(dt)):
                yield ("eda", i, arch, dt)
            for i, _ in enumerate(wa_cases(dt)):
                yield ("wa", i, arch, dt)


def compile_one(job):
    which, i, arch, dt = job
    if which == "eda":
        kernel, const = eda_cases(dt)[i]
        sig = _eda_sig(kernel, dt, const)
    else:
        kernel, const = wa_cases(dt)[i]
        sig = _wa_sig(kernel, dt, const)
    try:
        compiled = triton.compile(ASTSource(kernel, sig, const),
                                  target=GPUTarget("cuda", arch, 32), options=dict(num_warps=4))
    except Exception as e:  # noqa: BLE001  (report which kernel, then fail)
        return f"FAILED sm_{arch} {dt} {kernel.__name__} {const}: {type(e).__name__}: {e}"
    if not compiled.asm.get("cubin"):
        return f"FAILED sm_{arch} {dt} {kernel.__name__}: no cubin"
    return None


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", default="80,90")
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    ap.add_argument("-j", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args(argv)
    archs = [int(x) for x in a.archs.split(",")]
    todo = list(jobs(archs, a.dtypes.split(",")))
    with ProcessPoolExecutor(max_workers=a.j) as pool:
        errors = [e for e in pool.map(compile_one, todo) if e]
    for e in errors:
        print(e)
    if errors:
        return 1
    print(f"compiled {len(todo)} kernels for {','.join(f'sm_{x}' for x in archs)} "
          f"({a.dtypes}) with triton {triton.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
