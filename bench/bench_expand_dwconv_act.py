"""pytest-benchmark suite of ``emo_kernels.expand_dwconv_act``: every distinct EMO-5M/EMO-1M
block shape (read off the models), fwd (eval: BN folded) and fwd+bwd (train: BN batch
statistics), each backend that ``explain`` says can run, and the torch reference.

    python -m pytest bench/bench_expand_dwconv_act.py --benchmark-json=dw.json
Settings: EMO_BENCH_* environment variables (bench/config.py, ``config``).
"""
import pytest

from bench.config import SHORT_DTYPE
from bench.suites import op_cases, run_op_row

OP = "expand_dwconv_act"


@pytest.mark.parametrize("spec,uses,mode,dtype,layout,batch,provider", op_cases(OP))
def test_expand_dwconv_act(benchmark, spec, uses, mode, dtype, layout, batch, provider):
    benchmark.group = f"{OP} {mode} {SHORT_DTYPE[dtype]} {layout} B{batch}"
    run_op_row(benchmark, OP, spec, uses, mode, dtype, layout, batch, provider)
