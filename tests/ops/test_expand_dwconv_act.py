"""expand_dwconv_act on every backend (torch, cpu, triton, cuda) vs the float64 reference.

The case tables take the ``kernel_backend`` fixture (tests/conftest.py), so each case runs on
every backend that can run here: without a GPU the Triton kernels run in the interpreter
(TRITON_INTERPRET=1) and the cuda kernels in their host emulation (EMO_KERNELS_CUDA_EMULATE=1);
outputs are NaN-poisoned by the fixture. The cpu backend is inference-only and fp32/fp64: on
it a case checks the forward pass and that the backend refuses gradients / half precision
with a reason. Tests that exist for gradients or training BatchNorm take ``autograd_backend``.

Interpreter facts that shape these tests (docs/toolchain.md):
~0.25 ms per tl op per program, so maps are small and odd; bf16 ``tl.dot`` is broken in the
interpreter, and the Triton kernels upcast dot operands to fp32 there (exact for bf16/fp16
products), so bf16 runs here through that documented upcast and natively on GPU.
"""
import contextlib

import pytest
import torch
import torch.nn as nn

import emo
import emo_kernels
from emo.model import iRMB
from emo_kernels import dispatch
from emo_kernels.backends.triton import interpreted as triton_interpreted
from emo_kernels.reference import expand_dwconv_act_ref
from emo_kernels.testing import TOLERANCE
from conftest import rel_err

DTYPE_NAMES = {torch.float64: "fp64", torch.float32: "fp32", torch.float16: "fp16",
               torch.bfloat16: "bf16"}

# Every distinct non-attention iRMB configuration of EMO-1M/2M/5M/6M:
# (Cin, Cmid, k, stride, act, skip, identity expansion), first model block that has it.
# test_block_configs_are_the_models_ones re-derives this list from the models.
BLOCK_CONFIGS = [
    ((24, 24, 3, 1, "none", False, True), "emo_1m.stage0.1"),
    ((24, 96, 3, 2, "silu", False, False), "emo_1m.stage1.0"),
    ((32, 64, 3, 1, "silu", True, False), "emo_1m.stage1.1"),
    ((32, 160, 3, 2, "silu", False, False), "emo_1m.stage2.0"),
    ((48, 120, 3, 1, "silu", True, False), "emo_1m.stage2.1"),
    ((48, 288, 5, 2, "gelu", False, False), "emo_1m.stage3.0"),
    ((80, 560, 5, 2, "gelu", False, False), "emo_1m.stage4.0"),
    ((120, 840, 5, 2, "gelu", False, False), "emo_2m.stage4.0"),
    ((48, 96, 3, 1, "silu", True, False), "emo_5m.stage1.1"),
    ((48, 288, 3, 2, "silu", False, False), "emo_5m.stage2.0"),
    ((72, 216, 3, 1, "silu", True, False), "emo_5m.stage2.1"),
    ((72, 576, 5, 2, "gelu", False, False), "emo_5m.stage3.0"),
    ((160, 1280, 5, 2, "gelu", False, False), "emo_5m.stage4.0"),
    ((160, 1600, 5, 2, "gelu", False, False), "emo_6m.stage4.0"),
]
# The attention blocks route their value projection through the same op (k5, s1, skip).
ATTN_VALUE_CONFIG = ((80, 240, 5, 1, "gelu", True, False), "emo_1m.stage3.1")
MAPS = [(9, 9), (7, 12)]


def cfg_id(cfg, B, H, W, dtype=None, extra=""):
    cin, cmid, k, s, act, skip, ident = cfg
    parts = [f"B{B}", f"Cin{cin}", f"Cmid{cmid}", f"k{k}", f"s{s}", act, f"skip{int(skip)}",
             f"{H}x{W}"]
    if ident:
        parts.insert(3, "id")
    if dtype is not None:
        parts.append(DTYPE_NAMES[dtype])
    return "-".join(parts) + (f"-{extra}" if extra else "")


