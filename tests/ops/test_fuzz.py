"""Property-based fuzzing (hypothesis) of every public op and the multi-block plan, on every
backend that runs here, against the float64 reference.

Profiles (``EMO_FUZZ_PROFILE``): ``ci`` (the default; fixed seed through ``derandomize``, a
bounded number of examples per test, ~1-2 minutes on a 2-core machine, no example database)
and ``long`` (opt-in, thousands of examples, random seed):
``EMO_FUZZ_PROFILE=long python -m pytest tests/ops/test_fuzz.py``.

What is drawn: batch 1..5, H and W 1..40, channel counts that are mostly not multiples of 8 or
16, depthwise k in {1, 3, 5, 7}, stride 1/2, every activation (silu, gelu, none, and the
identity expansion), skip on/off, BatchNorm none/eval/train, fp32/fp64, NCHW/NHWC inputs,
the optional biases; for the cpu backend also its
chunking knobs (``emo_kernels.backends.cpu.CHUNK_BYTES_PER_THREAD``, ``.SPLIT``) and 1 or
2 threads. Tensor values come from a drawn seed, so a failing example (printed as a ``Case``)
is reproducible from its repr. The Triton interpreter gets few, tiny examples.

A backend that cannot run a drawn call must refuse it with ``BackendUnavailableError`` and the
reason ``explain`` gives; the refusals are checked against the documented limits (cpu:
inference only, no training BatchNorm; triton: k in {3, 5}), so a backend may neither refuse
what it documents nor silently run what it does not.

Accuracy: the output against the float64 reference evaluated on the same (dtype-rounded)
inputs, relative error (max |out - ref| / max |ref|) within ``emo_kernels.testing.TOLERANCE``;
only where plain PyTorch in the same dtype misses the table too (random weights can make an
output cancel to far below its terms: e.g. one pixel, one output channel) the kernel may have
up to 2x PyTorch's own error (the rule of docs/conventions.md), or, for an output below 1% of
its terms' magnitude, the table's error relative to that magnitude (see assert_matches).
Extreme values and zero channel counts have their own oracles (see those tests).

This suite is expected to fail until the fixes of issue #20's findings 1, 2 and 7 land: it
marks nothing xfail on purpose.
"""
import dataclasses
import functools
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import emo_kernels
from conftest import backend_device, rel_err
from emo_kernels import BackendUnavailableError
from emo_kernels.backends import cpu as cpu_backend
from emo_kernels.reference import (activation, expand_dwconv_act_ref, irmb_inference_ref,
                                   window_attention_ref, window_partition, window_unpartition)
from emo_kernels.testing import TOLERANCE, poison_empty

# NaN/inf inputs make numpy (inside the Triton interpreter) warn; the values are checked here
pytestmark = [pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")]

# ----- profiles ------------------------------------------------------------------------------
PROFILE = os.environ.get("EMO_FUZZ_PROFILE", "ci")
_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.filter_too_much])
settings.register_profile("ci", derandomize=True, **_COMMON)
settings.register_profile("long", derandomize=False, **_COMMON)
if PROFILE not in ("ci", "long"):
    raise ValueError(f"EMO_FUZZ_PROFILE={PROFILE!r}: expected 'ci' or 'long'")
settings.load_profile(PROFILE)  # the session's default; no other test file uses hypothesis

# Examples per (test, backend): ci sized for ~1-2 minutes in all on 2 idle cores.
_BUDGET = {
    "ci": dict(eda_cpu=100, eda_torch=25, eda_triton=4, eda_cuda=40,
               attn_cpu=40, attn_torch=15, attn_triton=3, attn_cuda=30,
               irmb_cpu=30, irmb_torch=10, irmb_triton=4, chain_cpu=12, chain_torch=5,
               chain_triton=2,
               ext_eda_cpu=40, ext_eda_torch=15, ext_eda_triton=3, ext_eda_cuda=20,
               ext_attn_cpu=25, ext_attn_torch=10, ext_attn_triton=2, ext_attn_cuda=20,
               zero=40),
    "long": dict(eda_cpu=3000, eda_torch=800, eda_triton=60, eda_cuda=2000,
                 attn_cpu=1500, attn_torch=400, attn_triton=40, attn_cuda=1500,
                 irmb_cpu=1500, irmb_torch=300, irmb_triton=60, chain_cpu=800,
                 chain_torch=100, chain_triton=30,
                 ext_eda_cpu=2000, ext_eda_torch=400, ext_eda_triton=30, ext_eda_cuda=1000,
                 ext_attn_cpu=1000, ext_attn_torch=300, ext_attn_triton=20, ext_attn_cuda=800,
                 zero=1000),
}[PROFILE]


def fuzz_tests(name, check, budget, **strategies):
    """Define test_<name>_<backend> for each backend=strategy: `check(case, backend)` over
    the strategy's examples, as many as the profile's budget `<budget>_<backend>` says."""
    def make(backend):
        def test(case):
            check(case, backend)
        return test

    for backend, strategy in strategies.items():
        test = make(backend)
        test.__name__ = test.__qualname__ = f"test_{name}_{backend}"
        test = settings(max_examples=_BUDGET[f"{budget}_{backend}"])(given(case=strategy)(test))
        globals()[test.__name__] = test


def _device(backend):
    """The device a backend's examples run on here, or skip with the reason (a missing cpu
    build fails its examples, unless deliberately skipped: conftest.backend_device)."""
    if backend in ("cpu", "triton", "cuda"):
        return backend_device(backend)
    return torch.device("cpu")


# ----- strategies ----------------------------------------------------------------------------
def channels(lo=1, hi=40):
    """Channel counts, mostly not multiples of 8 (a few are, so both paths get drawn)."""
    return st.one_of(st.integers(lo, hi).filter(lambda c: c % 8 != 0),
                     st.sampled_from([c for c in (8, 16, 24, 32) if lo <= c <= hi]))


