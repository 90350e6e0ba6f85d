"""bench/gpu_model.py, the static H200 cost model: its rows carry the keys and the "model, not a
measurement" marker, its numbers are positive and finite, its SASS reader counts loop bodies x
trip counts, and the fused infer row costs the D1 kernels an InferencePlan launches, compiled
for sm_90 as launched."""
import json
import math

import pytest
import torch

from bench import gpu_model

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


SASS_PIPELINED = """
        /*0000*/                   LDGSTS.E.BYPASS.128 [R2], desc[UR4][R4.64] ;
.L_x_0:
        /*0010*/                   LDGSTS.E.BYPASS.128 [R2+0x400], desc[UR4][R4.64+0x40], P1 ;
        /*0020*/               @P0 LDGSTS.E.BYPASS.128 [R3], desc[UR4][R6.64] ;
        /*0030*/               @P2 LDG.E.128 R8, desc[UR4][R6.64] ;
        /*0040*/              @!P5 BRA `(.L_x_0) ;
        /*0050*/                   EXIT ;
"""


def test_sass_reader_pipelined_copies_and_guarded_bytes():
    """A software-pipelined loop's async copies fetch trips - (stages - 1) times in the body (the
    prologue fetched the rest); guarded (@P) loads are also counted apart; HGMMA/HMMA per
    num_warps."""
    n = gpu_model.count_sass(SASS_PIPELINED, [10], warps=8, stages=3)
    lane = 32 * 16
    assert n["ldst_bytes"] == lane * (1 + 8 + 8 + 10)      # prologue, 2 copies x 8, LDG x 10
    assert n["ldst_guarded_bytes"] == lane * (8 + 10)
    assert n["issue"] == 1 + 10 * 4 + 1
    assert gpu_model.count_sass(SASS_PIPELINED, [2], stages=3)["ldst_bytes"] == lane * (1 + 2)
    assert gpu_model.count_sass(SASS, [3, 5], warps=8)["dot_flops"] == 2 * 15 * 2 * 64 * 32 * 16


def test_fit_trips_to_the_loops_the_compiler_kept():
    assert gpu_model._fit_trips([2, 2, 2], 3) == [2, 2, 2]
    assert gpu_model._fit_trips([1, 1, 3], 1) == [3]        # one-trip loops are folded first
    assert gpu_model._fit_trips([3, 3, 5, 3], 3) == [3, 3, 5]  # then the last ones (unrolled)
    assert gpu_model._fit_trips([5], 0) == []


def _d1_ops(model="emo_1m", batch=256):
    return gpu_model.recorded_plan(model, batch, "bf16")