def make_inputs(cfg, B, H, W, *, bn=False, b_dw=True, seed=0):
    """float64 master inputs; scaled so activations stay O(1) in every dtype."""
    cin, cmid, k, s, act, skip, ident = cfg
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale)

    t = dict(x=r(B, cin, H, W),
             w_exp=None if ident else r(cmid, cin, 1, 1, scale=cin ** -0.5),
             b_exp=None if ident else r(cmid, scale=0.5),
             w_dw=r(cmid, 1, k, k, scale=1.0 / k),
             b_dw=r(cmid, scale=0.5) if b_dw else None)
    if bn:
        t["bn_weight"] = 0.5 + torch.rand(cmid, generator=g, dtype=torch.float64)
        t["bn_bias"] = r(cmid, scale=0.5)
    return t


def op_args(inputs, cfg, dtype, device, *, memory_format=torch.contiguous_format, grad=True,
            running=None):
    """(args, kwargs) of emo_kernels.expand_dwconv_act for these inputs on ``device``."""
    _, _, _, s, act, skip, _ = cfg
    ts = {n: (None if v is None else v.to(device=device, dtype=dtype)) for n, v in inputs.items()}
    ts["x"] = ts["x"].contiguous(memory_format=memory_format)
    for v in ts.values():
        if v is not None and grad:
            v.requires_grad_(True)
    kw = {n: ts.pop(n) for n in ("bn_weight", "bn_bias") if n in ts}
    if running is not None:
        kw.update(running_mean=running[0], running_var=running[1])
    return ts, dict(kw, act=act, stride=s, skip=skip)


def run_op(inputs, cfg, dtype, device, *, memory_format=torch.contiguous_format, cot_seed=1,
           running=None, grad=True, **kw):
    """Forward (+ backward with grad=True) of emo_kernels.expand_dwconv_act on the selected
    backend; returns z, the gradients of sum(z * r) for every given input, and r."""
    ts, kw0 = op_args(inputs, cfg, dtype, device, memory_format=memory_format, grad=grad,
                      running=running)
    with torch.set_grad_enabled(grad):
        z = emo_kernels.expand_dwconv_act(ts["x"], ts["w_exp"], ts["b_exp"], ts["w_dw"],
                                          ts["b_dw"], **kw0, **kw)
    r = torch.randn(z.shape, generator=torch.Generator().manual_seed(cot_seed),
                    dtype=torch.float64).to(device=device, dtype=dtype)
    if not grad:
        return z, {}, r
    names = [n for n, v in ts.items() if v is not None] + [
        n for n in ("bn_weight", "bn_bias") if n in kw0]
    leaves = {**ts, **kw0}
    grads = torch.autograd.grad((z * r).sum(), [leaves[n] for n in names])
    return z, dict(zip(names, grads)), r


def refusal(backend, inputs, cfg, dtype, *, grad, running=None, memory_format=None, **kw):
    """Why ``backend`` refuses this call (None: it runs it), from the public dispatch API."""
    ts, kw0 = op_args(inputs, cfg, dtype, backend.device, grad=grad, running=running)
    return dispatch.cannot_run("expand_dwconv_act", backend.name, ts["x"], ts["w_exp"],
                               ts["b_exp"], ts["w_dw"], ts["b_dw"], **kw0, **kw)


def run_ref(inputs, cfg, dtype, r, *, running=None, **kw):
    """The float64 reference on the same (dtype-rounded) inputs and cotangent."""
    _, _, _, s, act, skip, _ = cfg
    ts = {n: (None if v is None else v.to(dtype).double().requires_grad_(True))
          for n, v in inputs.items()}
    extra = {n: ts[n] for n in ("bn_weight", "bn_bias") if n in ts}
    if running is not None:
        extra.update(running_mean=running[0], running_var=running[1])
    z = expand_dwconv_act_ref(ts["x"], ts["w_exp"], ts["b_exp"], ts["w_dw"], ts["b_dw"],
                              act=act, stride=s, skip=skip, **extra, **kw)
    names = [n for n, v in ts.items() if v is not None]
    grads = torch.autograd.grad((z * r.cpu().double()).sum(), [ts[n] for n in names])
    return z, dict(zip(names, grads))