DTYPES = st.sampled_from([torch.float32, torch.float64])
ACTS = st.sampled_from(["silu", "gelu", "none", "identity"])  # identity: w_exp=None


@st.composite
def cpu_knobs(draw):
    """(CHUNK_BYTES_PER_THREAD or None = default, SPLIT, threads): small budgets force bands
    of rows; the default and large ones put several images in one chunk."""
    kind = draw(st.sampled_from(["default", "default", "one byte", "huge", "random"]))
    budget = {"default": None, "one byte": 1, "huge": 1 << 30}.get(kind)
    if kind == "random":
        budget = draw(st.integers(1, 1 << 17))
    return budget, draw(st.sampled_from([0, 1, 2])), draw(st.sampled_from([1, 2]))


class cpu_settings:
    """Apply cpu_knobs for a block; restores the module attributes and the thread count."""

    def __init__(self, knobs):
        self.knobs = knobs

    def __enter__(self):
        self.saved = (cpu_backend.CHUNK_BYTES_PER_THREAD, cpu_backend.SPLIT,
                      torch.get_num_threads())
        if self.knobs is not None:
            budget, split, threads = self.knobs
            if budget is not None:
                cpu_backend.CHUNK_BYTES_PER_THREAD = budget
            cpu_backend.SPLIT = split
            torch.set_num_threads(threads)

    def __exit__(self, *exc):
        cpu_backend.CHUNK_BYTES_PER_THREAD, cpu_backend.SPLIT, threads = self.saved
        torch.set_num_threads(threads)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _rand(g, *shape, scale=1.0):
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def assert_matches(out, ref, dtype, what="output", same_dtype_ref=None, magnitude_ref=None):
    """Shape, dtype, every value written (outputs are NaN-poisoned), relative error within the
    tolerance table. Random weights can make an output cancel to far below its terms (one
    pixel, one output channel...), where no dtype meets the table: only if plain PyTorch in
    the same dtype (`same_dtype_ref()`) misses it too, the kernel passes with at most 2x
    PyTorch's error (docs/conventions.md's rule), or, when the output is below 1% of the
    magnitude of its terms (`magnitude_ref()`: the reference on |inputs| and |weights|), with
    an error within the table relative to that magnitude."""
    assert out.shape == ref.shape and out.dtype == dtype, (what, tuple(out.shape), out.dtype)
    assert torch.isfinite(out).all(), f"{what}: non-finite values (unwritten memory?)"
    err, tol = rel_err(out.cpu(), ref), TOLERANCE[dtype]
    if err <= tol or same_dtype_ref is None:
        assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"
        return
    torch_err = rel_err(same_dtype_ref().cpu(), ref)
    if torch_err <= tol or err <= 2 * torch_err:
        assert err <= max(tol, 2 * torch_err), \
            f"{what}: relative error {err:.3g} > {tol:g} (PyTorch in this dtype: {torch_err:.3g})"
        return
    scale = magnitude_ref().abs().max().item()
    mag_err = (out.cpu().double() - ref).abs().max().item() / scale
    assert ref.abs().max().item() < 0.01 * scale and mag_err <= tol, \
        (f"{what}: relative error {err:.3g} > {tol:g} and > 2x PyTorch's {torch_err:.3g}; "
         f"relative to the terms' magnitude {mag_err:.3g}")


def _abs(ts):
    """|t| for every tensor of a list or dict (the magnitude reference's inputs)."""
    a = lambda t: t.abs() if isinstance(t, torch.Tensor) else t  # noqa: E731
    return {k: a(v) for k, v in ts.items()} if isinstance(ts, dict) else [a(t) for t in ts]


def _to(t, dtype, device):
    return None if t is None else t.to(device=device, dtype=dtype)


# ----- expand_dwconv_act ---------------------------------------------------------------------
@dataclasses.dataclass
class EdaCase:
    B: int
    Cin: int
    Cmid: int
    H: int
    W: int
    k: int
    stride: int
    act: str
    skip: bool
    bn: str            # none | eval | train
    bn_affine: bool
    bn_running: bool   # train mode: pass running stats too
    b_exp: bool
    b_dw: bool
    dtype: torch.dtype
    nhwc: bool
    seed: int
    knobs: tuple = None


@st.composite
def eda_cases(draw, tiny=False):
    hw = st.integers(1, 9) if tiny else st.integers(1, 40)
    act = draw(ACTS)
    cin = draw(channels(1, 12 if tiny else 40))
    cmid = cin if act == "identity" else draw(channels(1, 12 if tiny else 48))
    stride = draw(st.sampled_from([1, 2]))
    bn_mode = draw(st.sampled_from(["none", "eval", "train"]))
    B, H, W, k = (draw(st.integers(1, 2 if tiny else 5)), draw(hw), draw(hw),
                  draw(st.sampled_from([3, 5, 3, 5, 1, 7] if tiny else [1, 3, 5, 7])))
    if bn_mode == "train" and B * _out_hw(H, W, k, stride)[0] * _out_hw(H, W, k, stride)[1] == 1:
        bn_mode = "eval"  # batch statistics of one value per channel: F.batch_norm refuses
    return EdaCase(
        B=B, Cin=cin, Cmid=cmid, H=H, W=W, k=k, stride=stride, act=act,
        skip=stride == 1 and draw(st.booleans()), bn=bn_mode, bn_affine=draw(st.booleans()),
        bn_running=draw(st.booleans()), b_exp=act != "identity" and draw(st.booleans()),
        b_dw=draw(st.booleans()), dtype=draw(DTYPES),
        nhwc=draw(st.booleans()), seed=draw(st.integers(0, 2 ** 31 - 1)))


