"""The compiled code of the irmb_inference kernels as EMO-5M launches them (224 x 224, batch 256,
bf16), and of the backward GEMMs of its training step (expand_dwconv_act's ``_gemm_gx`` and
split-K ``_gemm_gw``, issue #15), for sm_90 and sm_80, without a GPU.
tests/backends/kernel_artifacts.py (in a subprocess, no TRITON_INTERPRET, Triton's bundled
ptxas / nvdisasm / cuobjdump; CI runs this file on both software stacks) records every
distinct launch from the real launchers -- kernel, constexprs, the launch-time integer and
pointer specialization, the tiles and num_warps of ``irmb_inference.tiles`` and of the
backward's GPU tiles -- and reads its cubin. Each must compile to code that

* spills nothing: no LDL/STL in the SASS, no local memory;
* fits the arch's shared memory per block (a launch asking for more fails on the device);
* runs its dots on the tensor cores: HGMMA (wgmma) on sm_90 with no HMMA left, HMMA on sm_80;
* (the irmb_inference kernels, NHWC throughout) moves the channel dimension in 128-bit
  accesses where every channel count is a multiple of 8 (16 bytes of bf16): 128-bit loads
  (LDG.E.128, or LDGSTS .128 where the pipeliner stages a dot operand through shared memory)
  and stores present, every store 128-bit, and no 8- or 16-bit access anywhere (Triton's
  scalar fallback when it cannot prove 16-byte alignment). The remaining 32-bit loads are the
  per-program scalars and the bias vectors in the dot accumulator's layout.
"""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
ARCHS = (90, 80)
SHARED_MAX = {90: 227 * 1024, 80: 163 * 1024}  # opt-in shared memory per block (H100/H200, A100)
CHANNELS = ("CIN", "CMID", "COUT", "C")
D1_KERNELS = {"_expand_kernel", "_dwproj_kernel", "_ln_qk_attn_kernel"}
TRAIN_GEMMS = {"_gemm_gx_kernel", "_gemm_gw_kernel"}
KERNELS = D1_KERNELS | TRAIN_GEMMS


@pytest.fixture(scope="module")
def launches(tmp_path_factory):
    pytest.importorskip("triton")
    tmp = tmp_path_factory.mktemp("artifacts")
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp / "cache"), PYTHONPATH=ROOT)
    env.pop("TRITON_INTERPRET", None)
    out = tmp / "artifacts.json"
    res = subprocess.run([sys.executable, os.path.join(HERE, "kernel_artifacts.py"), "--archs",
                          ",".join(map(str, ARCHS)), "--json", str(out)],
                         env=env, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    print(res.stdout)
    with open(out) as f:
        return json.load(f)


def _name(r):
    c = r["const"]
    shape = ",".join(f"{k}={c[k]}" for k in (*CHANNELS, "K", "STRIDE") if k in c)
    return f"sm_{r['arch']} {r['kernel']}({shape}) of iRMB {r['block']}"


def _check(launches, failure):
    bad = [f"{_name(r)}: {msg}" for r in launches for msg in [failure(r)] if msg]
    assert not bad, "\n".join(bad)


@pytest.mark.slow
def test_every_launch_is_read_as_launched(launches):
    """Every kernel kind and every distinct launch of EMO-5M, on both archs, specialized."""
    assert {r["kernel"] for r in launches} == KERNELS
    per_arch = {a: sorted(json.dumps([r["kernel"], r["block"], r["const"]], sort_keys=True)
                          for r in launches if r["arch"] == a) for a in ARCHS}
    assert per_arch[90] == per_arch[80] and len(per_arch[90]) >= 20, per_arch
    _check(launches, lambda r: None if r["aligned_ptrs"] else "a pointer is not 16-byte aligned")
    # stage 4 (7 x 7 maps) has one window per image along each axis: those ints are 1
    assert any(r["ints"].get("N1") == "=1" for r in launches)
    assert any(r["ints"].get("M") == "D" for r in launches)


@pytest.mark.slow
def test_no_spills(launches):
    _check(launches, lambda r: (r["spills"] or r["local"]) and
           f"{r['spills']} LDL/STL, {r['local']} B local memory ({r['regs']} registers)")


@pytest.mark.slow
def test_shared_memory_fits(launches):
    _check(launches, lambda r: r["shared"] > SHARED_MAX[r["arch"]] and
           f"{r['shared']} B of shared memory > {SHARED_MAX[r['arch']]}")


def _dots(r):
    if r["const"].get("STORE_Z"):  # the squeeze-excite's first pass has no dot
        return None
    if r["arch"] == 90 and (not r["hgmma"] or r["hmma"]):
        return f"HGMMA x{r['hgmma']}, HMMA x{r['hmma']}: a dot is not on wgmma"
    if r["arch"] == 80 and not r["hmma"]:
        return "no HMMA: the dots are not on the tensor cores"
    return None


@pytest.mark.slow
def test_dots_on_tensor_cores(launches):
    _check(launches, _dots)


def _vector_access(r):
    if r["kernel"] not in D1_KERNELS:  # the GEMMs read gu (B, Cmid, H*W) along pixels
        return None
    if any(r["const"][k] % 8 for k in CHANNELS if k in r["const"]):
        return None  # (no EMO-5M launch: its channel counts are all multiples of 8)
    mem = r["memory"]
    loads128 = [op for op in mem if op.startswith("LDG") and op.endswith(".128")]
    stores = [op for op in mem if op.startswith("STG")]
    narrow = [op for op in mem if any(w in op.split(".") for w in ("U8", "S8", "U16", "S16"))]
    if not loads128 or stores != ["STG.E.128"] or narrow:
        return f"global accesses {mem}: want 128-bit loads, only STG.E.128, no 8/16-bit access"
    return None


@pytest.mark.slow
def test_channel_accesses_are_128_bit(launches):
    _check(launches, _vector_access)