def assert_close(name, out, ref, dtype):
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite values (unwritten output?)"
    err = rel_err(out.cpu(), ref)
    assert err <= TOLERANCE[dtype], f"{name}: relative error {err:.3g} > {TOLERANCE[dtype]:.1g}"


def check_case(backend, cfg, B, H, W, dtype, *, bn=False, running=None, **kw):
    """One case on ``backend`` vs the float64 reference: the output and, where the backend has
    autograd, every input's gradient (an inference-only backend runs the forward without grad
    and must refuse the gradient call with a reason). A dtype the backend does not run must be
    refused with a reason; returns None then, else z. ``running``: float64 (mean, var) for
    eval-mode BatchNorm."""
    inputs = make_inputs(cfg, B, H, W, bn=bn)
    if dtype not in backend.dtypes:
        assert refusal(backend, inputs, cfg, dtype, grad=False, **kw), \
            f"{backend.name} runs {dtype}, which the test expects it to refuse"
        return None
    if not backend.autograd:
        assert refusal(backend, inputs, cfg, dtype, grad=True, **kw), \
            f"{backend.name} accepts a call that needs autograd"
    dev_running = None if running is None else tuple(t.to(backend.device, dtype) for t in running)
    z, grads, r = run_op(inputs, cfg, dtype, backend.device, grad=backend.autograd,
                         running=dev_running, **kw)
    assert z.dtype == dtype
    kw.pop("memory_format", None)
    ref_running = None if running is None else tuple(t.to(dtype).double() for t in running)
    z_ref, g_ref = run_ref(inputs, cfg, dtype, r, running=ref_running, **kw)
    assert_close("z", z, z_ref, dtype)
    if backend.autograd:
        assert set(grads) == set(g_ref)
        for n in g_ref:
            assert grads[n].dtype == dtype, n
            assert_close(f"grad {n}", grads[n], g_ref[n], dtype)
    return z


# ----------------------------------------------------------------------- model configurations
def test_block_configs_are_the_models_ones():
    """BLOCK_CONFIGS is exactly the set of non-attention iRMB configurations of the 4 models."""
    found = {}
    for name in emo.list_models("emo"):
        model = emo.create_model(name, num_classes=0)
        for bname, blk in model.named_modules():
            if isinstance(blk, iRMB) and not blk.attn:
                w = blk.conv_local.conv.weight
                ident = isinstance(blk.v, nn.Identity)
                cin = w.shape[0] if ident else blk.v.conv.weight.shape[1]
                act = "none" if ident else blk.act
                found.setdefault((cin, w.shape[0], w.shape[-1], blk.stride, act, blk.has_skip,
                                  ident), f"{name}.{bname}")
    assert found == dict(BLOCK_CONFIGS)


def _batch(cfg):  # batch 1 for the widest blocks keeps interpreter time down
    return 1 if cfg[1] > 600 else 2


BLOCK_CASES = [pytest.param(cfg, _batch(cfg), *MAPS[i % 2],
                            id=f"{src}-" + cfg_id(cfg, _batch(cfg), *MAPS[i % 2]))
               for i, (cfg, src) in enumerate(BLOCK_CONFIGS + [ATTN_VALUE_CONFIG])]


@pytest.mark.parametrize("cfg,B,H,W", BLOCK_CASES)
def test_block_config_fp32(kernel_backend, cfg, B, H, W):
    """Real channel counts of every EMO block configuration, forward and backward, fp32."""
    check_case(kernel_backend, cfg, B, H, W, torch.float32)


MULTI_CASES = [pytest.param(cfg, H, W, id=cfg_id(cfg, 2, H, W, extra="blocks16"))
               for cfg, H, W in [((20, 24, 3, 1, "silu", True, False), 7, 6),
                                 ((20, 24, 5, 2, "gelu", False, False), 9, 7),
                                 ((20, 20, 3, 1, "none", False, True), 7, 6)]]
MULTI_BN_CFG = (20, 24, 3, 1, "silu", True, False)


def _small_triton_blocks(name, monkeypatch):
    """triton: 16-wide blocks, so small maps take the multi-tile paths."""
    if name == "triton":
        mod = pytest.importorskip("emo_kernels.backends.triton.expand_dwconv_act")
        monkeypatch.setattr(mod, "MAX_BLOCKS_INTERPRETER", (16, 16, 16))
        monkeypatch.setattr(mod, "MAX_BLOCKS_GPU", (16, 16, 16))


