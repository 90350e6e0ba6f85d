"""The triton backend of irmb_inference (issue #14's D1 kernels: expansion GEMM, depthwise +
projection, LayerNorm + qk + window attention) against the float64 reference, in the Triton
interpreter on CPU (on a GPU machine, on the GPU): every distinct block configuration of
EMO-1M/2M/5M/6M on small and odd maps, fp64 / fp32 / fp16 / bf16 (the interpreter upcasts the
16-bit dots to fp32: numpy has no bf16), NaN-poisoned outputs; small tiles that run every loop
more than once with ragged masks; the chain runner; EMOv2's hybrid attention blocks; whole
EMO-1M / EMO-2M / EMOv2-1M models."""
import pytest
import torch

import emo
import emo_kernels
from conftest import backend_device, model_pair, rel_err
from emo_kernels.reference import irmb_inference_ref
from emo_kernels.testing import TOLERANCE, poison_empty
from test_irmb_inference import _args, _cast

# Every distinct block configuration of EMO-1M/2M/5M/6M (emo.inference.block_args of each
# block): (C, Cmid, Cout, k, stride, act, skip, LayerNorm, head_dim (-1: squeeze-excite)), each
# with a batch and an odd map: a pixel, smaller than a window, padded windows (13 -> 14,
# 17 -> 21), not a multiple of 7. The widest blocks get the smallest maps (interpreter time).
EMO_BLOCKS = [
    ((24, 24, 24, 3, 1, "none", False, False, -1), 2, (13, 13)),    # stem block (all variants)
    ((24, 96, 32, 3, 2, "silu", False, False, 0), 2, (9, 17)),      # EMO-1M / 2M
    ((32, 64, 32, 3, 1, "silu", True, False, 0), 2, (10, 12)),
    ((32, 160, 48, 3, 2, "silu", False, False, 0), 1, (13, 13)),
    ((48, 120, 48, 3, 1, "silu", True, False, 0), 1, (9, 17)),
    ((48, 288, 80, 5, 2, "gelu", False, True, 0), 2, (10, 12)),
    ((80, 240, 80, 5, 1, "gelu", True, True, 20), 2, (13, 13)),
    ((80, 560, 168, 5, 2, "gelu", False, True, 0), 1, (3, 5)),
    ((168, 588, 168, 5, 1, "gelu", True, True, 21), 1, (9, 17)),
    ((48, 288, 120, 5, 2, "gelu", False, True, 0), 2, (1, 1)),
    ((120, 360, 120, 5, 1, "gelu", True, True, 20), 1, (9, 10)),
    ((120, 840, 200, 5, 2, "gelu", False, True, 0), 1, (3, 5)),
    ((200, 700, 200, 5, 1, "gelu", True, True, 20), 2, (3, 5)),
    ((24, 96, 48, 3, 2, "silu", False, False, 0), 1, (10, 12)),     # EMO-5M / 6M
    ((48, 96, 48, 3, 1, "silu", True, False, 0), 1, (13, 13)),
    ((48, 288, 72, 3, 2, "silu", False, False, 0), 2, (9, 17)),
    ((72, 216, 72, 3, 1, "silu", True, False, 0), 2, (10, 12)),
    ((72, 576, 160, 5, 2, "gelu", False, True, 0), 1, (13, 13)),
    ((160, 640, 160, 5, 1, "gelu", True, True, 32), 1, (10, 12)),
    ((160, 1280, 288, 5, 2, "gelu", False, True, 0), 1, (3, 5)),
    ((288, 1152, 288, 5, 1, "gelu", True, True, 32), 2, (1, 1)),
    ((160, 640, 160, 5, 1, "gelu", True, True, 20), 1, (8, 9)),
    ((160, 1600, 320, 5, 2, "gelu", False, True, 0), 1, (1, 1)),
    ((320, 1600, 320, 5, 1, "gelu", True, True, 32), 1, (3, 5)),
]


def _case(i):
    (C, Cm, Co, k, s, act, skip, ln, hd), B, (H, W) = EMO_BLOCKS[i]
    return (B, C, Cm, Co, H, W, k, s, act, skip, ln, hd)


def _run(cfg, dtype, layout=torch.channels_last):
    args, kw = _args(cfg)
    ref = irmb_inference_ref(*args, **kw)
    args, kw = _cast(args, kw, dtype)
    args[0] = args[0].contiguous(memory_format=layout)
    with emo_kernels.use_backend("triton"), poison_empty(), torch.no_grad():
        out = emo_kernels.irmb_inference(*args, **kw)
    assert out.shape == ref.shape and out.dtype == dtype
    assert out.is_contiguous(memory_format=layout)
    assert torch.isfinite(out).all(), "an output element was not written (NaN poison)"
    return rel_err(out, ref)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16],
                         ids=str)
@pytest.mark.parametrize("i", range(len(EMO_BLOCKS)),
                         ids=[f"C{c[0]}-mid{c[1]}-out{c[2]}-k{c[3]}-s{c[4]}-{c[5]}"
                              f"{'-skip' if c[6] else ''}{'-ln' if c[7] else ''}"
                              f"{'-attn%d' % c[8] if c[8] > 0 else ''}{'-se' if c[8] < 0 else ''}"
                              f"-B{b}-{h}x{w}" for c, b, (h, w) in EMO_BLOCKS])
def test_emo_block(i, dtype):
    backend_device("triton")
    assert _run(_case(i), dtype) <= TOLERANCE[dtype]


