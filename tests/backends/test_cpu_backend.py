"""The cpu backend (C++ extension, csrc/cpu/) against the float64 reference, and the fused CPU
inference path of the whole model against fused=False.

Every op config runs in float32 (tolerance table of emo_kernels.testing) and float64, with the
C++ outputs and scratch buffers NaN-poisoned (emo_kernels.testing.poison_cpu_outputs). The
backend is inference-only: calls that need autograd, and BatchNorm in training mode, are refused
with a reason (training falls back to torch). The ops trace under torch.compile(fullgraph=True),
and the AVX2 and DEFAULT variants agree with the best one.
"""
import time

import pytest
import torch

import emo
import emo_kernels
from conftest import backend_device, model_pair, rel_err
from emo_kernels import BackendUnavailableError, dispatch
from emo_kernels.backends import cpu as cpu_backend
from emo_kernels.reference import expand_dwconv_act_ref, window_attention_ref
from emo_kernels.testing import TOLERANCE, poison_cpu_outputs



@pytest.fixture(autouse=True)
def _cpu_built():
    """A missing cpu build fails these tests, unless deliberately skipped (the opt-out)."""
    backend_device("cpu")

DTYPES = [torch.float32, torch.float64]

# (B, Cin, Cmid, H, W, k, stride, act, skip); act 'none' = identity expansion (stem block)
EDC = [
    (2, 8, 24, 9, 9, 3, 1, "silu", True),
    (1, 8, 24, 9, 9, 3, 2, "silu", False),
    (2, 16, 40, 7, 12, 5, 1, "gelu", True),
    (1, 16, 40, 7, 12, 5, 2, "gelu", False),
    (2, 24, 24, 13, 13, 3, 1, "none", False),
    (1, 12, 20, 3, 5, 5, 1, "gelu", True),
    (1, 12, 36, 1, 1, 3, 1, "silu", True),
    (3, 20, 72, 14, 14, 5, 2, "silu", False),
    (1, 10, 21, 8, 8, 3, 1, "none", False),
    (1, 8, 24, 5, 7, 3, 1, "silu", True),  # width 7: the depthwise pass's 7-pixel blocks
]


def _id(c):
    B, Cin, Cm, H, W, k, s, act, skip = c
    return f"B{B}-Cin{Cin}-Cmid{Cm}-H{H}-W{W}-k{k}-s{s}-{act}{'-skip' if skip else ''}"


def _edc_args(c, dtype):
    B, Cin, Cm, H, W, k, s, act, skip = c
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, Cin, H, W, generator=g, dtype=torch.float64)
    if act == "none":
        Cm, we, be = Cin, None, None
    else:
        we = torch.randn(Cm, Cin, generator=g, dtype=torch.float64) / Cin ** 0.5
        be = torch.randn(Cm, generator=g, dtype=torch.float64)
    wd = torch.randn(Cm, 1, k, k, generator=g, dtype=torch.float64) / k
    bd = torch.randn(Cm, generator=g, dtype=torch.float64)
    return x, we, be, wd, bd


def _cast(ts, dtype):
    return [None if t is None else t.to(dtype) for t in ts]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", EDC, ids=[_id(c) for c in EDC])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last],
                         ids=["nchw", "nhwc"])
def test_expand_dwconv_act(cfg, dtype, memory_format):
    *_, k, s, act, skip = cfg
    args = _edc_args(cfg, dtype)
    ref = expand_dwconv_act_ref(*args, act=act, stride=s, skip=skip)
    x, we, be, wd, bd = _cast(args, dtype)
    x = x.contiguous(memory_format=memory_format)
    with emo_kernels.use_backend("cpu"), poison_cpu_outputs(), torch.no_grad():
        out = emo_kernels.expand_dwconv_act(x, we, be, wd, bd, act=act, stride=s, skip=skip)
    assert out.shape == ref.shape and out.dtype == dtype
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= TOLERANCE[dtype]