@pytest.mark.parametrize("cfg,H,W", MULTI_CASES)
def test_multi_tile_paths(kernel_backend, monkeypatch, cfg, H, W):
    """16-wide blocks: several pixel tiles per image (a partial last one), several channel
    blocks and input-channel chunks -- the paths EMO's real sizes take on GPU."""
    _small_triton_blocks(kernel_backend.name, monkeypatch)
    check_case(kernel_backend, cfg, 2, H, W, torch.float32)


def test_multi_tile_bn_training(autograd_backend, monkeypatch):
    """The multi-tile paths with training BatchNorm (per-tile partial sums)."""
    _small_triton_blocks(autograd_backend.name, monkeypatch)
    device, cfg, H, W = autograd_backend.device, MULTI_BN_CFG, 7, 6
    inputs = make_inputs(cfg, 2, H, W, bn=True, b_dw=False)
    running = (torch.zeros(cfg[1], device=device), torch.ones(cfg[1], device=device))
    z, grads, r = run_op(inputs, cfg, torch.float32, device, running=running, bn_training=True)
    running_ref = (torch.zeros(cfg[1], dtype=torch.float64), torch.ones(cfg[1], dtype=torch.float64))
    z_ref, g_ref = run_ref(inputs, cfg, torch.float32, r, running=running_ref, bn_training=True)
    assert_close("z", z, z_ref, torch.float32)
    for n in g_ref:
        assert_close(f"grad {n}", grads[n], g_ref[n], torch.float32)
    assert_close("running_mean", running[0], running_ref[0], torch.float32)
    assert_close("running_var", running[1], running_ref[1], torch.float32)


# Reduced channel counts (not powers of two) that keep every code path, in low precision.
SMALL = {
    "stem": (12, 12, 3, 1, "none", False, True),
    "k3s2": (12, 28, 3, 2, "silu", False, False),
    "k3s1skip": (12, 20, 3, 1, "silu", True, False),
    "k5s2gelu": (10, 36, 5, 2, "gelu", False, False),
    "k5s1skip": (10, 24, 5, 1, "gelu", True, False),
    "k3s1none": (6, 18, 3, 1, "none", False, False),
}
LOWP_CASES = [pytest.param(SMALL[n], dt, id=cfg_id(SMALL[n], 2, *MAPS[i % 2], dt))
              for i, n in enumerate(SMALL) for dt in (torch.float16, torch.bfloat16)]


@pytest.mark.parametrize("cfg,dtype", LOWP_CASES)
def test_low_precision(kernel_backend, cfg, dtype):
    i = list(SMALL.values()).index(cfg)
    check_case(kernel_backend, cfg, 2, *MAPS[i % 2], dtype)


@pytest.mark.parametrize("B,H,W", [(1, 1, 1), (3, 3, 5), (1, 2, 2), (2, 17, 6)],
                         ids=lambda v: str(v))
@pytest.mark.parametrize("name", ["k3s2", "k5s1skip"])
def test_batch_and_map_sizes(kernel_backend, name, B, H, W):
    """Batch 1 and 3, maps smaller than the kernel, 1x1, more pixels than one tile."""
    check_case(kernel_backend, SMALL[name], B, H, W, torch.float32)


@pytest.mark.parametrize("name", ["k3s1skip", "k5s2gelu", "stem"])
def test_channels_last(kernel_backend, name):
    """channels_last input: correct values; the output keeps channels_last on every backend
    but cuda, whose kernels compute in (and return) NCHW."""
    z = check_case(kernel_backend, SMALL[name], 2, 7, 12, torch.float32,
                   memory_format=torch.channels_last)
    fmt = torch.contiguous_format if kernel_backend.name == "cuda" else torch.channels_last
    assert z.is_contiguous(memory_format=fmt)


