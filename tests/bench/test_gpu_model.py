"""bench/gpu_model.py, the static H200 cost model: its rows carry the keys and the "model, not a
measurement" marker, its numbers are positive and finite, and its SASS reader counts loop bodies
x trip counts."""
import json
import math
import os
import subprocess
import sys

import pytest

from bench import gpu_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_0:
        /*0010*/                   FFMA R2, R2, R3, R4 ;
.L_x_1:
        /*0020*/                   MUFU.EX2 R5, R5 ;
        /*0030*/                   HGMMA.64x32x16.F32.BF16 R24, gdesc[UR20], R24 ;
        /*0040*/                   LDG.E.128 R8, desc[UR4][R6.64] ;
        /*0050*/              @!P5 BRA `(.L_x_1) ;
        /*0060*/               @P6 BRA `(.L_x_0) ;
        /*0070*/                   EXIT ;
.L_x_2:
        /*0080*/                   BRA `(.L_x_2);
"""


def test_sass_reader_counts_loop_bodies_times_trips():
    n = gpu_model.count_sass(SASS, [3, 5])   # outer loop 3 trips, inner 5
    assert n["loops"] == 2 and not n["approx_trips"]   # the trailing self-branch is no loop
    assert n["fp32"] == 3 and n["mufu"] == 15
    assert n["dot_flops"] == 15 * 2 * 64 * 32 * 16
    assert n["ldst_bytes"] == 15 * 32 * 16
    assert n["issue"] == 1 + 3 * 2 + 15 * 4 + 1 + 1     # MOV, outer body, inner body, EXIT, BRA


@pytest.mark.slow
def test_json_rows_and_compiled_reader(tmp_path):
    pytest.importorskip("triton")
    env = dict(os.environ, PYTHONPATH=ROOT, TRITON_CACHE_DIR=str(tmp_path))
    env.pop("TRITON_INTERPRET", None)
    res = subprocess.run([sys.executable, "-m", "bench.gpu_model", "--json", "--kernels",
                          "--models", "emo_5m", "--dtypes", "bf16", "--modes", "infer"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    assert len(rows) == 1
    r = rows[0]
    for key in ("model", "batch", "dtype", "mode", "eager_ms", "fused_ms", "binding_bound"):
        assert key in r
    assert r["kind"] == "model, not a measurement"
    assert (r["model"], r["batch"], r["dtype"], r["mode"]) == ("emo_5m", 256, "bf16", "infer")
    assert r["binding_bound"] in gpu_model.BOUNDS
    for v in (r["eager_ms"], r["fused_ms"]):
        assert math.isfinite(v) and v > 0
    assert 3 <= r["eager_ms"] <= 40
    assert "D1" in r["note"] and "not built" in r["note"]
    # the compiled per-tap recompute kernel of a stage-3 attention block: two loops (taps,
    # input-channel chunks) found and matched, the dot on HGMMA, no spills
    ks = [k for k in r["kernels"]["fused"] if k["block"] == "stage3.1"
          and k["kernel"] == "_fwd_kernel"]
    assert ks and ks[0]["loops"] == 2 and not ks[0]["approx_trips"]
    assert ks[0]["trips"] == [25, 5] and ks[0]["hgmma"] and not ks[0]["spills"]
    assert ks[0]["regs"] and ks[0]["dot_gflop"] > 0