# EMOv2's hybrid attention blocks (attn_pre=False, partition="hybrid": emo.inference.block_args
# of EMOv2-1M/5M's stage-3/4 blocks, window 7): (C, Cmid, head_dim), batch, map -- padded in
# both partitions, smaller than a window; value heads 60 / 70 (EMOv2-1M) and 128 (EMOv2-5M).
EMO2_BLOCKS = [((80, 240, 20), 2, (9, 11)), ((180, 630, 20), 1, (3, 5)),
               ((160, 640, 32), 1, (8, 9))]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("i", range(len(EMO2_BLOCKS)),
                         ids=[f"C{c}-mid{m}-d{d}-B{b}-{h}x{w}" for (c, m, d), b, (h, w)
                              in EMO2_BLOCKS])
def test_emo2_hybrid_block(i, dtype):
    backend_device("triton")
    (C, Cm, d), B, (H, W) = EMO2_BLOCKS[i]
    args, kw = _args((B, C, Cm, C, H, W, 5, 1, "gelu", True, True, d))
    kw.update(partition="hybrid", attn_pre=False)
    ref = irmb_inference_ref(*args, **kw)
    args, kw = _cast(args, kw, dtype)
    args[0] = args[0].contiguous(memory_format=torch.channels_last)
    with emo_kernels.use_backend("triton"), emo_kernels.record_dispatch() as log, \
            poison_empty(), torch.no_grad():
        out = emo_kernels.irmb_inference(*args, **kw)
    assert log == [("irmb_inference", "triton")]
    assert out.shape == ref.shape and out.dtype == dtype and torch.isfinite(out).all()
    assert rel_err(out, ref) <= TOLERANCE[dtype]


@pytest.fixture
def small_tiles(monkeypatch):
    """16-wide tiles everywhere: every channel / pixel / head loop runs several times with a
    ragged last tile; output columns split as on a GPU (a second accumulator for the rest,
    or a grid of column tiles)."""
    from emo_kernels.backends.triton import irmb_inference as mod

    def tiles(kind, **shape):
        if kind == "expand":
            return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, num_warps=4)
        if kind == "attn":
            return dict(BLOCK_D=max(16, 1 << (shape["d"] - 1).bit_length()), BLOCK_K=16,
                        num_warps=4)
        n, n2 = (16, 0) if shape.get("store_z") else mod._split_cols(shape["nout"], 16)
        return dict(BLOCK_P=16, BLOCK_C=16, BLOCK_N=n, BLOCK_N2=n2, num_warps=4)
    monkeypatch.setattr(mod, "tiles", tiles)


@pytest.mark.parametrize("cfg", [
    (1, 40, 72, 40, 9, 10, 5, 1, "gelu", True, True, 20),   # attention: 2 heads, 3 chunks
    (1, 24, 40, 36, 13, 13, 3, 2, "silu", False, False, 0),  # stride 2, 3 column tiles
    (2, 20, 50, 20, 10, 12, 5, 1, "gelu", True, True, 0),    # LN over 2 chunks, 16 + 16 cols
    (2, 24, 24, 24, 9, 7, 3, 1, "none", False, False, -1),   # squeeze-excite
], ids=["attn", "stride2", "ln", "se"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_small_tiles(small_tiles, cfg, dtype):
    backend_device("triton")
    assert _run(cfg, dtype) <= TOLERANCE[dtype]


def test_nchw_input_gives_nchw_output():
    backend_device("triton")
    assert _run(_case(6), torch.float32, torch.contiguous_format) <= 1e-5


def test_chain_runner():
    """IRMBChain on the triton backend: the whole chain through its runner (prepared once,
    re-prepared after an in-place weight edit) equals the blocks' references."""
    backend_device("triton")
    cfgs = [(1, 16, 40, 16, 9, 11, 3, 1, "silu", True, False, 0),
            (1, 16, 48, 24, 9, 11, 3, 2, "silu", False, False, 0),
            (1, 24, 48, 24, 5, 6, 5, 1, "gelu", True, True, 12)]
    blocks, x = [], None
    for cfg in cfgs:
        args, kw = _args(cfg)
        x = args[0] if x is None else x
        blocks.append((tuple(args[1:]), kw))
    chain = emo_kernels.IRMBChain(blocks, 16, torch.float64, "cpu")

    def ref():
        y, outs = x, []
        for a, kw in blocks:
            y = irmb_inference_ref(y, *a, **kw)
            outs.append(y)
        return outs
    with emo_kernels.use_backend("triton"), emo_kernels.record_dispatch() as log, \
            poison_empty(), torch.no_grad():
        outs = chain(x, outputs=[0, 2])
        assert ("irmb_inference chain", "triton") in log
        want = ref()
        assert rel_err(outs[0], want[0]) <= 1e-10 and rel_err(outs[1], want[2]) <= 1e-10
        blocks[2][0][4].mul_(2)  # w_proj of the last block, in place: the chain prepares again
        assert rel_err(chain(x)[0], ref()[2]) <= 1e-10


@pytest.mark.parametrize("name,size", [("emo_1m", (64, 64)), ("emo_1m", (96, 160)),
                                       ("emo_2m", (64, 64)), ("emo_2m", (96, 160)),
                                       ("emo2_1m", (64, 64)), ("emo2_1m", (96, 160))],
                         ids=lambda v: v if isinstance(v, str) else "%dx%d" % v)
def test_whole_model(name, size):
    """An InferencePlan run on the triton backend (stem conv, then the chain runner) against
    fused=False, eval, fp32 -- and both against the float64 model."""
    backend_device("triton")
    ref, _ = model_pair(name)
    ref.eval()
    x = torch.randn(1, 3, *size)
    plan = emo.prepare_inference(ref)
    with torch.no_grad():
        want = ref.double()(x.double())
        eager = ref.float()(x)
    with emo_kernels.use_backend("triton"), poison_empty():
        got = plan(x)
    assert torch.isfinite(got).all()
    assert rel_err(got, want) <= TOLERANCE[torch.float32]
    assert rel_err(got, eager) <= TOLERANCE[torch.float32]