def _out_hw(H, W, k, stride):
    pad = -(-(k - stride) // 2)
    return (H + 2 * pad - k) // stride + 1, (W + 2 * pad - k) // stride + 1


def eda_inputs(c, x=None, w_scale=None):
    """float64 master tensors of a case: (args, kwargs) of expand_dwconv_act."""
    g = _gen(c.seed)
    x = _rand(g, c.B, c.Cin, c.H, c.W) if x is None else x
    ident = c.act == "identity"
    w_exp = None if ident else _rand(g, c.Cmid, c.Cin, scale=c.Cin ** -0.5)
    b_exp = _rand(g, c.Cmid, scale=0.5) if c.b_exp else None
    w_dw = _rand(g, c.Cmid, 1, c.k, c.k, scale=1.0 / c.k)
    b_dw = _rand(g, c.Cmid, scale=0.5) if c.b_dw else None
    if w_scale is not None:  # extreme-value test: rescale rows to a bounded L1 norm
        w_exp, w_dw = w_scale(w_exp), w_scale(w_dw)
    kw = dict(act="none" if ident else c.act, stride=c.stride, skip=c.skip)
    if c.bn != "none":
        kw["bn_training"] = c.bn == "train"
        if c.bn_affine or c.bn == "eval":
            kw["bn_weight"] = 0.5 + torch.rand(c.Cmid, generator=g, dtype=torch.float64)
            kw["bn_bias"] = _rand(g, c.Cmid, scale=0.5)
        if c.bn == "eval" or c.bn_running:
            kw["running_mean"] = _rand(g, c.Cmid, scale=0.3)
            kw["running_var"] = 0.5 + torch.rand(c.Cmid, generator=g, dtype=torch.float64)
        kw["momentum"], kw["eps"] = 0.3, 1e-5
    return [x, w_exp, b_exp, w_dw, b_dw], kw


def eda_ref(args, kw):
    """The float64 reference."""
    return expand_dwconv_act_ref(*args, **kw)


def _cast(args, kw, dtype, device):
    args = [_to(a, dtype, device) for a in args]
    kw = {k: _to(v, dtype, device) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    return args, kw


def expected_refusal(op, backend, c):
    """The documented limit a backend must refuse this case for, or None."""
    if backend == "triton" and op == "expand_dwconv_act" and c.k not in (3, 5):
        return "kernel size"
    if backend == "cpu" and getattr(c, "bn", "none") == "train":
        return "training"
    return None


def run_or_refused(op, backend, c, fn, explain_args, explain_kw):
    """Run fn() under the backend, or check that it refuses with its documented reason.
    Returns the output, or None when refused (as expected)."""
    reason = emo_kernels.explain(op, *explain_args, **explain_kw)[backend]
    if backend == "triton" and reason is not None and "interpreter" in reason:
        reason = None  # explain's note that auto skips the interpreter: it runs when asked
    must = expected_refusal(op, backend, c)
    if must is not None:
        assert reason is not None and must in reason, \
            f"{backend} should refuse ({must}) but explain says {reason!r}"
        with emo_kernels.use_backend(backend), pytest.raises(BackendUnavailableError) as ei:
            fn()
        assert reason in str(ei.value)
        return None
    assert reason is None, f"{backend} refused a call it documents: {reason}"
    with emo_kernels.use_backend(backend), poison_empty():
        return fn()


def check_eda(c, backend):
    note(repr(c))
    dev = _device(backend)
    args, kw = eda_inputs(c)
    args, kw = _cast(args, kw, c.dtype, dev)  # rounded to the case's dtype
    if c.nhwc:
        args[0] = args[0].contiguous(memory_format=torch.channels_last)
    # the reference sees the same rounded values, in float64 (running stats: own copies)
    rargs, rkw = _cast(args, kw, torch.float64, torch.device("cpu"))
    ref = eda_ref(rargs, rkw)

    def call():
        with torch.no_grad(), cpu_settings(c.knobs if backend == "cpu" else None):
            return emo_kernels.expand_dwconv_act(*args, **kw)

    out = run_or_refused("expand_dwconv_act", backend, c, call, args, kw)
    if out is None:
        return
    assert_matches(out, ref, c.dtype,
                   same_dtype_ref=lambda: eda_ref(*_cast(rargs, rkw, c.dtype, torch.device("cpu"))),
                   magnitude_ref=lambda: eda_ref(_abs(rargs), _abs(rkw)))
    if c.bn == "train" and "running_mean" in kw:  # running stats updated like nn.BatchNorm2d
        for n in ("running_mean", "running_var"):
            e = rel_err(kw[n].cpu(), rkw[n])
            assert e <= TOLERANCE[c.dtype], f"{n}: relative error {e:.3g}"


@st.composite
def eda_cpu_cases(draw):
    return dataclasses.replace(draw(eda_cases()), knobs=draw(cpu_knobs()))


fuzz_tests("expand_dwconv_act", check_eda, "eda", cpu=eda_cpu_cases(), torch=eda_cases(),
           triton=eda_cases(tiny=True), cuda=eda_cases())


# ----- window_attention ----------------------------------------------------------------------
@dataclasses.dataclass
class AttnCase:
    B: int
    heads: int
    head_dim: int
    H: int
    W: int
    window_size: int
    k_pad: bool
    scale: float
    qk_slices: bool   # q, k as channel slices of one channels_last (B, 2C, H, W) tensor
    dtype: torch.dtype
    seed: int


@st.composite
def attn_cases(draw, tiny=False):
    hw = st.integers(1, 9) if tiny else st.integers(1, 40)
    return AttnCase(
        B=draw(st.integers(1, 2 if tiny else 5)), heads=draw(st.integers(1, 2 if tiny else 3)),
        head_dim=draw(st.integers(1, 8 if tiny else 24)), H=draw(hw), W=draw(hw),
        window_size=draw(st.one_of(st.just(7), st.integers(1, 8))), k_pad=draw(st.booleans()),
        scale=draw(st.one_of(st.none(), st.floats(0.05, 2.0))), qk_slices=draw(st.booleans()),
        dtype=draw(DTYPES), seed=draw(st.integers(0, 2 ** 31 - 1)))


def attn_inputs(c):
    g = _gen(c.seed)
    C = c.heads * c.head_dim
    qk = _rand(g, c.B, 2 * C, c.H, c.W)
    v = _rand(g, c.B, C, c.H, c.W)
    kp = _rand(g, C) if c.k_pad else None
    return qk, v, kp


def _attn_call(c, qk, v, kp, dev):
    C = c.heads * c.head_dim
    qk, v, kp = (_to(t, c.dtype, dev) for t in (qk, v, kp))
    if c.qk_slices:
        qk = qk.contiguous(memory_format=torch.channels_last)
        v = v.contiguous(memory_format=torch.channels_last)
    q, k = qk[:, :C], qk[:, C:]
    kw = dict(head_dim=c.head_dim, window_size=c.window_size, scale=c.scale)
    return (q, k, v, kp), kw


def check_attn(c, backend):
    note(repr(c))
    dev = _device(backend)
    qk, v, kp = attn_inputs(c)
    args, kw = _attn_call(c, qk, v, kp, dev)
    ref = window_attention_ref(*(_to(t, torch.float64, "cpu") for t in args), **kw)

    def call():
        with torch.no_grad():
            return emo_kernels.window_attention(*args, **kw)

    out = run_or_refused("window_attention", backend, c, call, args, kw)
    if out is None:
        return
    args64 = [_to(t, torch.float64, "cpu") for t in args]
    assert_matches(out, ref, c.dtype, same_dtype_ref=lambda: window_attention_ref(
        *(_to(t, c.dtype, "cpu") for t in args), **kw),
        magnitude_ref=lambda: window_attention_ref(*_abs(args64), **kw))


fuzz_tests("window_attention", check_attn, "attn", cpu=attn_cases(), torch=attn_cases(),
           triton=attn_cases(tiny=True), cuda=attn_cases())


# ----- irmb_inference and the multi-block plan (IRMBChain) -----------------------------------
@dataclasses.dataclass
class BlockCase:
    C: int
    Cmid: int
    Cout: int
    k: int
    stride: int
    act: str
    skip: bool
    ln: bool
    ln_bias: bool
    attn_head_dim: int   # 0: no attention
    window_size: int
    se: int              # squeeze-excite reduction channels, 0: none
    b_exp: bool
    b_dw: bool
    seed: int


@st.composite
def block_cases(draw, C=None):
    """One iRMB's configuration; C (its input channels) given in a chain."""
    attn = draw(st.booleans())
    if C is None:
        if attn:
            hd = draw(st.integers(1, 16))
            C = hd * draw(st.integers(1, 3))
        else:
            C = draw(channels(1, 40))
    hd = 0
    if attn:
        divisors = [d for d in range(1, min(C, 24) + 1) if C % d == 0]
        hd = draw(st.sampled_from(divisors)) if divisors else 0
    act = draw(ACTS)
    stride = draw(st.sampled_from([1, 2]))
    skip = stride == 1 and draw(st.booleans())
    se = 0 if skip else draw(st.one_of(st.just(0), st.integers(1, 8)))
    return BlockCase(
        C=C, Cmid=C if act == "identity" else draw(channels(1, 48)),
        Cout=C if skip else draw(channels(1, 40)), k=draw(st.sampled_from([1, 3, 5, 7])),
        stride=stride, act=act, skip=skip, ln=draw(st.booleans()), ln_bias=draw(st.booleans()),
        attn_head_dim=hd, window_size=draw(st.one_of(st.just(7), st.integers(1, 8))), se=se,
        b_exp=act != "identity" and draw(st.booleans()), b_dw=draw(st.booleans()),
        seed=draw(st.integers(0, 2 ** 31 - 1)))


def block_inputs(b):
    """float64 master weights of one block: (args after x, kwargs) of irmb_inference."""
    g = _gen(b.seed)
    ident = b.act == "identity"
    Cm = b.Cmid
    args = (None if ident else _rand(g, Cm, b.C, scale=b.C ** -0.5),
            _rand(g, Cm, scale=0.5) if b.b_exp else None,
            _rand(g, Cm, 1, b.k, b.k, scale=1.0 / b.k),
            _rand(g, Cm, scale=0.5) if b.b_dw else None,
            _rand(g, b.Cout, Cm, scale=Cm ** -0.5))
    kw = dict(act="none" if ident else b.act, stride=b.stride, skip=b.skip)
    if b.ln:
        kw["ln_weight"] = 1 + 0.2 * _rand(g, b.C)
        if b.ln_bias:
            kw["ln_bias"] = 0.2 * _rand(g, b.C)
    if b.attn_head_dim:
        kw.update(w_qk=_rand(g, 2 * b.C, b.C, scale=b.C ** -0.5), b_qk=_rand(g, 2 * b.C),
                  head_dim=b.attn_head_dim, window_size=b.window_size)
    if b.se:
        kw.update(se_reduce_weight=_rand(g, b.se, Cm, 1, 1, scale=Cm ** -0.5),
                  se_reduce_bias=_rand(g, b.se, scale=0.5),
                  se_expand_weight=_rand(g, Cm, b.se, 1, 1, scale=b.se ** -0.5),
                  se_expand_bias=_rand(g, Cm, scale=0.5), se_act="silu")
    return args, kw


@dataclasses.dataclass
class ChainCase:
    B: int
    H: int
    W: int
    blocks: list
    outputs: list
    dtype: torch.dtype
    nhwc: bool
    seed: int
    knobs: tuple = None


@st.composite
def chain_cases(draw, n_blocks, tiny=False):
    """tiny: small batches and maps (the Triton interpreter)."""
    n = draw(n_blocks)
    blocks = [draw(block_cases())]
    for _ in range(n - 1):
        blocks.append(draw(block_cases(C=blocks[-1].Cout)))
    outputs = sorted(draw(st.sets(st.integers(0, n - 1), min_size=1)))
    hw = 12 if tiny else 40
    return ChainCase(B=draw(st.integers(1, 2 if tiny else 5)), H=draw(st.integers(1, hw)),
                     W=draw(st.integers(1, hw)), blocks=blocks, outputs=outputs,
                     dtype=draw(DTYPES), nhwc=draw(st.booleans()),
                     seed=draw(st.integers(0, 2 ** 31 - 1)), knobs=draw(cpu_knobs()))


def _chain_ref(c, x, blocks):
    refs, y = [], x
    for args, kw in blocks:
        y = irmb_inference_ref(y, *args, **kw)
        refs.append(y)
    return [refs[i] for i in c.outputs]


def _check_outs(outs, refs, dtype, same_dtype_refs, magnitude_refs):
    assert len(outs) == len(refs)
    for i, (out, ref) in enumerate(zip(outs, refs)):
        assert_matches(out, ref, dtype, f"output {i}",
                       same_dtype_ref=lambda i=i: same_dtype_refs()[i],
                       magnitude_ref=lambda i=i: magnitude_refs()[i])


def check_chain(c, backend, single=False):
    """single: one block through irmb_inference, else the blocks through IRMBChain."""
    note(repr(c))
    dev = _device(backend)
    x = _rand(_gen(c.seed), c.B, c.blocks[0].C, c.H, c.W).to(c.dtype).to(dev)
    if c.nhwc:
        x = x.contiguous(memory_format=torch.channels_last)
    blocks = [_cast(*block_inputs(b), c.dtype, dev) for b in c.blocks]
    blocks64 = [_cast(a, k, torch.float64, torch.device("cpu")) for a, k in blocks]
    refs = _chain_ref(c, x.cpu().double(), blocks64)
    knobs = c.knobs if backend == "cpu" else None
    with emo_kernels.use_backend(backend), poison_empty(), torch.no_grad(), cpu_settings(knobs):
        if single:
            args, kw = blocks[0]
            outs = [emo_kernels.irmb_inference(x, *args, **kw)]
        else:
            chain = emo_kernels.IRMBChain([(tuple(a), k) for a, k in blocks], c.blocks[0].C,
                                          c.dtype, dev)
            outs = chain(x, outputs=c.outputs)
    cpu_blocks = [_cast(a, k, c.dtype, torch.device("cpu")) for a, k in blocks]
    _check_outs(outs, refs, c.dtype, lambda: _chain_ref(c, x.cpu(), cpu_blocks),
                lambda: _chain_ref(c, x.cpu().double().abs(),
                                   [(_abs(a), _abs(k)) for a, k in blocks64]))


@st.composite
def irmb_cases(draw, tiny=False):
    c = draw(chain_cases(st.just(1), tiny))
    return dataclasses.replace(c, outputs=[0])


fuzz_tests("irmb_inference", functools.partial(check_chain, single=True), "irmb",
           cpu=irmb_cases(), torch=irmb_cases(), triton=irmb_cases(tiny=True))
fuzz_tests("irmb_chain", check_chain, "chain", cpu=chain_cases(st.integers(2, 3)),
           torch=chain_cases(st.integers(2, 3)), triton=chain_cases(st.integers(2, 3), tiny=True))


# ----- extreme values ------------------------------------------------------------------------
EXTREMES = [3e38, -3e38, 1e38, -1e38, 1e30, -1e30, 1e10, -1e10, 1e4, -1e4, -80.0, -88.7,
            -100.0, -500.0, 100.0]
NONFINITE = [float("inf"), float("-inf"), float("nan")]


@st.composite
def extreme_values(draw):
    """(values planted into the input, fraction of positions): finite extremes (|x| up to
    3e38), and in some examples +-inf and NaN too."""
    pool = EXTREMES + (NONFINITE if draw(st.booleans()) else [])
    vals = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=5, unique=True))
    return vals, draw(st.sampled_from([0.02, 0.1, 0.5, 1.0]))


