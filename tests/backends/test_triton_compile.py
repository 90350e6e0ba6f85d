"""Every Triton kernel compiles for sm_80 and sm_90 in every dtype (fp64 included), without a
GPU: the interpreter never lowers the kernels, so GPU-only lowering errors (constexpr misuse,
dot shapes, triton 3.6's fp64 ``tl.dot`` accumulator rule) must fail CI here. The compiles
run in a subprocess (tests/backends/compile_kernels.py) with no TRITON_INTERPRET and Triton's bundled
ptxas; CI runs this file on both software stacks."""
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


@pytest.mark.slow
def test_every_kernel_compiles_for_sm80_and_sm90(tmp_path):
    triton = pytest.importorskip("triton")
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path), PYTHONPATH=ROOT)
    env.pop("TRITON_INTERPRET", None)
    res = subprocess.run([sys.executable, os.path.join(HERE, "compile_kernels.py"),
                          "--archs", "80,90", "--dtypes", "fp16,bf16,fp32,fp64"],
                         env=env, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    # 2 archs x 4 dtypes x (8 expand_dwconv_act + 8 window_attention kernels (EMO's form with
    # and without k_pad, EMOv2's with 70- and 128-channel value heads) + 9 irmb_inference
    # launches: EMO-5M's stem block 2, stage-1 downsampling 2, stage-3 first 2, attention 3)
    assert f"compiled 200 kernels for sm_80,sm_90 (fp16,bf16,fp32,fp64) with triton " \
           f"{triton.__version__}" in res.stdout
