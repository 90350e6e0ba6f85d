"""pytest-benchmark suite of ``emo_kernels.irmb_inference``: every distinct EMO-5M/EMO-1M iRMB
as the inference plan calls the op (``emo.inference.block_args`` of the eval model: BatchNorms
folded, LayerNorm, attention and squeeze-excite arguments as the block has them; random weights
in the model's shapes), forward only (the op has no autograd), each backend that ``explain``
says can run, and the torch reference (the composition of the two other ops).

    python -m pytest bench/bench_irmb_inference.py --benchmark-json=irmb.json
Settings: EMO_BENCH_* environment variables (bench/config.py, ``config``).
"""
import pytest

from bench.config import SHORT_DTYPE
from bench.suites import op_cases, run_op_row

OP = "irmb_inference"


@pytest.mark.parametrize("spec,uses,mode,dtype,layout,batch,provider", op_cases(OP))
def test_irmb_inference(benchmark, spec, uses, mode, dtype, layout, batch, provider):
    benchmark.group = f"{OP} {mode} {SHORT_DTYPE[dtype]} {layout} B{batch}"
    run_op_row(benchmark, OP, spec, uses, mode, dtype, layout, batch, provider)