def plant(t, vals, frac, seed):
    """t with a fraction of its entries replaced by values from vals (in place on a copy)."""
    g = _gen(seed + 1)
    t = t.clone()
    mask = torch.rand(t.shape, generator=g, dtype=torch.float64) < frac
    pick = torch.randint(len(vals), t.shape, generator=g)
    t[mask] = torch.tensor(vals, dtype=torch.float64)[pick][mask]
    return t


def _l1_rows(w, total=0.9):
    """Rescale each output channel's weights to an L1 norm of `total`: then no partial sum of a
    1x1 or depthwise conv exceeds the largest |input| (no overflow of a sum of finite terms)."""
    if w is None:
        return None
    flat = w.reshape(w.shape[0], -1)
    return (flat * (total / flat.abs().sum(1, keepdim=True).clamp_min(1e-300))).reshape(w.shape)


def _act_grad_sup(act, v, e):
    """An upper bound of |act'(t)| for t in [v - e, v + e] (silu/gelu: <= 1.2 everywhere, and
    tiny far in the negative tail, where |act'| increases with t)."""
    if act == "none":
        return torch.ones_like(v)
    hi = v + e
    if act == "silu":
        s = torch.sigmoid(hi)
        tail = (s * (1 + hi * (1 - s))).abs()
    else:
        tail = (0.5 * torch.erfc(-hi / 2 ** 0.5) + hi * torch.exp(-hi * hi / 2) / (2 * torch.pi) ** 0.5).abs()
    return torch.where(hi < -20, tail.nan_to_num(0.0) * 1.01, torch.full_like(v, 1.2))


