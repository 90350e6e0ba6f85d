"""pytest-benchmark suite of ``emo_kernels.window_attention``: every distinct EMO-5M/EMO-1M
attention shape (C, head_dim, H, W read off the models; q and k are channel halves of one qk
map as in the model), fwd and fwd+bwd, each backend that ``explain`` says can run, and the
torch reference.

    python -m pytest bench/bench_window_attention.py --benchmark-json=attn.json
Settings: EMO_BENCH_* environment variables (bench/config.py, ``config``).
"""
import pytest

from bench.config import SHORT_DTYPE
from bench.suites import op_cases, run_op_row

OP = "window_attention"


@pytest.mark.parametrize("spec,uses,mode,dtype,layout,batch,provider", op_cases(OP))
def test_window_attention(benchmark, spec, uses, mode, dtype, layout, batch, provider):
    benchmark.group = f"{OP} {mode} {SHORT_DTYPE[dtype]} {layout} B{batch}"
    run_op_row(benchmark, OP, spec, uses, mode, dtype, layout, batch, provider)
