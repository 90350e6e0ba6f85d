"""The irmb_inference op (one whole iRMB forward for inference): its cpu backend (one C++ call)
and its torch backend (composition of the two public ops) against the pure reference, in
float32 and float64, over every block form of EMO and odd map sizes; argument errors."""
import threading

import pytest
import torch

import emo_kernels
from conftest import backend_device, rel_err
from emo_kernels.backends import cpu as cpu_backend
from emo_kernels.reference import irmb_inference_ref
from emo_kernels.testing import TOLERANCE, poison_cpu_outputs, poison_empty


# (B, C, Cmid, Cout, H, W, k, stride, act, skip, ln, attn head_dim or 0)
CFGS = [
    (2, 16, 40, 16, 9, 11, 3, 1, "silu", True, False, 0),    # stage 1-2 block (BN folded)
    (1, 16, 48, 24, 9, 11, 3, 2, "silu", False, False, 0),   # downsampling block
    (2, 20, 60, 20, 8, 8, 5, 1, "gelu", True, True, 0),      # stage 3-4 first block: LN, no attn
    (2, 40, 80, 40, 8, 10, 5, 1, "gelu", True, True, 20),    # attention block, padded windows
    (1, 42, 84, 42, 3, 5, 5, 1, "gelu", True, True, 21),     # attention, map smaller than a window
    (1, 32, 64, 32, 14, 14, 5, 1, "gelu", True, True, 16),   # attention, two strided windows
    (1, 24, 24, 24, 7, 9, 3, 1, "none", False, False, 0),    # identity expansion
    (2, 24, 24, 24, 9, 7, 3, 1, "none", False, False, -1),   # the stem block: squeeze-excite
]
IDS = [f"B{c[0]}-C{c[1]}-mid{c[2]}-out{c[3]}-{c[4]}x{c[5]}-k{c[6]}-s{c[7]}-{c[8]}"
       f"{'-skip' if c[9] else ''}{'-ln' if c[10] else ''}{f'-attn{c[11]}' if c[11] > 0 else ''}"
       f"{'-se' if c[11] < 0 else ''}"
       for c in CFGS]


def _args(cfg):
    B, C, Cm, Co, H, W, k, s, act, skip, ln, hd = cfg
    g = torch.Generator().manual_seed(5)
    r = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    x = r(B, C, H, W)
    if act == "none":
        Cm, we, be = C, None, None
    else:
        we, be = r(Cm, C) / C ** 0.5, r(Cm)
    args = [x, we, be, r(Cm, 1, k, k) / k, r(Cm), r(Co, Cm) / Cm ** 0.5]
    kw = dict(act=act, stride=s, skip=skip)
    if ln:
        kw.update(ln_weight=1 + 0.1 * r(C), ln_bias=0.1 * r(C))
    if hd > 0:
        kw.update(w_qk=r(2 * C, C) / C ** 0.5, b_qk=r(2 * C), head_dim=hd, window_size=7)
    if hd < 0:  # squeeze-excite with reduction 8 -> 3 channels... here Cmid -> Cmid // 2
        R = Cm // 2
        kw.update(se_reduce_weight=r(R, Cm, 1, 1) / Cm ** 0.5, se_reduce_bias=r(R),
                  se_expand_weight=r(Cm, R, 1, 1) / R ** 0.5, se_expand_bias=r(Cm), se_act="silu")
    return args, kw


def _cast(args, kw, dtype):
    c = lambda t: t.to(dtype) if isinstance(t, torch.Tensor) else t  # noqa: E731
    return [c(a) for a in args], {k: c(v) for k, v in kw.items()}


@pytest.fixture(params=[1, 2], ids=["t1", "t2"])
def threads(request):
    """1 thread, and 2 (the cpu backend splits small GEMMs and every phase between threads)."""
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(old)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("cfg", CFGS, ids=IDS)
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_irmb_inference(cfg, dtype, backend, threads):
    backend_device(backend)  # a missing cpu build fails, unless deliberately skipped
    args, kw = _args(cfg)
    ref = irmb_inference_ref(*args, **kw)
    args, kw = _cast(args, kw, dtype)
    args[0] = args[0].contiguous(memory_format=torch.channels_last)
    with emo_kernels.use_backend(backend), poison_empty(), poison_cpu_outputs(), torch.no_grad():
        out = emo_kernels.irmb_inference(*args, **kw)
    assert out.shape == ref.shape and out.dtype == dtype and torch.isfinite(out).all()
    assert rel_err(out, ref) <= TOLERANCE[dtype]


