"""The CUDA kernels' math against the float64 reference. Here (no GPU) on CPU:
torch.ops.emo_kernels_cuda_emu runs the very same element functions as the GPU kernels
(csrc/*.cu, `__host__ __device__`, no shared memory) in a host loop, through the same binding
and the same autograd orchestration (emulate=True).

What this does NOT check: anything specific to the GPU (launch configuration, memory
coalescing, races, device-side fp16/bf16 intrinsics, sm_80/sm_90 code generation). Those are
checked on a GPU machine, where the `gpu` cases run the real kernels on the same inputs (and
the shared op tests exercise the cuda backend). Emulated outputs are NaN-poisoned by the
binding, so unwritten elements fail the comparisons.
"""
import os

import pytest
import torch

from emo_kernels.reference import expand_dwconv_act_ref, window_attention_ref
from emo_kernels.testing import TOLERANCE

OPT_OUT = "EMO_KERNELS_SKIP_CUDA_BUILD"


@pytest.fixture(scope="module", autouse=True)
def ext():
    """Same policy as tests/test_cuda_build.py: a missing extension fails unless opted out."""
    if os.environ.get(OPT_OUT, "0") not in ("", "0"):
        pytest.skip(f"{OPT_OUT} is set: the CUDA extension was deliberately not built")
    try:
        import emo_kernels._C as C
    except ImportError as e:
        pytest.fail(f"the CUDA extension emo_kernels._C is not built ({e}); build it with "
                    f"`pip install -e . --no-build-isolation` or set {OPT_OUT}=1 to opt out",
                    pytrace=False)
    return C


@pytest.fixture(params=["emu", "gpu"])
def mode(request):
    """(device, emulate): the host emulation here, the real kernels on a GPU machine."""
    if request.param == "gpu":
        if not torch.cuda.is_available():
            pytest.skip("needs a GPU: runs the real CUDA kernels on the same cases (here only "
                        "their host emulation runs)")
        return torch.device("cuda"), False
    return torch.device("cpu"), True


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


# (B, Cin, Cmid, H, W, k, stride, skip, act, bn); Cin=None: identity expansion (stem block)
EDC_CASES = [
    (2, 3, 6, 9, 11, 3, 1, True, "silu", "none"),
    (2, 4, 8, 13, 13, 5, 1, True, "gelu", "train"),
    (2, 4, 6, 7, 6, 3, 2, False, "silu", "eval"),
    (1, 5, 10, 9, 17, 5, 2, False, "gelu", "train"),
    # maps smaller than the kernel. (Batch statistics over only B*H*W = 2 values per channel
    # are ill-conditioned -- a random channel with p1 ~= p2 amplifies rounding by 1/var -- so
    # the 1x1 map uses eval BatchNorm and the train case takes 3*2*3 values per channel.)
    (2, 3, 5, 1, 1, 3, 1, True, "silu", "eval"),
    (3, 3, 5, 2, 3, 3, 1, True, "silu", "train"),
    (2, None, 4, 9, 9, 3, 1, False, "none", "eval"),
]


def edc_id(c):
    B, cin, cmid, H, W, k, s, skip, act, bn = c
    return f"B{B}-C{cin or 'id'}x{cmid}-H{H}W{W}-k{k}-s{s}-{'skip' if skip else 'noskip'}-{act}-bn_{bn}"


def edc_inputs(case, dtype):
    B, cin, cmid, H, W, k, stride, skip, act, bn = case
    g = torch.Generator().manual_seed(1)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to(dtype)  # noqa: E731
    x = r(B, cin or cmid, H, W)
    w_exp = None if cin is None else r(cmid, cin, 1, 1, scale=cin ** -0.5)
    b_exp = None if cin is None else r(cmid)
    w_dw, b_dw = r(cmid, 1, k, k, scale=0.3), (None if cin is None else r(cmid))
    tensors = dict(x=x, w_exp=w_exp, b_exp=b_exp, w_dw=w_dw, b_dw=b_dw)
    kw = dict(act=act, stride=stride, skip=skip)
    if bn != "none":
        tensors.update(bn_weight=r(cmid).abs() + 0.5, bn_bias=r(cmid))
        kw.update(running_mean=torch.randn(cmid, generator=g).to(dtype),
                  running_var=(torch.rand(cmid, generator=g) + 0.5).to(dtype),
                  bn_training=bn == "train")
    return tensors, kw


def run_edc(fn, tensors, kw, dtype=None, device="cpu", **extra):
    t = {n: (None if v is None else v.to(device, dtype).detach().requires_grad_())
         for n, v in tensors.items()}
    kw = {n: (v.to(device, dtype).clone() if torch.is_tensor(v) else v)
          for n, v in kw.items()}  # running stats: fresh copies, updated in place
    z = fn(t["x"], t["w_exp"], t["b_exp"], t["w_dw"], t["b_dw"],
           **{n: t[n] for n in ("bn_weight", "bn_bias") if n in t}, **kw, **extra)
    gz = torch.randn(z.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (z * gz.to(z.device, z.dtype)).sum().backward()
    grads = {n: v.grad.cpu() for n, v in t.items() if v is not None}
    stats = {n: kw[n].cpu() for n in ("running_mean", "running_var") if n in kw}
    z = z.detach().cpu()
    return z, grads, stats


@pytest.mark.parametrize("case", EDC_CASES, ids=edc_id)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16],
                         ids=str)
