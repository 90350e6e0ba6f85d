"""pytest-benchmark suite of ``emo_kernels.expand_dwconv_act``: every distinct EMO-5M/EMO-1M
block shape (read off the models), fwd (eval: BN folded) and fwd+bwd (train: BN batch
statistics), each backend that ``explain`` says can run, and the torch reference.

    python -m pytest bench/bench_expand_dwconv_act.py --benchmark-json=dw.json
Settings: EMO_BENCH_* environment variables (bench/common.py, ``config``).
"""
import pytest

from bench import common

OP = "expand_dwconv_act"


@pytest.mark.parametrize("spec,uses,mode,dtype,layout,batch,provider", common.op_cases(OP))
def test_expand_dwconv_act(benchmark, spec, uses, mode, dtype, layout, batch, provider):
    benchmark.group = f"{OP} {mode} {common.SHORT_DTYPE[dtype]} {layout} B{batch}"
    common.run_op_row(benchmark, OP, spec, uses, mode, dtype, layout, batch, provider)
