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
    _check_against_reference(*_args(cfg), dtype, backend)


def _check_against_reference(args, kw, dtype, backend):
    """The op on ``backend`` in ``dtype`` (NHWC x, NaN-poisoned outputs) against the float64
    reference of the float64 arguments."""
    backend_device(backend)  # a missing cpu build fails, unless deliberately skipped
    ref = irmb_inference_ref(*args, **kw)
    args, kw = _cast(args, kw, dtype)
    args[0] = args[0].contiguous(memory_format=torch.channels_last)
    with emo_kernels.use_backend(backend), poison_empty(), poison_cpu_outputs(), torch.no_grad():
        out = emo_kernels.irmb_inference(*args, **kw)
    assert out.shape == ref.shape and out.dtype == dtype and torch.isfinite(out).all()
    assert rel_err(out, ref) <= TOLERANCE[dtype]


# EMOv2's attention block (attn_pre=False: the expansion first, the attention over v, whose
# padded pixels carry act(b_exp); value heads Cmid / heads wide): (cfg as above, partition,
# window size)
V2_CFGS = [
    ((2, 32, 64, 32, 9, 11, 5, 1, "gelu", True, True, 16), "hybrid", 7),  # pads, both partitions
    ((1, 24, 36, 24, 3, 5, 5, 1, "silu", True, True, 8), "close", 7),    # map < a window, dv=12
    ((1, 16, 48, 16, 16, 16, 3, 1, "gelu", False, False, 16), "remote", 8),  # 1 head, 2x2 windows
    ((2, 24, 48, 20, 8, 10, 5, 2, "gelu", False, True, 12), "hybrid", 8),  # stride 2, Cout != C
]
V2_IDS = [f"C{c[0][1]}-mid{c[0][2]}-{c[0][4]}x{c[0][5]}-s{c[0][7]}-{c[1]}-ws{c[2]}"
          for c in V2_CFGS]


def _v2_args(case, dtype=torch.float64):
    cfg, partition, ws = case
    args, kw = _cast(*_args(cfg), dtype)
    kw.update(partition=partition, attn_pre=False, window_size=ws)
    return args, kw


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", V2_CFGS, ids=V2_IDS)
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_irmb_inference_emo2_form(case, dtype, backend, threads):
    """EMOv2's attention block in one call, against the float64 reference."""
    _check_against_reference(*_v2_args(case), dtype, backend)


def test_reference_emo2_form_is_the_composition():
    """attn_pre=False in the reference: v = act(W_exp y + b_exp), the attention over it with
    padded values act(b_exp), then the depthwise body without expansion -- and the padded
    values matter (zero pads give another result)."""
    from emo_kernels.reference import expand_dwconv_act_ref, window_attention_ref
    from emo_kernels.reference.irmb_inference import pointwise
    args, kw = _v2_args(V2_CFGS[0])
    x, we, be, wd, bd, wp = args
    y = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), kw["ln_weight"],
                                       kw["ln_bias"], 1e-6).permute(0, 3, 1, 2)
    C = x.shape[1]
    qk = pointwise(y, kw["w_qk"], kw["b_qk"])
    v = torch.nn.functional.gelu(pointwise(y, we, be))
    wa = dict(head_dim=16, window_size=7, partition="hybrid")
    o = window_attention_ref(qk[:, :C], qk[:, C:], v, kw["b_qk"][C:],
                             v_pad=torch.nn.functional.gelu(be), **wa)
    want = pointwise(expand_dwconv_act_ref(o, None, None, wd, bd, act="none", skip=True), wp) + x
    assert rel_err(irmb_inference_ref(*args, **kw), want) <= 1e-14
    o0 = window_attention_ref(qk[:, :C], qk[:, C:], v, kw["b_qk"][C:], **wa)
    zero = pointwise(expand_dwconv_act_ref(o0, None, None, wd, bd, act="none", skip=True), wp) + x
    assert rel_err(zero, want) > 1e-3