def test_inference_allocates_only_the_output(monkeypatch):
    """No-grad forward: the activation-sized buffers are v, written once by the expansion GEMM
    (issue #14's D1 kernels: stride 1 here, so as large as z), and z; p never hits memory."""
    pytest.importorskip("triton")
    if not (torch.cuda.is_available() or triton_interpreted()):
        pytest.skip("needs a GPU or TRITON_INTERPRET=1")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = SMALL["k3s1skip"]
    t = {n: (v.float().to(device) if v is not None else None)
         for n, v in make_inputs(cfg, 2, 9, 9).items()}
    sizes, orig = [], torch.empty

    def empty(*a, **k):
        out = orig(*a, **k)
        sizes.append(out.numel())
        return out
    monkeypatch.setattr(torch, "empty", empty)
    with torch.no_grad(), emo_kernels.use_backend("triton"):
        z = emo_kernels.expand_dwconv_act(t["x"], t["w_exp"], t["b_exp"], t["w_dw"], t["b_dw"],
                                          act="silu", stride=1, skip=True)
    monkeypatch.undo()
    big = [n for n in sizes if n >= t["x"].numel()]
    v_numel = z.numel() // z.shape[1] * t["w_dw"].shape[0]
    assert big == [v_numel, z.numel()], sizes


# ------------------------------------------------------------------------ BatchNorm training
BN_CASES = [pytest.param(SMALL[n], dt, id=cfg_id(SMALL[n], 2, 9, 7, dt, "bntrain"))
            for n, dt in [("stem", torch.float32), ("k3s2", torch.float32),
                          ("k3s1skip", torch.float32), ("k5s2gelu", torch.float32),
                          ("k5s1skip", torch.float32), ("k3s1skip", torch.float16)]]


@pytest.mark.parametrize("cfg,dtype", BN_CASES)
def test_bn_training(autograd_backend, cfg, dtype):
    """Train-mode BN between dwconv and SiLU: z, grads (incl. BN affine) and running stats
    equal F.batch_norm's. b_dw=None as in the model (a bias before train-mode BN has a zero
    gradient, which relative errors cannot compare; gradcheck covers it)."""
    device = autograd_backend.device
    inputs = make_inputs(cfg, 2, 9, 7, bn=True, b_dw=False)
    cmid = cfg[1]
    rm0 = torch.randn(cmid, dtype=torch.float64) * 0.1
    rv0 = torch.rand(cmid, dtype=torch.float64) + 0.5
    stat_dtype = torch.float32 if dtype == torch.float16 else dtype  # as BN buffers in AMP
    running = (rm0.to(device, stat_dtype), rv0.to(device, stat_dtype))
    z, grads, r = run_op(inputs, cfg, dtype, device, running=running, bn_training=True,
                         momentum=0.3, eps=1e-6)
    running_ref = (rm0.to(stat_dtype).double(), rv0.to(stat_dtype).double())
    z_ref, g_ref = run_ref(inputs, cfg, dtype, r, running=running_ref, bn_training=True,
                           momentum=0.3, eps=1e-6)
    assert_close("z", z, z_ref, dtype)
    assert set(grads) == set(g_ref) and "bn_weight" in grads
    for n in g_ref:
        assert_close(f"grad {n}", grads[n], g_ref[n], dtype)
    # the torch path rounds the pre-norm output to x's dtype (as nn.Conv2d + nn.BatchNorm2d
    # under autocast do), cuda and triton the expanded activations v (written once to memory
    # between their kernels), so every backend's statistics carry x's dtype's precision.
    stat_tol = dtype
    assert_close("running_mean", running[0], running_ref[0], stat_tol)
    assert_close("running_var", running[1], running_ref[1], stat_tol)


def test_bn_training_without_running_stats_or_affine(autograd_backend):
    device = autograd_backend.device
    cfg = SMALL["k3s1skip"]
    inputs = make_inputs(cfg, 2, 9, 7, b_dw=False)
    z, grads, r = run_op(inputs, cfg, torch.float32, device, bn_training=True)
    z_ref, g_ref = run_ref(inputs, cfg, torch.float32, r, bn_training=True)
    assert_close("z", z, z_ref, torch.float32)
    for n in g_ref:
        assert_close(f"grad {n}", grads[n], g_ref[n], torch.float32)