def test_reference_matches_model_stem_block():
    """The reference's squeeze-excite path is EMO's stem block (eval)."""
    import emo
    from emo.layers import fold_bn
    torch.manual_seed(0)
    blk = emo.emo_1m().double().eval().stage0[1]
    x = torch.randn(2, 24, 9, 12, dtype=torch.float64)
    w_dw, b_dw = fold_bn(blk.conv_local.conv.weight, None, blk.conv_local.norm)
    se = blk.se
    with torch.no_grad():
        out = irmb_inference_ref(
            x, None, None, w_dw, b_dw, blk.proj.conv.weight, act="none",
            se_reduce_weight=se.conv_reduce.weight, se_reduce_bias=se.conv_reduce.bias,
            se_expand_weight=se.conv_expand.weight, se_expand_bias=se.conv_expand.bias)
        assert rel_err(out, blk(x)) <= 1e-12


def test_se_errors():
    args, kw = _args(CFGS[-1])
    with pytest.raises(ValueError, match="skip=True is not supported"):
        emo_kernels.irmb_inference(*args, **{**kw, "skip": True})
    with pytest.raises(ValueError, match="se_expand_weight expects 24 input channels"):
        emo_kernels.irmb_inference(*args, **{**kw, "se_expand_weight": kw["se_reduce_weight"]})
    with pytest.raises(ValueError, match="need se_reduce_weight"):
        emo_kernels.irmb_inference(*args, **{**kw, "se_reduce_weight": None})


def test_reference_matches_model_block():
    """The reference of the op is the iRMB: an eval EMO attention block gives the same output."""
    import emo
    torch.manual_seed(0)
    blk = emo.emo_1m().double().eval().stage3[1]
    x = torch.randn(2, blk.norm.norm.weight.shape[0], 9, 12, dtype=torch.float64)
    from emo.layers import fold_bn
    w_dw, b_dw = fold_bn(blk.conv_local.conv.weight, None, blk.conv_local.norm)
    with torch.no_grad():
        out = irmb_inference_ref(
            x, blk.v.conv.weight, blk.v.conv.bias, w_dw, b_dw, blk.proj.conv.weight, act="gelu",
            skip=True, ln_weight=blk.norm.norm.weight, ln_bias=blk.norm.norm.bias,
            w_qk=blk.qk.conv.weight, b_qk=blk.qk.conv.bias, head_dim=blk.head_dim)
        assert rel_err(out, blk(x)) <= 1e-12


def test_irmb_inference_errors():
    args, kw = _args(CFGS[3])
    x = args[0]
    with pytest.raises(ValueError, match="w_qk expects 3 input channels"):
        emo_kernels.irmb_inference(*args, **{**kw, "w_qk": kw["w_qk"][:, :3]})
    with pytest.raises(ValueError, match="head_dim"):
        emo_kernels.irmb_inference(*args, **{**kw, "head_dim": 7})
    with pytest.raises(ValueError, match="ln_weight"):
        emo_kernels.irmb_inference(*args, **{**kw, "ln_weight": torch.ones(3, dtype=x.dtype)})
    with pytest.raises(TypeError, match="dtype"):
        emo_kernels.irmb_inference(x.float(), *args[1:], **kw)
    with pytest.raises(ValueError, match="w_proj expects"):
        emo_kernels.irmb_inference(*args[:5], args[5][:, :7], **kw)
    with pytest.raises(ValueError, match="b_qk needs w_qk"):
        emo_kernels.irmb_inference(*args, **{**kw, "w_qk": None})


def test_cpu_backend_refuses_grad():
    args, kw = _args(CFGS[0])
    args[1].requires_grad_(True)
    assert "inference-only" in emo_kernels.explain("irmb_inference", *args, **kw)["cpu"]