def test_expand_dwconv_act_matches_reference(case, dtype, mode):
    from emo_kernels.backends.cuda import expand_dwconv_act_cuda
    device, emulate = mode
    tensors, kw = edc_inputs(case, dtype)  # the reference sees the same (rounded) inputs
    z, grads, stats = run_edc(expand_dwconv_act_cuda, tensors, kw, dtype, device,
                              emulate=emulate)
    zr, gr, sr = run_edc(expand_dwconv_act_ref, tensors, kw, torch.float64)
    tol = TOLERANCE[dtype]
    assert z.dtype == dtype and z.shape == zr.shape
    assert rel_err(z, zr) <= tol, f"output: {rel_err(z, zr)}"
    for n in gr:
        assert grads[n].dtype == dtype and grads[n].shape == gr[n].shape, n
        if n == "b_dw" and case[-1] == "train":
            # BatchNorm with batch statistics cancels a per-channel shift: this gradient is
            # exactly zero, so compare it in absolute terms at the scale of the BN gradients.
            err = (grads[n].double() - gr[n]).abs().max() / gr["bn_bias"].abs().max()
            assert err <= tol, f"grad {n}: {err}"
            continue
        assert rel_err(grads[n], gr[n]) <= tol, f"grad {n}: {rel_err(grads[n], gr[n])}"
    for n in sr:
        assert rel_err(stats[n], sr[n]) <= tol, f"{n}: {rel_err(stats[n], sr[n])}"


@pytest.mark.parametrize("case", [EDC_CASES[1], EDC_CASES[2], EDC_CASES[5]], ids=edc_id)
def test_expand_dwconv_act_gradcheck(case, mode):
    from emo_kernels.backends.cuda import expand_dwconv_act_cuda
    device, emulate = mode
    B, cin, cmid, H, W, k, stride, skip, act, bn = case
    small = (1 if bn == "none" else 2, cin and 2, 3, 5, 4, k, stride, skip, act, bn)
    tensors, kw = edc_inputs(small, torch.float64)
    tensors = {n: None if v is None else v.to(device) for n, v in tensors.items()}
    kw = {n: v.to(device) if torch.is_tensor(v) else v for n, v in kw.items()}
    names = [n for n, v in tensors.items() if v is not None]

    def f(*args):
        t = dict(tensors, **dict(zip(names, args)))
        kw2 = {n: (v.clone() if torch.is_tensor(v) else v) for n, v in kw.items()}
        return expand_dwconv_act_cuda(t["x"], t["w_exp"], t["b_exp"], t["w_dw"], t["b_dw"],
                                      bn_weight=t.get("bn_weight"), bn_bias=t.get("bn_bias"),
                                      emulate=emulate, **kw2)

    args = [tensors[n].detach().requires_grad_() for n in names]
    assert torch.autograd.gradcheck(f, args)


# (B, C, H, W, head_dim): padded both ways, no padding, smaller than a window, EMO head dims
WA_CASES = [(2, 6, 9, 8, 3), (1, 4, 7, 7, 2), (1, 42, 3, 5, 21), (2, 40, 16, 9, 20),
            (1, 64, 8, 8, 32), (1, 64, 5, 6, 64)]


def wa_id(c):
    return "B{}-C{}-H{}W{}-d{}".format(*c)


def run_wa(fn, qk, v, kp, head_dim, dtype, device="cpu", **extra):
    qk, v, kp = (t.to(device, dtype).detach().requires_grad_() for t in (qk, v, kp))
    C = v.shape[1]
    q, k = qk[:, :C], qk[:, C:]  # q, k: channel slices of one tensor (strided views)
    o = fn(q, k, v, kp, head_dim=head_dim, **extra)
    go = torch.randn(o.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    (o * go.to(o.device, o.dtype)).sum().backward()
    gq, gk = qk.grad[:, :C], qk.grad[:, C:]
    return o.detach().cpu(), [g if g is None else g.cpu() for g in (gq, gk, v.grad, kp.grad)]


@pytest.mark.parametrize("case", WA_CASES, ids=wa_id)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16],
                         ids=str)