def test_bn_eval_stats(kernel_backend):
    """BN with running stats in eval mode (the op folds it): outputs and affine grads."""
    cfg = SMALL["k5s1skip"]
    g = torch.Generator().manual_seed(3)
    running = (torch.randn(cfg[1], generator=g, dtype=torch.float64) * 0.1,
               torch.rand(cfg[1], generator=g, dtype=torch.float64) + 0.5)
    check_case(kernel_backend, cfg, 2, 7, 12, torch.float32, bn=True, running=running)


# ------------------------------------------------------------------------------- gradcheck
GC_CASES = {
    "k3s1skip-silu": ((3, 5, 3, 1, "silu", True, False), {}),
    "k5s2-gelu": ((3, 4, 5, 2, "gelu", False, False), {}),
    "stem-id": ((4, 4, 3, 1, "none", False, True), {}),
    "k3s2-none-bntrain": ((3, 5, 3, 2, "none", False, False), {"bn": True}),
    "k3s1skip-gelu-bntrain": ((3, 4, 3, 1, "gelu", True, False), {"bn": True}),
}


@pytest.mark.parametrize("name", list(GC_CASES))
def test_gradcheck(autograd_backend, name):
    """torch.autograd.gradcheck in float64 on tiny shapes, every differentiable input
    (fast_mode: the interpreter makes full Jacobians too slow)."""
    device = autograd_backend.device
    cfg, opts = GC_CASES[name]
    bn = opts.get("bn", False)
    inputs = make_inputs(cfg, 2, 5, 6, bn=bn)
    names = [n for n, v in inputs.items() if v is not None]
    vals = [inputs[n].to(device).requires_grad_(True) for n in names]
    _, _, _, s, act, skip, _ = cfg

    def f(*args):
        d = dict(zip(names, args))
        extra = {n: d[n] for n in ("bn_weight", "bn_bias") if n in d}
        return emo_kernels.expand_dwconv_act(d["x"], d.get("w_exp"), d.get("b_exp"), d["w_dw"],
                                             d.get("b_dw"), act=act, stride=s, skip=skip,
                                             bn_training=bn, **extra)
    assert torch.autograd.gradcheck(f, vals, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


# ------------------------------------------------------------------- registration, dispatch
def _triton_module():
    pytest.importorskip("triton")
    from emo_kernels.backends.triton import expand_dwconv_act as mod
    return mod


def _opcheck_device():
    if torch.cuda.is_available():
        return torch.device("cuda")
    if not triton_interpreted():
        pytest.skip("needs a GPU or TRITON_INTERPRET=1")
    return torch.device("cpu")


def test_triton_bn_training_needs_two_values_per_channel():
    """As F.batch_norm: one value per channel in training is an error (checked from the shapes
    before the op, so under fake tensors / torch.compile too)."""
    _triton_module()
    t = dict(dtype=torch.float64, device=_opcheck_device())
    with emo_kernels.use_backend("triton"), pytest.raises(ValueError, match="more than 1 value"):
        emo_kernels.expand_dwconv_act(torch.randn(1, 3, 1, 1, **t), torch.randn(4, 3, **t), None,
                                      torch.randn(4, 1, 3, 3, **t), bn_training=True)


def test_weight_gradient_split_k_fills_an_h200(monkeypatch):
    """g_w_exp's split-K grid on EMO-5M's expansions at 224, batch 256 (GPU tiles): at least
    264 programs (2 per SM of an H200) in every block, the splits covering every pixel once;
    the interpreter splits in two where it can (the tests above run that path)."""
    mod = _triton_module()
    from bench.shapes import irmb_specs
    monkeypatch.setattr(mod, "interpreted", lambda: False)
    for name, spec in irmb_specs("emo_5m"):
        shapes = dict(spec.tensors)
        if shapes["w_exp"] is None:
            continue
        cmid, cin = shapes["w_exp"][:2]
        npix = 256 * spec.H * spec.W
        bp, bc, bk = mod.gemm_blocks(spec.H * spec.W, cmid, cin)
        bp, bk = mod.gw_blocks(bp, bk)
        splits, chunk = mod.gw_splits(npix, cmid, cin, bp, bc, bk)
        programs = -(-cmid // bc) * -(-cin // bk) * splits
        assert programs >= 264, (name, programs)
        assert chunk % bp == 0 and (splits - 1) * chunk < npix <= splits * chunk, name
    monkeypatch.setattr(mod, "interpreted", lambda: True)
    assert mod.gw_splits(2 * 5 * 6, 20, 12, 32, 32, 16)[0] == 2


@pytest.mark.parametrize("bn_training", [False, True], ids=["plain", "bntrain"])
def test_opcheck(bn_training):
    """Schema, autograd registration, fake (meta) function and AOT dispatch of the custom ops.

    The ops are torch.library.custom_op's whose bodies launch Triton kernels; their fake
    functions are plain Python, so opcheck's fake-tensor and AOT tests run on CPU too (the
    toolchain's CPU limitation is for triton_op/wrap_triton tracing *into* kernels).
    """
    mod = _triton_module()
    dev = _opcheck_device()
    cfg = (3, 5, 3, 1, "silu", True, False)
    t = make_inputs(cfg, 2, 5, 6, bn=bn_training)
    a = lambda n: None if t.get(n) is None else t[n].float().to(dev).requires_grad_(True)  # noqa: E731
    args = (a("x"), a("w_exp").flatten(1).detach().requires_grad_(True), a("b_exp"), a("w_dw"),
            a("b_dw"), a("bn_weight"), a("bn_bias"), "silu", 1, True, bn_training, 1e-6, True)
    torch.library.opcheck(mod.expand_dwconv_act_triton_op, args)
    z, p, mean, rstd, _, _ = mod.expand_dwconv_act_triton_op(*args)
    gz = torch.randn_like(z)
    bargs = (gz, args[0].detach(), args[1].detach(), args[2].detach(), args[3].detach(), p.detach(),
             mean.detach(), rstd.detach(), None if args[5] is None else args[5].detach(),
             None if args[6] is None else args[6].detach(), "silu", 1, True, bn_training)
    torch.library.opcheck(mod.expand_dwconv_act_triton_backward_op, bargs,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_torch_compile_fullgraph(autograd_backend):
    """torch.compile(fullgraph=True) traces the op (fake functions, autograd, the running-stat
    update outside the op) in training mode; compiled == eager reference. On CPU the
    'aot_eager' backend runs the traced graphs (inductor would only add C++ compile time)."""
    device = autograd_backend.device
    cfg = SMALL["k3s1skip"]
    inputs = make_inputs(cfg, 2, 7, 9, bn=True, b_dw=False)
    _, _, _, s, act, skip, _ = cfg
    ts = {n: v.float().to(device).requires_grad_(True) for n, v in inputs.items() if v is not None}
    rm, rv = torch.zeros(cfg[1], device=device), torch.ones(cfg[1], device=device)

    def f(x, w_exp, b_exp, w_dw, bn_weight, bn_bias, rm, rv):
        return emo_kernels.expand_dwconv_act(x, w_exp, b_exp, w_dw, None, act=act, stride=s,
                                             skip=skip, bn_weight=bn_weight, bn_bias=bn_bias,
                                             running_mean=rm, running_var=rv, bn_training=True)
    names = ["x", "w_exp", "b_exp", "w_dw", "bn_weight", "bn_bias"]
    compiled = torch.compile(f, fullgraph=True,
                             backend="inductor" if device.type == "cuda" else "aot_eager")
    z = compiled(*[ts[n] for n in names], rm, rv)
    r = torch.randn(z.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = torch.autograd.grad((z * r.float().to(device)).sum(), [ts[n] for n in names])
    rm_ref, rv_ref = torch.zeros(cfg[1], dtype=torch.float64), torch.ones(cfg[1], dtype=torch.float64)
    z_ref, g_ref = run_ref(inputs, cfg, torch.float32, r, running=(rm_ref, rv_ref), bn_training=True)
    assert_close("z", z, z_ref, torch.float32)
    for n, g in zip(names, grads):
        assert_close(f"grad {n}", g, g_ref[n], torch.float32)
    assert_close("running_mean", rm, rm_ref, torch.float32)
    assert_close("running_var", rv, rv_ref, torch.float32)


def test_can_run_reasons(monkeypatch):
    pytest.importorskip("triton")
    cfg = (3, 5, 3, 1, "silu", False, False)
    t = make_inputs(cfg, 1, 5, 5)
    args = (t["x"].float(), t["w_exp"].float(), t["b_exp"].float(), t["w_dw"].float(),
            t["b_dw"].float())
    explain = emo_kernels.explain("expand_dwconv_act", *args)
    # auto never picks the Triton interpreter for CPU tensors
    assert "interpreter" in explain["triton"] and explain["torch"] is None
    assert dispatch.which("expand_dwconv_act", *args) != "triton"
    w7 = torch.randn(5, 1, 7, 7)
    with emo_kernels.use_backend("triton"):
        with pytest.raises(emo_kernels.BackendUnavailableError, match="kernel size 7"):
            emo_kernels.expand_dwconv_act(*args[:3], w7, None)
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with emo_kernels.use_backend("triton"):
            with pytest.raises(emo_kernels.BackendUnavailableError, match="TRITON_INTERPRET"):
                emo_kernels.expand_dwconv_act(*args)


# ----------------------------------------------------------------------------- whole model

# In train mode the stem conv bias and the stem BN affine are cancelled by the train-mode BN
# that follows the identity stem block (no skip): their exact gradient is 0 and both fp32
# runs return rounding noise, so they are compared against the largest gradient of the stem
# conv weight instead of their own (zero) scale.
ZERO_GRAD_IN_TRAIN = ("stage0.0.convs.0.0.bias", "stage0.0.convs.0.1.weight",
                      "stage0.0.convs.0.1.bias")


@pytest.mark.slow
def test_whole_model_emo_1m(autograd_backend):
    """emo_1m(fused=True) with this backend for expand_dwconv_act (window_attention on the
    torch reference) equals fused=False: eval logits, one training step's grads and BN running stats;
    every iRMB (stem, non-attention, attention value path) goes through this backend."""
    name, device = autograd_backend
    torch.manual_seed(0)
    ref = emo.emo_1m(drop_path_rate=0.0).to(device)
    fused = emo.emo_1m(drop_path_rate=0.0, fused=True).to(device)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 64, 64, device=device)

    logs = []

    def per_op():  # this backend for this op only; window_attention stays on the reference
        stack = contextlib.ExitStack()
        stack.enter_context(emo_kernels.use_backend("torch"))
        stack.enter_context(emo_kernels.use_backend(name, ops=["expand_dwconv_act"]))
        logs.append(stack.enter_context(dispatch.record_dispatch()))
        return stack

    def n_calls():  # expand_dwconv_act calls this backend served
        return sum(log.count(("expand_dwconv_act", name)) for log in logs)

    ref.eval(), fused.eval()
    with torch.no_grad(), per_op():
        out = fused(x)
    with torch.no_grad():
        out_ref = ref(x)
    assert rel_err(out, out_ref) < 1e-4
    n_blocks = sum(isinstance(m, iRMB) for m in fused.modules())
    assert n_calls() == n_blocks == 16

    ref.train(), fused.train()
    with per_op():
        fused(x).square().mean().backward()
    ref(x).square().mean().backward()
    assert n_calls() == 2 * n_blocks
    params = dict(fused.named_parameters())
    scale0 = ref.stage0[0].convs[0][0].weight.grad.abs().max()
    for n, p_ref in ref.named_parameters():
        g, g_ref = params[n].grad, p_ref.grad
        assert g is not None and torch.isfinite(g).all(), n
        if n in ZERO_GRAD_IN_TRAIN:
            assert ((g - g_ref).abs().max() / scale0).item() < 1e-4, n
        else:
            assert rel_err(g, g_ref) < 1e-4, n
    bufs = dict(fused.named_buffers())
    for n, b_ref in ref.named_buffers():
        if b_ref.is_floating_point():
            assert rel_err(bufs[n], b_ref) < 1e-4, n
        else:
            assert torch.equal(bufs[n], b_ref), n