# ----- IRMBChain ----------------------------------------------------------------------------
def _chain_blocks(dtype=torch.float64):
    """Three blocks of different forms whose channels chain: 16 -> 16 -> 24 -> 24 (attn)."""
    out = []
    for cfg in [(1, 16, 40, 16, 9, 11, 3, 1, "silu", True, False, 0),
                (1, 16, 48, 24, 9, 11, 3, 2, "silu", False, False, 0),
                (1, 24, 48, 24, 5, 6, 5, 1, "gelu", True, True, 12)]:
        args, kw = _cast(*_args(cfg), dtype)
        out.append((tuple(args[1:]), kw))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_chain_matches_blocks(dtype, backend):
    backend_device(backend)  # a missing cpu build fails, unless deliberately skipped
    blocks = _chain_blocks()
    x = torch.randn(2, 16, 9, 11, dtype=torch.float64)
    refs, y = [], x
    for args, kw in blocks:
        y = irmb_inference_ref(y, *args, **kw)
        refs.append(y)
    chain = emo_kernels.IRMBChain(_chain_blocks(dtype), 16, dtype, "cpu")
    with emo_kernels.use_backend(backend), poison_empty(), poison_cpu_outputs(), torch.no_grad():
        outs = chain(x.to(dtype).contiguous(memory_format=torch.channels_last), outputs=[0, 2])
        last = chain(x.to(dtype))
    assert len(outs) == 2 and len(last) == 1
    for out, ref in zip(outs + last, [refs[0], refs[2], refs[2]]):
        assert out.shape == ref.shape and out.dtype == dtype
        assert rel_err(out, ref) <= TOLERANCE[dtype]


def test_chain_sees_in_place_weight_changes():
    """The cpu backend packs a chain's weights once; an in-place change of a weight after a call
    is seen by the next call (the packs are remade)."""
    backend_device("cpu")  # a missing cpu build fails, unless deliberately skipped
    blocks = _chain_blocks()
    chain = emo_kernels.IRMBChain(blocks, 16, torch.float64, "cpu")
    x = torch.randn(2, 16, 9, 11, dtype=torch.float64)

    def ref():
        y = x
        for args, kw in blocks:
            y = irmb_inference_ref(y, *args, **kw)
        return y

    with emo_kernels.use_backend("cpu"), torch.no_grad():
        assert rel_err(chain(x)[0], ref()) <= TOLERANCE[torch.float64]
        for args, kw in blocks:  # every packed weight: w_exp, w_dw, w_proj, w_qk
            for t in (args[0], args[2], args[4], kw.get("w_qk")):
                if t is not None:
                    t.mul_(1.5)
        assert rel_err(chain(x)[0], ref()) <= TOLERANCE[torch.float64]


def test_chain_errors():
    blocks = _chain_blocks()
    bad = [blocks[0], (blocks[2][0], blocks[2][1])]  # block 1 expects 24 channels, gets 16
    with pytest.raises(ValueError, match="block 1: w_exp expects 24 input channels"):
        emo_kernels.IRMBChain(bad, 16, torch.float64, "cpu")
    chain = emo_kernels.IRMBChain(blocks, 16, torch.float64, "cpu")
    with pytest.raises(ValueError, match="16 input channels"):
        chain(torch.randn(1, 8, 9, 9, dtype=torch.float64))
    with pytest.raises(TypeError, match="float64"):
        chain(torch.randn(1, 16, 9, 9))
    with pytest.raises(ValueError, match="increasing block indices"):
        chain(torch.randn(1, 16, 9, 9, dtype=torch.float64), outputs=[2, 1])
    with pytest.raises(ValueError, match="increasing block indices"):
        chain(torch.randn(1, 16, 9, 9, dtype=torch.float64), outputs=[3])


def test_chain_sees_a_write_made_while_it_packs(monkeypatch):
    """The cpu backend reads the weights' version counters before packing: a weight written
    by another thread while the chain packs (here: block 0's, while block 1 is packed) is seen
    by the next call, which packs again."""
    backend_device("cpu")  # a missing cpu build fails, unless deliberately skipped
    blocks = _chain_blocks()
    chain = emo_kernels.IRMBChain(blocks, 16, torch.float64, "cpu")
    x = torch.randn(2, 16, 9, 11, dtype=torch.float64)
    orig, packed = cpu_backend._prepared_block, []

    def prepared_block(ext, args, kw):
        if len(packed) == 1:  # block 0 is packed: another thread writes its weight now
            t = threading.Thread(target=lambda: blocks[0][0][0].mul_(1.5))
            t.start()
            t.join()
        packed.append(1)
        return orig(ext, args, kw)

    monkeypatch.setattr(cpu_backend, "_prepared_block", prepared_block)
    with emo_kernels.use_backend("cpu"), torch.no_grad():
        chain(x)
        assert len(packed) == 3
        y = x
        for args, kw in blocks:
            y = irmb_inference_ref(y, *args, **kw)
        assert rel_err(chain(x)[0], y) <= TOLERANCE[torch.float64]
        assert len(packed) == 6