# How the fused body cuts its work (emo_kernels.backends.cpu): chunk budget per thread (1 byte: bands of
# one output row; the default: whole images; 1e9: every image in one chunk) x split of a chunk
# among threads (1 by rows, 2 by channels) x threads (1, and 2 so that the parallel phases split).
CHUNKINGS = [(1, 1, 2), (1, 2, 2), (None, 1, 1), (None, 2, 2), (10 ** 9, 1, 2), (10 ** 9, 0, 2)]


@pytest.fixture(params=CHUNKINGS, ids=[f"budget{b}-split{s}-t{t}" for b, s, t in CHUNKINGS])
def chunking(request, monkeypatch):
    budget, split, threads = request.param
    if budget is not None:
        monkeypatch.setattr(cpu_backend, "CHUNK_BYTES_PER_THREAD", budget)
    monkeypatch.setattr(cpu_backend, "SPLIT", split)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    yield request.param
    torch.set_num_threads(old)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", [EDC[0], EDC[3], EDC[4], EDC[7]],
                         ids=[_id(c) for c in (EDC[0], EDC[3], EDC[4], EDC[7])])
@pytest.mark.parametrize("op", ["expand_dwconv_act", "irmb_inference"])
def test_fused_body_chunking(cfg, dtype, op, chunking):
    """Every way the cpu backend cuts the fused body into chunks and splits a chunk among
    threads gives the reference result: z alone (expand_dwconv_act), and with the projection
    fused in (+ the residual x when the block has a skip: irmb_inference)."""
    *_, k, s, act, skip = cfg
    args = _edc_args(cfg, dtype)
    z = expand_dwconv_act_ref(*args, act=act, stride=s, skip=skip)
    g = torch.Generator().manual_seed(2)
    wp = torch.randn(args[0].shape[1] if skip else 37, z.shape[1], generator=g,
                     dtype=torch.float64)
    x, we, be, wd, bd, wp_ = _cast(list(args) + [wp], dtype)
    with emo_kernels.use_backend("cpu"), poison_cpu_outputs(), torch.no_grad():
        if op == "expand_dwconv_act":
            ref = z
            out = emo_kernels.expand_dwconv_act(x, we, be, wd, bd, act=act, stride=s, skip=skip)
        else:
            ref = torch.einsum("bchw,oc->bohw", z, wp) + (args[0] if skip else 0)
            out = emo_kernels.irmb_inference(x, we, be, wd, bd, wp_, act=act, stride=s, skip=skip)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert rel_err(out, ref) <= TOLERANCE[dtype]


def test_expand_dwconv_act_eval_bn_folded():
    x, we, be, wd, bd = _edc_args(EDC[2], torch.float64)
    C = wd.shape[0]
    bn = dict(bn_weight=torch.rand(C, dtype=torch.float64) + 0.5,
              bn_bias=torch.randn(C, dtype=torch.float64),
              running_mean=torch.randn(C, dtype=torch.float64),
              running_var=torch.rand(C, dtype=torch.float64) + 0.5, eps=1e-6)
    ref = expand_dwconv_act_ref(x, we, be, wd, bd, act="gelu", stride=1, skip=True, **bn)
    with emo_kernels.use_backend("cpu"), poison_cpu_outputs():
        out = emo_kernels.expand_dwconv_act(x, we, be, wd, bd, act="gelu", stride=1, skip=True,
                                            **bn)
    assert rel_err(out, ref) <= TOLERANCE[torch.float64]