def test_window_attention_matches_reference(case, dtype, mode):
    from emo_kernels.backends.cuda import window_attention_cuda
    device, emulate = mode
    B, C, H, W, d = case
    g = torch.Generator().manual_seed(4)
    qk = torch.randn(B, 2 * C, H, W, generator=g).to(dtype)
    v = torch.randn(B, C, H, W, generator=g).to(dtype)
    kp = torch.randn(C, generator=g).to(dtype)
    o, grads = run_wa(window_attention_cuda, qk, v, kp, d, dtype, device, emulate=emulate)
    o_r, grads_r = run_wa(window_attention_ref, qk, v, kp, d, torch.float64)
    tol = TOLERANCE[dtype]
    assert o.dtype == dtype and rel_err(o, o_r) <= tol, rel_err(o, o_r)
    for n, a, b in zip(("q", "k", "v", "k_pad"), grads, grads_r):
        if n == "k_pad" and case[2] % 7 == 0 and case[3] % 7 == 0:  # no padding: unused
            assert a is None and b is None
            continue
        assert a.dtype == dtype and rel_err(a, b) <= tol, f"grad {n}: {rel_err(a, b)}"


def test_window_attention_gradcheck(mode):
    from emo_kernels.backends.cuda import window_attention_cuda
    device, emulate = mode
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 4, 8, 9, generator=g, dtype=torch.float64).to(device)
               .requires_grad_() for _ in range(3))
    kp = torch.randn(4, generator=g, dtype=torch.float64).to(device).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda *a: window_attention_cuda(*a, head_dim=2, emulate=emulate), (q, k, v, kp),
        fast_mode=True)


def test_emulation_rejects_cuda_namespace_misuse():
    """The emulation namespace takes CPU tensors only; the kernel namespace CUDA tensors only."""
    x = torch.randn(1, 4, 6, 6)
    with pytest.raises(RuntimeError, match="must be a CUDA tensor"):
        torch.ops.emo_kernels_cuda.wa_fwd(x, x, x, None, 2, 7, 0.5)
    out, lse = torch.ops.emo_kernels_cuda_emu.wa_fwd(x, x, x, None, 2, 7, 0.5)
    assert out.shape == x.shape and lse.shape == (1, 2, 6, 6)


def _opcheck_cases():
    E = torch.ops.emo_kernels_cuda_emu
    g = torch.Generator().manual_seed(6)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x, w, b, wd, sc = r(2, 4, 9, 10), r(6, 4), r(6), r(6, 3, 3), r(6).abs() + 0.5
    v = E.edc_expand_fwd(x, w, b, 1)
    p = E.edc_dw_fwd(v, wd, b, None, None, 1, False, False)
    gz = r(2, 6, 9, 10)
    gq, pp = E.edc_dq_bwd(v, wd, b, sc, sc, gz, 1, True)
    gu = E.edc_dv_bwd(x, w, b, wd, gz, gq, pp, sc, sc, sc, 1, 1, True)
    q, kp = r(1, 8, 9, 10), r(8)
    o, lse = E.wa_fwd(q, q, q, kp, 4, 7, 0.5)
    return {
        "edc_expand_fwd": (E.edc_expand_fwd, (x, w, b, 1)),
        "edc_dw_fwd-s2": (E.edc_dw_fwd, (v, wd, b, None, None, 2, False, False)),
        "edc_dw_fwd-fused": (E.edc_dw_fwd, (v, wd, b, sc, sc, 1, True, True)),
        "edc_epilogue_fwd": (E.edc_epilogue_fwd, (p, sc, sc, v, True)),
        "edc_dq_bwd": (E.edc_dq_bwd, (v, wd, b, sc, sc, gz, 1, True)),
        "edc_dv_bwd": (E.edc_dv_bwd, (x, w, b, wd, gz, gq, pp, sc, sc, sc, 1, 1, True)),
        "edc_dwweight_bwd": (E.edc_dwweight_bwd, (v, gq, pp, sc, sc, sc, 3, 1)),
        "edc_expand_dx_bwd": (E.edc_expand_dx_bwd, (w, gu)),
        "edc_expand_dw_bwd": (E.edc_expand_dw_bwd, (x, gu)),
        "wa_fwd": (E.wa_fwd, (q, q, q, kp, 4, 7, 0.5)),
        "wa_bwd": (E.wa_bwd, (q, q, q, kp, o, r(1, 8, 9, 10), lse, 4, 7, 0.5)),
    }


OPCHECK_NAMES = ["edc_expand_fwd", "edc_dw_fwd-s2", "edc_dw_fwd-fused", "edc_epilogue_fwd",
                 "edc_dq_bwd", "edc_dv_bwd", "edc_dwweight_bwd", "edc_expand_dx_bwd",
                 "edc_expand_dw_bwd", "wa_fwd", "wa_bwd"]


@pytest.mark.parametrize("name", OPCHECK_NAMES)
def test_op_schema_and_fake_impl(name):
    """torch.library.opcheck: schema, FakeTensor (register_fake) and AOT-dispatch consistency,
    checked on the emulation namespace (same schemas and fake functions as the CUDA one)."""
    op, args = _opcheck_cases()[name]
    torch.library.opcheck(op, args)
