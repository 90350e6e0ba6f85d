"""Compile the expand_dwconv_act Triton kernels for sm_90 without a GPU (ttir -> ... -> cubin).

Run in a subprocess by tests/test_expand_dwconv_act.py::test_kernels_compile_for_gpu: the
interpreter accepts code the GPU compiler rejects, so this catches compiled-mode-only errors
(constexpr misuse, dot shapes, dtypes) in CI. It needs no driver: triton ships ptxas.
Usage: python tests/compile_kernels_sm90.py [all]
"""
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import emo_kernels.triton.expand_dwconv_act as M  # noqa: E402

INTS = {"CIN", "CMID", "H", "W", "HO", "WO", "NT", "B"} | {
    f"s{t}{d}" for t in "xzgo" for d in "bchw"}
IO = ("x_ptr", "wexp_ptr", "bexp_ptr", "wdw_ptr", "bdw_ptr", "z_ptr", "gz_ptr", "gx_ptr")


def compile_kernel(kernel, dt, const):
    acc = "fp64" if dt == "fp64" else "fp32"
    sig = {}
    for name in kernel.arg_names:
        if name in const:
            sig[name] = "constexpr"
        elif name in INTS:
            sig[name] = "i32"
        else:
            sig[name] = "*" + (dt if name in IO else acc)
    return triton.compile(ASTSource(kernel, sig, const), target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=4))


def cases(dt, K, S, skip, has_exp, act):
    native = dt in ("fp16", "bf16")
    blocks = dict(BLOCK_P=64, BLOCK_C=32, BLOCK_K=32,
                  ACC_DT=tl.float64 if dt == "fp64" else tl.float32)
    common = dict(HAS_EXP=has_exp, HAS_BEXP=has_exp, ACT=act, SKIP=skip, NATIVE_DOT=native,
                  **blocks)
    conv = dict(K=K, STRIDE=S, PAD=-(-(K - S) // 2))
    return [
        (M._fwd_kernel, dict(**conv, HAS_BDW=True, STORE_Z=True, STORE_P=True, STATS=False, **common)),
        (M._fwd_kernel, dict(**conv, HAS_BDW=False, STORE_Z=False, STORE_P=True, STATS=True, **common)),
        (M._bn_apply_kernel, common),
        (M._bwd_stats_kernel, dict(BLOCK_P=64, BLOCK_C=32, ACC_DT=blocks["ACC_DT"])),
        (M._bwd_dv_kernel, dict(**conv, **common)),
        (M._gemm_gx_kernel, blocks),
        (M._gemm_gw_kernel, blocks),
    ]


def main(full):
    configs = [("fp32", 3, 1, True, True, 1), ("fp16", 5, 2, False, True, 2),
               ("bf16", 3, 1, False, False, 0)]
    if full:
        configs += [("fp64", 3, 1, True, True, 1), ("fp32", 5, 1, True, True, 2),
                    ("bf16", 5, 2, False, True, 2)]
    n = 0
    for cfg in configs:
        for kernel, const in cases(*cfg):
            compiled = compile_kernel(kernel, cfg[0], const)
            assert compiled.asm.get("cubin"), (kernel.__name__, cfg)
            n += 1
    print(f"compiled {n} kernels for sm_90 with triton {triton.__version__}")


if __name__ == "__main__":
    main("all" in sys.argv[1:])