def eda_error_bound(args, kw, u, dtype):
    """Per output element: (an error bound, overflow mask) for expand_dwconv_act on float64
    inputs, allowing each stage a relative error u of the magnitudes it sums (first-order
    propagation through the activations), and marking elements where some intermediate sum
    of magnitudes exceeds the dtype's largest finite value (there a kernel may overflow; pass
    x with its non-finite entries zeroed to get the overflow of finite sums only)."""
    F = torch.nn.functional
    big = torch.finfo(dtype).max
    x, w_exp, b_exp, w_dw, b_dw = args
    nn0 = lambda t: t.nan_to_num(nan=float("inf"))  # noqa: E731  (0 * inf = nan -> inf)
    absb = lambda b: 0.0 if b is None else b.abs().reshape(1, -1, 1, 1)  # noqa: E731
    mx = nn0(x.abs())
    if w_exp is None:
        v, Ev, Mv = x, torch.zeros_like(x), mx
        ovf = mx > big
    else:
        w = w_exp.reshape(*w_exp.shape[:2], 1, 1)
        pre = F.conv2d(x, w, b_exp)
        M1 = nn0(F.conv2d(mx, w.abs())) + absb(b_exp)
        E1 = u * M1
        v = activation(pre, kw["act"])
        Ev = nn0(_act_grad_sup(kw["act"], pre, E1) * E1) + u * (nn0(v.abs()) + 0.1)
        # GELU as 0.5 * x * (1 + erf(x / sqrt(2))) has an intermediate of up to 2|x|: torch's
        # own vectorized float32 GELU gives inf above ~1.7e38, so that range counts as overflow
        Mv, ovf = nn0(v.abs()), (M1 > big) | ((kw["act"] == "gelu") & (M1 > big / 2))
    k, s = w_dw.shape[-1], kw["stride"]
    pad = -(-(k - s) // 2)
    dw = lambda t, wt: F.conv2d(t, wt, stride=s, padding=pad, groups=t.shape[1])  # noqa: E731
    Mp = nn0(dw(Mv, w_dw.abs())) + absb(b_dw)
    Ep = nn0(dw(Ev, w_dw.abs())) + u * Mp
    ovf = (dw(ovf.double(), torch.ones_like(w_dw)) > 0) | (Mp > big)
    p = F.conv2d(v, w_dw, b_dw, stride=s, padding=pad, groups=v.shape[1])
    if "running_mean" in kw:  # eval BatchNorm: p * scale + shift
        gamma = kw.get("bn_weight")
        scale = torch.rsqrt(kw["running_var"] + kw["eps"]) * (gamma if gamma is not None else 1.0)
        shift = (kw.get("bn_bias") if kw.get("bn_bias") is not None else 0.0) - kw["running_mean"] * scale
        sc, sh = scale.reshape(1, -1, 1, 1), torch.as_tensor(shift).reshape(1, -1, 1, 1)
        p = p * sc + sh
        Mp = Mp * sc.abs() + sh.abs()
        Ep = Ep * sc.abs() + u * Mp
        ovf = ovf | (Mp > big)
    d = F.silu(p)
    Ez = nn0(_act_grad_sup("silu", p, Ep) * Ep) + u * (nn0(d.abs()) + 0.1)
    Mz = nn0(d.abs())
    if kw["skip"]:
        Mz = Mz + Mv
        Ez = Ez + Ev + u * Mz
        ovf = ovf | (Mz > big)
    return Ez, ovf


def check_extreme(out, ref, bound, ovf, dtype):
    """The extreme-value contract: what the float64 reference gives, element by element.

    * NaN where the reference is NaN (everywhere);
    * elsewhere, outside `ovf`: the reference's +-inf exactly, and finite values within
      `bound + u` (u = TOLERANCE[dtype]: an absolute floor, as `max(|ref|, 1)`-relative checks);
    * inside `ovf` (some intermediate sum of magnitudes exceeds the dtype's range, so a
      kernel in that dtype may overflow where float64 did not -- float32 with inputs near
      3e38): a NaN or +-inf is accepted, a finite value must still be within the bound.
    """
    u = TOLERANCE[dtype]
    out = out.cpu().double()
    ref = ref.double()
    bad = []
    rn, on = torch.isnan(ref), torch.isnan(out)
    m = rn & ~on
    if m.any():
        bad.append(("reference NaN, kernel not", m))
    m = ~rn & ~ovf & on
    if m.any():
        bad.append(("kernel NaN, reference not", m))
    ri = torch.isinf(ref)
    m = ri & ~ovf & (out != ref)
    if m.any():
        bad.append(("reference +-inf, kernel differs", m))
    fin = torch.isfinite(ref) & torch.isfinite(out)
    m = torch.isfinite(ref) & ~ovf & ~torch.isfinite(out)
    if m.any():
        bad.append(("reference finite, kernel not", m))
    err = torch.where(fin, (out - ref).abs(), torch.zeros_like(ref))
    m = fin & (err > bound.nan_to_num(nan=float("inf")) + u)
    if m.any():
        bad.append(("finite value outside the error bound", m))
    if bad:
        lines = []
        for what, m in bad:
            idx = m.nonzero()[:5].tolist()
            ex = ", ".join(f"{tuple(i)}: kernel {out[tuple(i)].item():.6g} ref "
                           f"{ref[tuple(i)].item():.6g} bound {bound[tuple(i)].item():.3g}"
                           for i in idx)
            lines.append(f"{what}: {int(m.sum())} elements, e.g. {ex}")
        raise AssertionError("extreme values:\n  " + "\n  ".join(lines))


@st.composite
def eda_extreme_cases(draw, tiny=False, cpu=False):
    c = draw(eda_cases(tiny=tiny))
    if c.bn == "train":  # batch statistics over +-3e38 overflow by design: eval only here
        c = dataclasses.replace(c, bn="eval")
    if cpu:
        c = dataclasses.replace(c, knobs=draw(cpu_knobs()))
    return c, draw(extreme_values())


def check_eda_extreme(case, backend):
    """expand_dwconv_act with extreme inputs: |x| up to 3e38, +-inf, NaN planted into x.

    The oracle is the float64 reference on the same dtype-rounded inputs, compared element by
    element (check_extreme) against a per-element error bound (eda_error_bound): every
    1x1/depthwise/projection weight row is rescaled to L1 norm 0.9, so a finite sum never
    exceeds the largest |input| and the float64 result is the exact answer up to rounding; a
    float32 kernel may only deviate where an intermediate magnitude leaves float32's range
    (eval BatchNorm scales and the skip/residual additions can do that, and GELU's 2|x|
    intermediate above 1.7e38, which overflows in torch's own float32 GELU), and there only
    to NaN/inf. A same-dtype (float32) torch reference is no better oracle: its own rounding and
    summation order differ from any kernel's, so it cannot arbitrate between finite results.
    """
    c, (vals, frac) = case
    note(repr(c))
    note(f"planted values {vals}, fraction {frac}")
    dev = _device(backend)
    args, kw = eda_inputs(c, w_scale=_l1_rows)
    args[0] = plant(args[0], vals, frac, c.seed)
    args, kw = _cast(args, kw, c.dtype, dev)
    if c.nhwc:
        args[0] = args[0].contiguous(memory_format=torch.channels_last)
    rargs, rkw = _cast(args, kw, torch.float64, torch.device("cpu"))
    with torch.no_grad():
        ref = eda_ref(rargs, rkw)
        bound, _ = eda_error_bound(rargs, rkw, TOLERANCE[c.dtype], c.dtype)
        # overflow of finite sums only: an inf input must still give the reference's inf/NaN
        finite_x = rargs[0].nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
        _, ovf = eda_error_bound([finite_x] + rargs[1:], rkw, TOLERANCE[c.dtype], c.dtype)

    def call():
        with torch.no_grad(), cpu_settings(c.knobs if backend == "cpu" else None):
            return emo_kernels.expand_dwconv_act(*args, **kw)

    out = run_or_refused("expand_dwconv_act", backend, c, call, args, kw)
    if out is not None:
        assert out.shape == ref.shape
        check_extreme(out, ref, bound, ovf, c.dtype)


fuzz_tests("expand_dwconv_act_extreme", check_eda_extreme, "ext_eda",
           cpu=eda_extreme_cases(cpu=True), torch=eda_extreme_cases(),
           triton=eda_extreme_cases(tiny=True), cuda=eda_extreme_cases())


def check_attn_extreme(case, backend):
    """window_attention with extreme values: v holds planted extremes (|v| up to 3e38, +-inf,
    NaN); q and k stay moderate, with the non-finite values of the draw (if any) planted
    sparsely into them. Each output is a softmax-weighted mean of its window's values, so the
    error bound is u * (max |v| over the window's tokens) and no finite intermediate can
    exceed max |v| < float32's range: the float64 reference is the oracle element by element
    (NaN/inf pattern exact, finite values within the bound; see check_extreme)."""
    c, (vals, frac) = case
    note(repr(c))
    note(f"planted values {vals}, fraction {frac}")
    dev = _device(backend)
    qk, v, kp = attn_inputs(c)
    v = plant(v, vals, frac, c.seed)
    nonfin = [x for x in vals if not torch.isfinite(torch.tensor(x))]
    if nonfin:
        qk = plant(qk, nonfin, 0.02, c.seed + 7)
    args, kw = _attn_call(c, qk, v, kp, dev)
    rargs = [_to(t, torch.float64, "cpu") for t in args]
    ref = window_attention_ref(*rargs, **kw)
    # max |v| over each output's window (padded tokens have value 0)
    ws, (H, W) = c.window_size, ref.shape[2:]
    av = torch.nn.functional.pad(rargs[2].abs().nan_to_num(nan=float("inf")),
                                 (0, (-W) % ws, 0, (-H) % ws))
    parts = window_partition(av, ws)
    wmax = parts.amax(-1, keepdim=True).expand_as(parts)
    bound = TOLERANCE[c.dtype] * window_unpartition(wmax, av.shape[2] // ws, av.shape[3] // ws,
                                                    ws)[:, :, :H, :W]

    def call():
        with torch.no_grad():
            return emo_kernels.window_attention(*args, **kw)

    out = run_or_refused("window_attention", backend, c, call, args, kw)
    if out is not None:
        assert out.shape == ref.shape
        check_extreme(out, ref, bound, torch.zeros_like(ref, dtype=torch.bool), c.dtype)


@st.composite
def attn_extreme_cases(draw, tiny=False):
    return draw(attn_cases(tiny=tiny)), draw(extreme_values())


fuzz_tests("window_attention_extreme", check_attn_extreme, "ext_attn",
           cpu=attn_extreme_cases(), torch=attn_extreme_cases(),
           triton=attn_extreme_cases(tiny=True), cuda=attn_extreme_cases())


# ----- zero channel counts (in a subprocess: a crash must fail the test, not kill pytest) ----
@dataclasses.dataclass
class ZeroCase:
    op: str        # expand_dwconv_act | irmb_inference | irmb_chain | window_attention
    zero: str      # which count is 0: Cin | Cmid | Cout | identity_C | C | batch (valid)
    B: int
    C: int
    Cmid: int
    Cout: int
    H: int
    W: int
    k: int
    stride: int
    act: str
    dtype: torch.dtype
    seed: int


@st.composite
def zero_cases(draw):
    op = draw(st.sampled_from(["expand_dwconv_act", "irmb_inference", "irmb_chain",
                               "window_attention"]))
    zeros = {"expand_dwconv_act": ["Cin", "Cmid", "identity_C", "batch"],
             "irmb_inference": ["Cin", "Cmid", "Cout", "identity_C", "batch"],
             "irmb_chain": ["Cin", "Cmid", "Cout", "identity_C", "batch"],
             "window_attention": ["C", "batch"]}[op]
    zero = draw(st.sampled_from(zeros))
    act = "none" if zero == "identity_C" else draw(st.sampled_from(["silu", "gelu", "none"]))
    c = ZeroCase(op=op, zero=zero, B=0 if zero == "batch" else draw(st.integers(1, 3)),
                 C=draw(channels(1, 20)), Cmid=draw(channels(1, 20)), Cout=draw(channels(1, 20)),
                 H=draw(st.integers(1, 12)), W=draw(st.integers(1, 12)),
                 k=draw(st.sampled_from([1, 3, 5, 7])), stride=draw(st.sampled_from([1, 2])),
                 act=act, dtype=draw(DTYPES), seed=draw(st.integers(0, 2 ** 31 - 1)))
    if zero in ("Cin", "identity_C", "C"):
        c.C = 0
    if zero in ("Cmid", "identity_C"):
        c.Cmid = 0
    if zero == "identity_C":
        c.Cmid = c.C
    if zero == "Cout":
        c.Cout = 0
    return c


def _zero_call(c):
    """(run the op once, the float64 reference's result or None when it must be refused)."""
    g = _gen(c.seed)
    ident = c.zero == "identity_C"
    x = _rand(g, c.B, c.C, c.H, c.W)
    if c.op == "window_attention":
        hd = max(c.Cmid, 1)
        C = 0 if c.zero == "C" else hd
        q, k, v = (_rand(g, c.B, C, c.H, c.W) for _ in range(3))
        args = [t.to(c.dtype) for t in (q, k, v)]
        return (lambda: emo_kernels.window_attention(*args, head_dim=hd),
                lambda: window_attention_ref(*[t.double() for t in args], head_dim=hd))
    w_exp = None if ident else _rand(g, c.Cmid, c.C).to(c.dtype)
    w_dw = _rand(g, c.Cmid, 1, c.k, c.k).to(c.dtype)
    b_dw = _rand(g, c.Cmid).to(c.dtype)
    x = x.to(c.dtype)
    act = "none" if ident else c.act
    if c.op == "expand_dwconv_act":
        return (lambda: emo_kernels.expand_dwconv_act(x, w_exp, None, w_dw, b_dw, act=act,
                                                      stride=c.stride),
                lambda: expand_dwconv_act_ref(x.double(), _to(w_exp, torch.float64, "cpu"),
                                              None, w_dw.double(), b_dw.double(), act=act,
                                              stride=c.stride))
    w_proj = _rand(g, c.Cout, c.Cmid).to(c.dtype)
    args = (w_exp, None, w_dw, b_dw, w_proj)
    kw = dict(act=act, stride=c.stride)
    ref = lambda: irmb_inference_ref(x.double(), *[_to(a, torch.float64, "cpu")  # noqa: E731
                                                   for a in args], **kw)
    if c.op == "irmb_inference":
        return lambda: emo_kernels.irmb_inference(x, *args, **kw), ref
    return lambda: emo_kernels.IRMBChain([(args, kw)], c.C, c.dtype, "cpu")(x)[0], ref


def zero_channel_main(backend, n):
    """Child process: n zero-channel examples under `backend`. Zero channel counts must raise
    ValueError (issue #20's fixed contract); zero batch is valid and must give the reference's
    (empty) result. Prints each case before running it, so a crash names its case."""
    failures, seen = [], set()

    def fail(c, why):  # printed at once (one line per op, zero and outcome), so a later crash
        failures.append((c, why))  # still reports them
        key = (c.op, c.zero, why.split(":")[0])
        if key not in seen:
            seen.add(key)
            print("FAIL", repr(c), "->", why, flush=True)

    @settings(max_examples=n)
    @given(c=zero_cases())
    def run(c):
        print("CASE", backend, repr(c), flush=True)
        call, ref = _zero_call(c)
        try:
            with emo_kernels.use_backend(backend), torch.no_grad():
                out = call()
        except ValueError:
            if c.zero != "batch":
                return
            fail(c, "ValueError for a zero batch (valid)")
            return
        except BackendUnavailableError as e:
            if c.zero == "batch":  # a backend without this op/config may refuse, with a reason
                return
            fail(c, f"BackendUnavailableError instead of ValueError: {e}")
            return
        except Exception as e:  # noqa: BLE001
            fail(c, f"{type(e).__name__} instead of "
                                f"{'a result' if c.zero == 'batch' else 'ValueError'}: {e}")
            return
        if c.zero != "batch":
            fail(c, f"no error; returned shape {tuple(out.shape)}")
            return
        r = ref()
        if out.shape != r.shape:
            fail(c, f"zero batch: shape {tuple(out.shape)} != {tuple(r.shape)}")

    run()
    sys.exit(1 if failures else 0)


@pytest.mark.parametrize("backend", ["auto", "cpu", "torch", "triton"])
def test_zero_channels(backend):
    """Zero channel counts (Cin, Cmid, Cout, the identity expansion's C, attention's C) are
    refused with ValueError by every public op on every backend, and zero batch stays valid
    (issue #20, finding 1). Runs in a child process: a SIGFPE there fails this test with the
    case that crashed instead of killing the pytest session."""
    _device(backend)
    here = os.path.dirname(os.path.abspath(__file__))
    tests = os.path.dirname(here)  # conftest
    code = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{here!r}, {tests!r}, {os.path.dirname(tests)!r}]
        import test_fuzz
        test_fuzz.zero_channel_main({backend!r}, {_BUDGET['zero']})
    """)
    env = dict(os.environ, EMO_FUZZ_PROFILE=PROFILE)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=600)
    cases = [ln for ln in p.stdout.splitlines() if ln.startswith("CASE")]
    fails = [ln for ln in p.stdout.splitlines() if ln.startswith("FAIL")]
    if p.returncode < 0:
        import signal
        pytest.fail(f"the child process died with {signal.Signals(-p.returncode).name} after "
                    f"{len(cases)} cases; the last one:\n{cases[-1] if cases else '(none)'}\n"
                    + "\n".join(fails) + f"\nstderr tail:\n{p.stderr[-2000:]}")
    assert p.returncode == 0 and not fails, \
        "\n".join(fails) or f"child failed (rc {p.returncode}):\n{p.stderr[-3000:]}"