def test_plan_records_the_d1_launches_per_block():
    """The fused infer row records what an InferencePlan runs (meta device, no compute): the
    stem conv; per block A0 (attention), K_A (expansion), K_B -- the stem block K_B STORE_Z,
    its squeeze-excite torch ops, K_A projecting z with HAS_XSCALE --; the head; launches as the launchers pass
    them (tiles() of a GPU: num_warps, blocks; grid), no weight preparation op."""
    import emo
    from emo_kernels.backends.triton import irmb_inference as d1
    ops = _d1_ops()
    assert ops[0]["block"] == "stage0.0" and ops[0]["op"] == "convolution"
    assert ops[-1]["block"] == "head"
    assert {o["op"] for o in ops if o["block"] == "head"} == {"native_layer_norm", "mean", "addmm"}
    kernels = {}
    for o in ops:
        if "d1" in o:
            kernels.setdefault(o["block"], []).append(o["d1"]["kernel"])
    torch_ops = {o["op"] for o in ops if "d1" not in o and o["block"] not in ("stage0.0", "head")}
    assert torch_ops <= {"_to_copy", "mean", "addmm", "silu", "sigmoid", "mul"}, torch_ops
    assert kernels["stage0.1"] == ["_dwproj_kernel", "_expand_kernel"]
    model = emo.create_model("emo_1m", fused=True)
    names = [n for n, m in model.named_modules() if isinstance(m, emo.iRMB)]
    assert sorted(kernels) == sorted(names)
    for n, m in model.named_modules():
        if isinstance(m, emo.iRMB) and n != "stage0.1":
            want = (["_ln_qk_attn_kernel"] if m.attn else []) + (
                ["_expand_kernel"] if not isinstance(m.v, torch.nn.Identity) else []) + [
                "_dwproj_kernel"]
            assert kernels[n] == want, (n, kernels[n])
    stem = [o["d1"] for o in ops if o["block"] == "stage0.1" and "d1" in o]
    assert stem[0]["args"]["STORE_Z"] and stem[1]["args"]["HAS_XSCALE"]
    # the launch of stage3.1's K_A: M = B*14*14 pixels, tiles() as on a GPU
    ka = next(o["d1"] for o in ops if o["block"] == "stage3.1" and "d1" in o
              and o["d1"]["kernel"] == "_expand_kernel")
    a = ka["args"]
    with gpu_model._compiled_mode():
        t = d1.tiles("expand", m=a["M"], cin=a["CIN"], cmid=a["CMID"])
    assert a["M"] == 256 * 14 * 14 and {k: a[k] for k in t} == t
    assert ka["grid"] == (-(-a["CMID"] // t["BLOCK_N"]), -(-a["M"] // t["BLOCK_M"]))
    assert a["NATIVE_DOT"] and a["x_ptr"].dtype == torch.bfloat16
    assert "M" not in ka["constexprs"] and "CIN" in ka["constexprs"]


def test_plan_records_emo2_blocks_and_costs_them():
    """EMOv2-5M's GPU inference plan, recorded: the three stem layers in torch; per hybrid
    block K_A twice (qk, v: LayerNorm prologue), window_attention's forward kernel once per
    partition (strided, then contiguous adding into it), K_B; the plain blocks K_A, K_B. The
    window attention launch is costed from its compiled sm_90 code (HGMMA, no spills) with its
    value heads (128 channels); the row is a model estimate, fused and eager both finite."""
    pytest.importorskip("triton")
    import emo
    ops = _d1_ops("emo2_5m")
    assert [o["op"] for o in ops if o["block"] == "stage0.0"][:2] == ["convolution", "silu"]
    kernels = {}
    for o in ops:
        if "d1" in o:
            kernels.setdefault(o["block"], []).append(o["d1"])
    model = emo.create_model("emo2_5m")
    for n, m in model.named_modules():
        if isinstance(m, emo.iiRMB):
            names = [la["kernel"] for la in kernels[n]]
            if m.hybrid:
                assert names == ["_expand_kernel", "_expand_kernel", "_window_attention_fwd",
                                 "_window_attention_fwd", "_dwproj_kernel"], (n, names)
            else:
                assert names == ["_expand_kernel", "_dwproj_kernel"], (n, names)
    remote, close = (la for la in kernels["stage3.1"] if la["kernel"] == "_window_attention_fwd")
    assert not remote["args"]["CLOSE"] and close["args"]["CLOSE"] and close["args"]["ACCUM"]
    assert remote["args"]["DV"] == 128 and remote["args"]["HAS_VPAD"]
    gpu_model.precompile([gpu_model._spec_key("wa", close["kernel"], "bf16",
                                              *gpu_model._d1_launch(close)[:4])])
    k = gpu_model.d1_kernel("stage3.1", close, "bf16")
    assert k.detail["hgmma"] and not k.detail["spills"] and k.dot_flops > 0
    (row,) = [gpu_model.row("emo2_5m", 256, "bf16", "infer")]
    assert math.isfinite(row["fused_ms"]) and math.isfinite(row["eager_ms"]) and row["fused_ms"] > 0


def test_d1_kernels_costed_from_compiled_sm90_code():
    """Four D1 launches of EMO-1M compiled for sm_90 as launched (in worker processes): loops
    matched to the source's trip counts, HGMMA dots, num_warps and programs of the launch, DRAM
    bytes = each tensor argument once (K_A: e*(Cin + Cmid) per pixel + weights)."""
    pytest.importorskip("triton")
    ops = _d1_ops()
    pick = {("stage3.1", "_ln_qk_attn_kernel"), ("stage3.1", "_expand_kernel"),
            ("stage3.0", "_expand_kernel"), ("stage2.1", "_dwproj_kernel")}
    launches = {(o["block"], o["d1"]["kernel"]): o["d1"] for o in ops
                if "d1" in o and (o["block"], o["d1"]["kernel"]) in pick}
    assert set(launches) == pick
    gpu_model.precompile([gpu_model._spec_key("d1", la["kernel"], "bf16",
                                              *gpu_model._d1_launch(la)[:4])
                          for la in launches.values()])
    ks = {key: gpu_model.d1_kernel(key[0], la, "bf16") for key, la in launches.items()}
    for (block, name), k in ks.items():
        d, a = k.detail, launches[(block, name)]["args"]
        assert d["kernel"] == name and d["regs"] and d["hgmma"] and not d["approx_trips"]
        assert d["warps"] == a["num_warps"] and d["programs"] == math.prod(
            launches[(block, name)]["grid"])
        assert k.dot_flops > 0 and k.issue > 0 and k.l2 > 0 and all(
            math.isfinite(v) and v >= 0 for v in k.bounds().values())
    attn = ks[("stage3.1", "_ln_qk_attn_kernel")].detail
    c = launches[("stage3.1", "_ln_qk_attn_kernel")]["args"]
    nk = -(-c["C"] // c["BLOCK_K"])
    assert attn["source_trips"] == [nk, nk, c["NH"], nk] and attn["loops"] == len(attn["trips"])
    ln = ks[("stage3.0", "_expand_kernel")].detail
    assert ln["const"]["LN"] == "True" and len(ln["source_trips"]) == 3
    c = launches[("stage3.0", "_expand_kernel")]["args"]
    assert ks[("stage3.0", "_expand_kernel")].dram == 2 * (
        c["M"] * (c["CIN"] + c["CMID"]) + c["CIN"] * c["CMID"] + c["CMID"] + 2 * c["CIN"]) + 3 * 4
    kb = ks[("stage2.1", "_dwproj_kernel")].detail
    c = launches[("stage2.1", "_dwproj_kernel")]["args"]
    # the Cmid chunks, and in each the loop over the kernel rows (a row's taps unrolled)
    assert kb["trips"] == [-(-c["CMID"] // c["BLOCK_C"]), c["K"]] and kb["loops"] == 2


def test_json_rows(monkeypatch, capsys):
    """``--json`` prints one row per (model, batch, dtype, mode) with the issue's keys, marked a
    model; ``--kernels`` adds the per-kernel detail; the EMO-5M b256 infer row carries the
    target check. Compiling is stubbed here (one canned SASS) -- the test above compiles."""
    canned = dict(sass=SASS, regs=32, local=0, stack=0, shared=0, spills=False)
    monkeypatch.setattr(gpu_model, "precompile", lambda keys: None)
    monkeypatch.setattr(gpu_model, "_compile", lambda key: canned)
    monkeypatch.setattr(gpu_model, "_ARTS", {})
    gpu_model.main(["--json", "--kernels", "--models", "emo_5m", "--dtypes", "bf16",
                    "--modes", "infer"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(rows) == 1
    r = rows[0]
    for key in ("model", "batch", "dtype", "mode", "eager_ms", "fused_ms", "binding_bound"):
        assert key in r
    assert r["kind"] == "model, not a measurement"
    assert (r["model"], r["batch"], r["dtype"], r["mode"]) == ("emo_5m", 256, "bf16", "infer")
    assert r["binding_bound"] in gpu_model.BOUNDS
    for v in (r["eager_ms"], r["fused_ms"], r["fused_ms_guarded_idle"]):
        assert math.isfinite(v) and v > 0
    assert 3 <= r["eager_ms"] <= 40
    assert "D1" in r["note"] and "CUDA graph" in r["note"]
    assert set(r["target"]) == {"fused_ms_max", "eager_over_fused_min", "met_in_model"}
    assert isinstance(r["warnings"], list) and "stage3.1" in r["blocks"]
    names = {k["kernel"] for k in r["kernels"]["fused"]}
    assert names == {"_expand_kernel", "_dwproj_kernel", "_ln_qk_attn_kernel"}
    assert r["kernels"]["fused_top"] and r["kernels"]["eager_top"]
    # --only: a partial row of those blocks (what gpu_check.sh's dry run asks for)
    gpu_model.main(["--json", "--blocks", "--models", "emo_5m", "--dtypes", "bf16", "--modes",
                    "infer", "--only", "stage3.1,head"])
    part = json.loads(capsys.readouterr().out)
    assert part["only_blocks"] == ["head", "stage3.1"] and "target" not in part
    assert set(part["blocks"]) == {"stage3.1", "head"} and part["fused_ms"] < r["fused_ms"]