def test_reference_matches_emo2_hybrid_block():
    """The reference of the op in EMOv2's form is the iiRMB hybrid attention block (eval;
    LayerScale folded into the projection)."""
    import emo
    from emo.layers import fold_bn
    torch.manual_seed(0)
    blk = emo.emo2_1m().double().eval().stage3[1]
    blk.ls.gamma.data.uniform_(0.5, 1.5)
    attn = blk.eops[0]
    x = torch.randn(2, blk.norm.norm.weight.shape[0], 9, 12, dtype=torch.float64)
    w_dw, b_dw = fold_bn(blk.conv_local.conv.weight, None, blk.conv_local.norm)
    with torch.no_grad():
        out = irmb_inference_ref(
            x, attn.v.conv.weight, attn.v.conv.bias, w_dw, b_dw,
            blk.proj.conv.weight.flatten(1) * blk.ls.gamma.reshape(-1, 1), act="gelu", skip=True,
            ln_weight=blk.norm.norm.weight, ln_bias=blk.norm.norm.bias, w_qk=attn.qk.conv.weight,
            b_qk=attn.qk.conv.bias, head_dim=attn.head_dim, window_size=attn.window_size,
            partition="hybrid", attn_pre=False)
        assert rel_err(out, blk(x)) <= 1e-12


def test_emo2_form_errors_and_refusals():
    args, kw = _v2_args(V2_CFGS[0])
    with pytest.raises(ValueError, match="partition must be one of"):
        emo_kernels.irmb_inference(*args, **{**kw, "partition": "strided"})
    with pytest.raises(TypeError, match="attn_pre must be a bool"):
        emo_kernels.irmb_inference(*args, **{**kw, "attn_pre": 0})
    plain, _ = _args(CFGS[0])
    with pytest.raises(ValueError, match="need w_qk"):
        emo_kernels.irmb_inference(*plain, partition="close")
    with pytest.raises(ValueError, match="need w_qk"):
        emo_kernels.irmb_inference(*plain, attn_pre=False)
    with pytest.raises(ValueError, match="multiple of the 2 heads"):  # Cmid 63: 2 heads of 16
        r = lambda *s: torch.randn(*s, dtype=torch.float64)  # noqa: E731
        emo_kernels.irmb_inference(args[0], r(63, 32), r(63), r(63, 1, 5, 5), r(63), r(32, 63),
                                   **kw)


def test_triton_refuses_a_partition_its_attention_kernel_lacks():
    """attn_pre=True (EMO's attention before the expansion) in the triton kernel is strided
    only: another partition is refused, naming it (attn_pre=False runs every partition)."""
    pytest.importorskip("triton")
    from emo_kernels.backends import triton as tb
    args, kw = _args(CFGS[3])
    assert "partition='close'" in tb.irmb_inference_can_run(*args, **kw, partition="close")


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
    """Four blocks of different forms whose channels chain: 16 -> 16 -> 24 -> 24 (attn) -> 24
    (EMOv2's attention block)."""
    out = []
    for cfg in [(1, 16, 40, 16, 9, 11, 3, 1, "silu", True, False, 0),
                (1, 16, 48, 24, 9, 11, 3, 2, "silu", False, False, 0),
                (1, 24, 48, 24, 5, 6, 5, 1, "gelu", True, True, 12)]:
        args, kw = _cast(*_args(cfg), dtype)
        out.append((tuple(args[1:]), kw))
    args, kw = _cast(*_args((1, 24, 72, 24, 5, 6, 5, 1, "gelu", True, True, 8)), dtype)
    kw.update(partition="hybrid", attn_pre=False)  # EMOv2's attention block: 24 -> 24
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
    for out, ref in zip(outs + last, [refs[0], refs[2], refs[3]]):
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
        chain(torch.randn(1, 16, 9, 9, dtype=torch.float64), outputs=[4])


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
        assert len(packed) == 4
        y = x
        for args, kw in blocks:
            y = irmb_inference_ref(y, *args, **kw)
        assert rel_err(chain(x)[0], y) <= TOLERANCE[torch.float64]
        assert len(packed) == 8