# (B, heads, head_dim, H, W)
ATTN = [(2, 2, 16, 7, 7), (1, 3, 20, 8, 8), (2, 2, 21, 3, 5), (1, 2, 24, 9, 16),
        (1, 2, 32, 7, 7), (2, 1, 32, 14, 14), (1, 2, 20, 13, 13)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", ATTN, ids=[f"B{b}-h{h}-d{d}-H{H}-W{W}" for b, h, d, H, W in ATTN])
@pytest.mark.parametrize("layout", ["nchw", "qk_slices_nhwc"])
def test_window_attention(cfg, dtype, layout):
    B, heads, d, H, W = cfg
    C = heads * d
    g = torch.Generator().manual_seed(3)
    qk = torch.randn(B, 2 * C, H, W, generator=g, dtype=torch.float64)
    v = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    kp = torch.randn(C, generator=g, dtype=torch.float64)
    ref = window_attention_ref(qk[:, :C], qk[:, C:], v, kp, head_dim=d)
    qk_, v_, kp_ = _cast([qk, v, kp], dtype)
    if layout == "qk_slices_nhwc":  # how the model calls it: channel slices of a channels_last qk
        qk_ = qk_.contiguous(memory_format=torch.channels_last)
        v_ = v_.contiguous(memory_format=torch.channels_last)
    else:
        qk_ = qk_.contiguous()
    with emo_kernels.use_backend("cpu"), poison_cpu_outputs():
        out = emo_kernels.window_attention(qk_[:, :C], qk_[:, C:], v_, kp_, head_dim=d)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert rel_err(out, ref) <= TOLERANCE[dtype]


def test_window_attention_no_kpad_and_scale():
    q, k, v = (torch.randn(1, 40, 9, 10, dtype=torch.float64) for _ in range(3))
    ref = window_attention_ref(q, k, v, None, head_dim=20, scale=0.3)
    with emo_kernels.use_backend("cpu"):
        out = emo_kernels.window_attention(q, k, v, None, head_dim=20, scale=0.3)
    assert rel_err(out, ref) <= TOLERANCE[torch.float64]


# ----- backend selection ----------------------------------------------------------------------
def test_auto_picks_cpu_for_cpu_inference():
    x, we, be, wd, bd = _cast(_edc_args(EDC[0], torch.float32), torch.float32)
    with torch.no_grad():
        assert dispatch.resolve("expand_dwconv_act", x, we, be, wd, bd) is \
            cpu_backend.expand_dwconv_act_cpu
    assert dispatch.backends().index("cpu") < dispatch.backends().index("torch")


def test_refuses_grad_and_training_bn_and_other_dtypes():
    x, we, be, wd, bd = _cast(_edc_args(EDC[0], torch.float32), torch.float32)
    we.requires_grad_(True)
    reasons = emo_kernels.explain("expand_dwconv_act", x, we, be, wd, bd)
    assert "inference-only" in reasons["cpu"] and reasons["torch"] is None
    # auto falls back to torch, so training works (and gives gradients)
    out = emo_kernels.expand_dwconv_act(x, we, be, wd, bd)
    out.sum().backward()
    assert we.grad is not None
    with emo_kernels.use_backend("cpu"), pytest.raises(BackendUnavailableError, match="inference"):
        emo_kernels.expand_dwconv_act(x, we, be, wd, bd)
    C = wd.shape[0]
    r = emo_kernels.explain("expand_dwconv_act", x, we.detach(), be, wd, bd,
                            bn_weight=torch.ones(C), bn_bias=torch.zeros(C), bn_training=True)
    assert "training" in r["cpu"]
    r = emo_kernels.explain("expand_dwconv_act", x.half(), None, None, wd.half(), None, act="none")
    assert "float32/float64" in r["cpu"]


# ----- whole model ----------------------------------------------------------------------------
def _pair(name, **kw):
    ref, fused = model_pair(name, **kw)
    return ref.eval(), fused.eval()


@pytest.mark.parametrize("name", emo.list_models("emo"))
def test_model_fused_cpu_matches(name):
    ref, fused = _pair(name)
    for shape in [(1, 3, 224, 224), (2, 3, 256, 256), (1, 3, 97, 131)]:
        x = torch.randn(*shape)
        with torch.inference_mode():
            a = ref(x)
            b = fused(x)
        assert rel_err(b, a) <= 1e-4, shape
        with torch.no_grad():  # no_grad takes the same path
            assert rel_err(fused(x), a) <= 1e-4, shape


def test_model_fused_cpu_float64_and_features():
    ref, fused = _pair("emo_1m")
    ref, fused = ref.double(), fused.double()
    x = torch.randn(2, 3, 96, 80, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(fused(x), ref(x)) <= 1e-10
        fr = ref.forward_intermediates(x, intermediates_only=True)
        ff = fused.forward_intermediates(x, intermediates_only=True)
    for a, b in zip(fr, ff):
        assert a.shape == b.shape and rel_err(b, a) <= 1e-10


def test_model_eval_with_grad_uses_autograd_path():
    ref, fused = _pair("emo_1m")
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    out = fused(x)  # eval, grad enabled: the cpu backend refuses, torch serves
    out.sum().backward()
    assert x.grad is not None and fused.head.weight.grad is not None
    assert rel_err(out.detach(), ref(x).detach()) <= 1e-4


def test_model_reparameterized_and_torch_backend():
    ref, fused = _pair("emo_2m")
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        a = ref(x)
        with emo_kernels.use_backend("torch"):  # same NHWC path, torch reference ops
            assert rel_err(fused(x), a) <= 1e-4
        fused.reparameterize()
        assert rel_err(fused(x), a) <= 1e-4


@pytest.mark.parametrize("act", ["silu", "gelu"])
def test_activations_at_extreme_inputs(act):
    """The float activations (reciprocal estimate + Newton step, capped exp argument) stay
    accurate and finite far into both tails, where exp overflows."""
    C = 32
    vals = torch.tensor([-1e4, -500.0, -100.0, -88.7, -80.0, -30.0, -5.0, -1e-3, 0.0, 1e-3, 5.0,
                         30.0, 88.7, 100.0, 500.0, 1e4], dtype=torch.float64)
    x = vals.repeat(C * 6 // len(vals) + 1)[: C * 6].reshape(1, C, 2, 3)
    eye = torch.eye(C, dtype=torch.float64)
    wd = torch.zeros(C, 1, 1, 1, dtype=torch.float64)  # depthwise 1x1 of 0: z = silu(0) + v
    ref = expand_dwconv_act_ref(x, eye, None, wd, None, act=act, stride=1, skip=True)
    with emo_kernels.use_backend("cpu"), torch.no_grad():
        out = emo_kernels.expand_dwconv_act(x.float(), eye.float(), None, wd.float(), None,
                                            act=act, stride=1, skip=True)
    assert torch.isfinite(out).all()
    # error relative to max(|act(x)|, 1): the float32 tolerance, elementwise
    assert ((out.double() - ref).abs() / ref.abs().clamp_min(1.0)).max() <= TOLERANCE[torch.float32]


def test_block_outside_irmb_inference_uses_general_fused_path():
    """An iRMB form irmb_inference does not take (a BatchNorm before attention; not in EMO's
    configs) still runs fused in CPU inference, through the general fused path; SE with a skip
    (not in EMO either) runs the reference computation. Both give the fused=False output."""
    torch.manual_seed(0)
    for kw in (dict(norm="bn", attn=True, head_dim=8), dict(se=True, skip=True)):
        ref = emo.iRMB(16, 16, exp_ratio=2.0, **kw).eval()
        fused = emo.iRMB(16, 16, exp_ratio=2.0, fused=True, **kw).eval()
        with torch.no_grad():
            for m in (ref, fused):  # non-trivial BN statistics
                for bn in m.modules():
                    if isinstance(bn, torch.nn.BatchNorm2d):
                        bn.running_mean.uniform_(-0.5, 0.5)
                        bn.running_var.uniform_(0.5, 2.0)
        fused.load_state_dict(ref.state_dict())
        x = torch.randn(2, 16, 9, 7)
        with torch.no_grad():
            if "attn" in kw:
                assert emo.inference.block_args(fused) is None
            assert rel_err(fused(x), ref(x)) <= 1e-5, kw


def test_parameters_under_no_grad_with_threads():
    """Under torch.no_grad, weights that require grad (nn.Parameters) are fine for the cpu
    backend on every thread (grad mode is thread-local: the worker threads must not record
    autograd for them)."""
    x, we, be, wd, bd = _cast(_edc_args(EDC[7], torch.float32), torch.float32)
    params = [torch.nn.Parameter(t) for t in (we, be, wd, bd)]
    wp = torch.nn.Parameter(torch.randn(5, we.shape[0]))
    ref = expand_dwconv_act_ref(x, *params, act="silu", stride=2)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with emo_kernels.use_backend("cpu"), torch.no_grad():
            out = emo_kernels.irmb_inference(x, *params, wp, act="silu", stride=2)
    finally:
        torch.set_num_threads(old)
    assert rel_err(out, torch.einsum("bchw,oc->bohw", ref, wp).detach()) <= TOLERANCE[torch.float32]


def test_float_gelu_accuracy():
    """The float GELU (exp-free erf, Abramowitz-Stegun 7.1.28) is within 1e-6 absolute of the
    float64 GELU on [-12, 12] (the README's claim: 8e-7 measured; torch's own float32 GELU is
    ~1e-6 off there too)."""
    C = 16
    x = torch.linspace(-12, 12, C * 250, dtype=torch.float64).reshape(1, C, 1, 250)
    eye = torch.eye(C, dtype=torch.float64)
    wd = torch.zeros(C, 1, 1, 1, dtype=torch.float64)
    ref = expand_dwconv_act_ref(x, eye, None, wd, None, act="gelu", stride=1, skip=True)
    with emo_kernels.use_backend("cpu"), torch.no_grad():
        out = emo_kernels.expand_dwconv_act(x.float(), eye.float(), None, wd.float(), None,
                                            act="gelu", stride=1, skip=True)
    assert (out.double() - ref).abs().max() <= 1e-6


# The packed-weight GEMM kernel (csrc/cpu/gemm.h) on its own: row counts around every register
# block tail (AVX-512 blocks 12 rows, AVX2 6, DEFAULT 4), column counts with half panels and
# partial vectors, K down to 1; bias and both activations in the epilogue.
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", ["none", "silu", "gelu"])
def test_gemm_kernel(dtype, act):
    ext = cpu_backend._ops()
    g = torch.Generator().manual_seed(3)
    fn = {"none": lambda t: t, "silu": torch.nn.functional.silu,
          "gelu": torch.nn.functional.gelu}[act]
    for M in (1, 5, 11, 12, 13, 23, 25, 49):
        for N in (8, 16, 24, 40, 72):
            for K in (1, 3, 17):
                x = torch.randn(M, K, generator=g, dtype=torch.float64)
                w = torch.randn(N, K, 1, 1, generator=g, dtype=torch.float64)
                b = torch.randn(N, generator=g, dtype=torch.float64)
                ref = fn(x @ w.view(N, K).t() + b)
                packed = ext.pack_weight(w.to(dtype))
                for p in (packed, None):
                    out = ext.linear(x.to(dtype), w.to(dtype), p, b.to(dtype), cpu_backend._ACT[act])
                    assert out.shape == (M, N) and out.dtype == dtype
                    assert rel_err(out, ref) <= TOLERANCE[dtype], (M, N, K)
                out = ext.linear(x.to(dtype), w.to(dtype), packed, None, 0)
                assert rel_err(out, x @ w.view(N, K).t()) <= TOLERANCE[dtype], (M, N, K)


def test_gemm_refuses_a_packed_weight_of_another_shape():
    ext = cpu_backend._ops()
    w = torch.randn(40, 16)
    x = torch.randn(5, 16)
    with pytest.raises(RuntimeError, match="packed weight must come from pack_weight"):
        ext.linear(x, w, ext.pack_weight(torch.randn(40, 8)), None, 0)
    with pytest.raises(RuntimeError, match="packed weight must come from pack_weight"):
        ext.linear(x, w, ext.pack_weight(torch.randn(200, 16)), None, 0)
    with pytest.raises(RuntimeError, match="packed weight must come from pack_weight"):
        ext.linear(x, w, ext.pack_weight(w.double()), None, 0)


# ----- issue #20: never a wrong answer, never a crash -------------------------------------------
def test_zero_channels_refused_by_the_extension():
    """Zero channels (expansion width 0, identity expansion of 0 channels, projection to 0) are
    refused by the C++ itself with an error (they sized chunks of 0 bytes: SIGFPE), and so is a
    window of size 0; an empty batch gives an empty result."""
    x = torch.randn(2, 4, 6, 6)
    cases = [  # (x, w_exp, b_exp, w_dw, w_proj, act)
        (x, torch.randn(0, 4), torch.randn(0), torch.randn(0, 1, 3, 3), None, "silu"),
        (x, torch.randn(0, 4), None, torch.randn(0, 1, 3, 3), torch.randn(4, 0), "silu"),
        (x[:, :0], None, None, torch.randn(0, 1, 3, 3), None, "none"),
        (x, torch.randn(8, 4), None, torch.randn(8, 1, 3, 3), torch.randn(0, 8), "silu"),
        (x[:, :0], torch.randn(8, 0), None, torch.randn(8, 1, 3, 3), None, "silu"),
    ]
    with torch.no_grad():
        for x_, we, be, wd, wp, act in cases:
            with pytest.raises(RuntimeError, match="channel counts must be positive"):
                if wp is None:
                    cpu_backend.expand_dwconv_act_cpu(x_, we, be, wd, None, act=act, stride=2)
                else:
                    cpu_backend.irmb_inference_cpu(x_, we, be, wd, None, wp, act=act, stride=2)
        with pytest.raises(RuntimeError, match="window_size must be positive"):
            cpu_backend.window_attention_cpu(x, x, x, head_dim=2, window_size=0)
        out = cpu_backend.expand_dwconv_act_cpu(x[:0], torch.randn(8, 4), None,
                                                torch.randn(8, 1, 3, 3), act="silu", stride=2)
    assert out.shape == (0, 8, 3, 3)


@pytest.mark.parametrize("H", [8, 9], ids=["H8", "H9"])
@pytest.mark.parametrize("act", ["silu", "none"], ids=["expand", "identity"])
@pytest.mark.parametrize("proj", [False, True], ids=["noproj", "proj"])
def test_k1_stride2_several_images_per_chunk(H, act, proj, chunking):
    """A 1x1 depthwise kernel with stride 2 reads H - 1 rows of each image when H is even: with
    several images in one chunk, every image's rows must still come from that image."""
    B, Cin, Cm, W = 5, 6, 12, 7
    g = torch.Generator().manual_seed(7)
    x = torch.randn(B, Cin, H, W, generator=g, dtype=torch.float64)
    we = None if act == "none" else torch.randn(Cm, Cin, generator=g, dtype=torch.float64)
    be = None if act == "none" else torch.randn(Cm, generator=g, dtype=torch.float64)
    cm = Cin if act == "none" else Cm
    wd = torch.randn(cm, 1, 1, 1, generator=g, dtype=torch.float64)
    bd = torch.randn(cm, generator=g, dtype=torch.float64)
    ref = expand_dwconv_act_ref(x, we, be, wd, bd, act=act, stride=2)
    wp = torch.randn(9, cm, generator=g, dtype=torch.float64)
    with emo_kernels.use_backend("cpu"), poison_cpu_outputs(), torch.no_grad():
        if proj:  # the projection fused in: irmb_inference
            ref = torch.einsum("bchw,oc->bohw", ref, wp)
            out = emo_kernels.irmb_inference(x, we, be, wd, bd, wp, act=act, stride=2)
        else:
            out = emo_kernels.expand_dwconv_act(x, we, be, wd, bd, act=act, stride=2)
    assert out.shape == ref.shape
    assert rel_err(out, ref) <= TOLERANCE[torch.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", ["none", "silu", "gelu"])
def test_activations_match_torch_at_extremes(act, dtype):
    """silu(act(x)) through the cpu backend (the expansion epilogue's act, the depthwise pass's
    SiLU) equals torch's (in float64, rounded: torch's float32 GELU overflows to inf at 3e38) at
    +-3e38, +-1e30, +-inf and NaN: tiny (never -5414) far in the negative tail, NaN where torch
    gives NaN (silu(-inf), gelu(-inf), NaN)."""
    vals = [-3e38, -1e30, -1e4, -120.0, -100.0, -88.0, -85.0, -81.0, -50.0, 0.0, 50.0, 100.0,
            1e4, 1e30, 3e38, float("inf"), float("-inf"), float("nan")]
    x = torch.tensor(vals, dtype=dtype).reshape(1, 1, 1, -1)
    C = 3  # act(x) for Cin = 1: no other input channel (inf * 0) mixes in
    fn = {"none": lambda t: t, "silu": torch.nn.functional.silu,
          "gelu": torch.nn.functional.gelu}[act]
    ref = torch.nn.functional.silu(fn(x.double())).to(dtype).expand(1, C, 1, -1)
    if act == "none":  # identity expansion: the depthwise SiLU alone
        we, x = None, x.expand(1, C, 1, -1).contiguous()
    else:
        we = torch.ones(C, 1, dtype=dtype)
    wd = torch.ones(C, 1, 1, 1, dtype=dtype)
    with emo_kernels.use_backend("cpu"), torch.no_grad():
        out = emo_kernels.expand_dwconv_act(x, we, None, wd, None, act=act, stride=1)
    torch.testing.assert_close(out, ref, equal_nan=True, rtol=TOLERANCE[dtype], atol=1e-30)


def _chain(C=32, n=4, dtype=torch.float32):
    """An IRMBChain of n EMO-like blocks (C -> 4C -> C, k 3, skip; the last with LN and
    attention) with random weights."""
    g = torch.Generator().manual_seed(11)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    blocks = []
    for i in range(n):
        kw = dict(act="silu", stride=1, skip=True)
        if i == n - 1:
            kw.update(act="gelu", ln_weight=1 + 0.1 * r(C), ln_bias=0.1 * r(C),
                      w_qk=r(2 * C, C) / C ** 0.5, b_qk=r(2 * C), head_dim=16, window_size=7)
        blocks.append(((r(4 * C, C) / C ** 0.5, r(4 * C), r(4 * C, 1, 3, 3) / 3, r(4 * C),
                        r(C, 4 * C) / (2 * C)), kw))
    return emo_kernels.IRMBChain(blocks, C, dtype, "cpu"), blocks


def test_python_thread_runs_during_a_fused_call():
    """The C++ call releases the GIL: a Python thread that wakes every 1 ms keeps ticking during
    one long IRMBChain call (one C++ call), with no gap near the call's length."""
    import threading
    chain, _ = _chain()
    B = 2
    with emo_kernels.use_backend("cpu"), torch.no_grad():
        while True:  # a call of at least 0.3 s
            x = torch.randn(B, 32, 56, 56)
            t0 = time.perf_counter()
            chain(x)
            if time.perf_counter() - t0 >= 0.3 or B >= 64:
                break
            B *= 2
        ticks, stop = [], threading.Event()

        def tick():
            while not stop.is_set():
                time.sleep(0.001)
                ticks.append(time.perf_counter())

        t = threading.Thread(target=tick)
        t.start()
        time.sleep(0.05)
        t0 = time.perf_counter()
        chain(x)
        t1 = time.perf_counter()
        stop.set()
        t.join()
    inside = [s for s in ticks if t0 <= s <= t1]
    gaps = [b - a for a, b in zip([t0] + inside, inside + [t1])]
    assert len(inside) >= 5 and max(gaps) < (t1 - t0) / 2, (t1 - t0, len(inside), max(gaps))


def test_threads_share_one_fused_model_bitwise():
    """4 Python threads calling one IRMBChain, irmb_inference and one fused EMO-1M model at
    once (the C++ runs without the GIL, concurrently) get exactly the outputs of one thread."""
    from concurrent.futures import ThreadPoolExecutor
    chain, blocks = _chain(n=2)
    model = emo.emo_1m(fused=True).eval()
    (args, kw) = blocks[-1]
    xs = [torch.randn(2, 32, 20 + 3 * i, 17 + i) for i in range(4)]
    ims = [torch.randn(1 + i % 2, 3, 64 + 16 * i, 64) for i in range(4)]

    def work(i):
        with emo_kernels.use_backend("cpu"), torch.no_grad():
            outs = []
            for _ in range(3):
                outs += [chain(xs[i])[0], emo_kernels.irmb_inference(xs[i], *args, **kw),
                         model(ims[i])]
            return outs

    single = [work(i)[:3] for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        multi = list(pool.map(work, range(4)))
    for i in range(4):
        for j, out in enumerate(multi[i]):
            assert torch.equal(out, single[i][j % 3]), (i, j)


# ----- issue #18: torch.library ops (torch.compile), ISA variants ---------------------------------
def _small_block(dtype=torch.float32, attn=True):
    g = torch.Generator().manual_seed(11)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    x = r(1, 8, 9, 9)
    args = (r(16, 8, 1, 1), r(16), r(16, 1, 3, 3), r(16), r(8, 16, 1, 1))
    kw = dict(act="silu", stride=1, skip=True, ln_weight=r(8), ln_bias=r(8))
    if attn:
        kw.update(w_qk=r(16, 8, 1, 1), b_qk=r(16), head_dim=4, window_size=3)
    return x, args, kw


def test_torch_compile_fullgraph_runs_the_cpp_kernel():
    """torch.compile(fullgraph=True) of a call of the cpu op traces without a graph break (it
    would raise) and the compiled function runs the C++ kernel: the op is in the traced graph,
    and the result matches the eager one."""
    import torch._dynamo
    from torch._dynamo.testing import CompileCounterWithBackend
    x, args, kw = _small_block()
    ns = cpu_backend._ops().name  # torch.ops.<namespace> of the loaded variant

    def block(x):
        return cpu_backend.irmb_inference_cpu(x, *args, **kw)

    counter = CompileCounterWithBackend("eager")
    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(block, backend=counter, fullgraph=True)(x)
        ref = block(x)
    assert counter.frame_count == 1
    targets = [str(n.target) for gm in counter.graphs for n in gm.graph.nodes
               if n.op == "call_function"]
    assert targets == [f"{ns}.irmb_inference"], targets
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["AVX2", "DEFAULT"])
def test_isa_variants_agree(isa):
    """The AVX2 and DEFAULT variants (loaded beside the best one, JIT-built if setup.py did not
    build them) give the reference's results, as the best variant does."""
    from emo_kernels import _build, _ext
    from emo_kernels.reference import irmb_inference_ref
    if _build.RANK[isa] > _build.RANK[_ext.cpu_isa()]:
        pytest.skip(f"this CPU lacks {isa}")
    ops = _ext.cpu_ops(isa)
    assert ops.isa() == isa
    best = cpu_backend._ops()
    for dtype in DTYPES:
        x, args, kw = _small_block(dtype)
        tensors, ints, floats = cpu_backend._block_lists(args, kw)
        ref = irmb_inference_ref(x.double(), *[a.double() for a in args],
                                 **{k: v.double() if torch.is_tensor(v) else v
                                    for k, v in kw.items()})
        with poison_cpu_outputs(), torch.no_grad():
            out = ops.irmb_inference(x, tensors, ints, floats, 1 << 20, 0)
            out_best = best.irmb_inference(x, tensors, ints, floats, 1 << 20, 0)
            eda = ops.expand_dwconv_act(x, args[0], args[1], args[2], args[3], 1, 2, False,
                                        1 << 20, 0)
        assert rel_err(out, ref) <= TOLERANCE[dtype]
        assert rel_err(out, out_best) <= TOLERANCE[dtype]
        eda_ref = expand_dwconv_act_ref(x, args[0], args[1], args[2], args[3], stride=2)
        assert rel_err(eda, eda_ref) <= TOLERANCE[dtype]
