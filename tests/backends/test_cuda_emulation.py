"""What is specific to the cuda backend's host emulation (torch.ops.emo_kernels_cuda_emu: the
very same element functions as the GPU kernels, csrc/cuda/*.cu, ``__host__ __device__``, no shared
memory, run in a host loop over CPU tensors, through the same binding and the same autograd
orchestration). The op cases themselves run through the emulation in the shared op tests
(tests/ops/, the ``kernel_backend`` fixture's cuda param, EMO_KERNELS_CUDA_EMULATE=1 without a
GPU); here: the switch, the namespaces, the ops' schemas and fake functions, and on a GPU
machine the real kernels against their emulation on the same inputs.

What the emulation does NOT check: anything specific to the GPU (launch configuration, memory
coalescing, races, device-side fp16/bf16 intrinsics, sm_80/sm_90 code generation). Emulated
outputs are NaN-poisoned by the binding, so unwritten elements fail the comparisons.
"""

import pytest
import torch

import emo_kernels
from emo_kernels import dispatch
from emo_kernels.backends.cuda import EMULATE_ENV
from emo_kernels.reference import expand_dwconv_act_ref
from emo_kernels.testing import TOLERANCE

from conftest import cuda_extension_or_fail, rel_err



@pytest.fixture(scope="module", autouse=True)
def ext():
    """A missing extension fails unless opted out (conftest.cuda_extension_or_fail)."""
    return cuda_extension_or_fail()


def test_emulate_switch(monkeypatch):
    """EMO_KERNELS_CUDA_EMULATE=1: the registered cuda backend takes CPU tensors and runs the
    emulation; auto never picks it; without the variable CPU tensors are refused, saying how."""
    g = torch.Generator().manual_seed(7)
    x, w, b, wd = (torch.randn(*s, generator=g) for s in ((1, 4, 5, 6), (8, 4), (8,), (8, 1, 3, 3)))
    monkeypatch.delenv(EMULATE_ENV, raising=False)
    reason = dispatch.cannot_run("expand_dwconv_act", "cuda", x, w, b, wd)
    assert "CUDA tensors" in reason and EMULATE_ENV in reason
    monkeypatch.setenv(EMULATE_ENV, "1")
    assert dispatch.cannot_run("expand_dwconv_act", "cuda", x, w, b, wd) is None
    assert "host emulation" in emo_kernels.explain("expand_dwconv_act", x, w, b, wd)["cuda"]
    assert dispatch.which("expand_dwconv_act", x, w, b, wd) != "cuda"
    with emo_kernels.use_backend("cuda"), dispatch.record_dispatch() as calls:
        z = emo_kernels.expand_dwconv_act(x, w, b, wd)
    assert calls == [("expand_dwconv_act", "cuda")]
    assert rel_err(z, expand_dwconv_act_ref(x.double(), w.double(), b.double(), wd.double())) \
        <= TOLERANCE[torch.float32]


# ----- on a GPU machine: the real kernels against their emulation ----------------------------
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(),
                               reason="needs a GPU: compares the real CUDA kernels with their "
                                      "host emulation (here only the emulation runs)")
# (B, Cin, Cmid, H, W, k, stride, skip, act, bn); Cin=None: identity expansion (stem block)
EDC_CASES = [
    (2, 3, 6, 9, 11, 3, 1, True, "silu", "none"),
    (2, 4, 8, 13, 13, 5, 1, True, "gelu", "train"),
    (2, 4, 6, 7, 6, 3, 2, False, "silu", "eval"),
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


def run_edc(tensors, kw, device, emulate):
    from emo_kernels.backends.cuda import expand_dwconv_act_cuda
    t = {n: (None if v is None else v.to(device).detach().requires_grad_())
         for n, v in tensors.items()}
    kw = {n: (v.to(device).clone() if torch.is_tensor(v) else v) for n, v in kw.items()}
    z = expand_dwconv_act_cuda(t["x"], t["w_exp"], t["b_exp"], t["w_dw"], t["b_dw"],
                               **{n: t[n] for n in ("bn_weight", "bn_bias") if n in t}, **kw,
                               emulate=emulate)
    gz = torch.randn(z.shape, generator=torch.Generator().manual_seed(2), dtype=z.dtype)
    (z * gz.to(z.device)).sum().backward()
    out = {"z": z.detach()}
    out.update({f"grad {n}": v.grad for n, v in t.items() if v is not None})
    out.update({n: kw[n] for n in ("running_mean", "running_var") if n in kw})
    return {n: v.cpu() for n, v in out.items()}


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", EDC_CASES, ids=edc_id)
def test_expand_dwconv_act_gpu_matches_emulation(case, dtype):
    tensors, kw = edc_inputs(case, dtype)
    emu = run_edc(tensors, kw, "cpu", emulate=True)
    gpu = run_edc(tensors, kw, "cuda", emulate=False)
    assert set(gpu) == set(emu)
    for n in emu:
        assert gpu[n].dtype == emu[n].dtype and gpu[n].shape == emu[n].shape, n
        assert torch.isfinite(gpu[n]).all(), f"{n}: unwritten (NaN-poisoned) elements"
        assert rel_err(gpu[n], emu[n]) <= TOLERANCE[dtype], f"{n}: {rel_err(gpu[n], emu[n])}"


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", [(2, 6, 9, 8, 3, 1, "remote"), (1, 42, 3, 5, 21, 1, "remote"),
                                  (1, 64, 8, 8, 32, 1, "remote"),
                                  (1, 16, 9, 11, 8, 3, "hybrid"), (1, 32, 7, 7, 32, 4, "close")],
                         ids=lambda c: "B{}-C{}-H{}W{}-d{}-v{}x-{}".format(*c))
def test_window_attention_gpu_matches_emulation(case, dtype):
    """The kernels on the GPU equal their host emulation: EMO's form, and EMOv2's (value heads
    3x / 4x wider, padded values, contiguous and hybrid partitions)."""
    from emo_kernels.backends.cuda import window_attention_cuda
    B, C, H, W, d, wide, part = case
    g = torch.Generator().manual_seed(4)
    qk0 = torch.randn(B, 2 * C, H, W, generator=g).to(dtype)
    v0 = torch.randn(B, wide * C, H, W, generator=g).to(dtype)
    kp0 = torch.randn(C, generator=g).to(dtype)
    vp0 = torch.randn(wide * C, generator=g).to(dtype)
    go = torch.randn(B, wide * C, H, W, generator=g).to(dtype)
    emo2 = part != "remote"
    res = []
    for device, emulate in (("cpu", True), ("cuda", False)):
        qk, v, kp, vp = (t.to(device).requires_grad_() for t in (qk0, v0, kp0, vp0))
        o = window_attention_cuda(qk[:, :C], qk[:, C:], v, kp, head_dim=d, emulate=emulate,
                                  v_pad=vp if emo2 else None, partition=part)
        o.backward(go.to(device))
        res.append([t.detach().cpu() for t in (o, qk.grad, v.grad, kp.grad)]
                   + ([vp.grad.detach().cpu()] if emo2 else []))
    for n, e, gp in zip(("out", "grad qk", "grad v", "grad k_pad", "grad v_pad"), *res):
        assert torch.isfinite(gp).all(), f"{n}: unwritten (NaN-poisoned) elements"
        assert rel_err(gp, e) <= TOLERANCE[dtype], f"{n}: {rel_err(gp, e)}"


def test_emulation_rejects_cuda_namespace_misuse():
    """The emulation namespace takes CPU tensors only; the kernel namespace CUDA tensors only."""
    x = torch.randn(1, 4, 6, 6)
    with pytest.raises(RuntimeError, match="must be a CUDA tensor"):
        torch.ops.emo_kernels_cuda.wa_fwd(x, x, x, None, None, 2, 7, 0.5, 0)
    out, lse = torch.ops.emo_kernels_cuda_emu.wa_fwd(x, x, x, None, None, 2, 7, 0.5, 0)
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
    o, lse = E.wa_fwd(q, q, q, kp, None, 4, 7, 0.5, 0)
    v2, vp = r(1, 24, 9, 10), r(24)  # EMOv2: value heads 12 wide, padded values, close windows
    o2, lse2 = E.wa_fwd(q, q, v2, kp, vp, 4, 7, 0.5, 1)
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
        "wa_fwd": (E.wa_fwd, (q, q, q, kp, None, 4, 7, 0.5, 0)),
        "wa_bwd": (E.wa_bwd, (q, q, q, kp, None, o, r(1, 8, 9, 10), lse, 4, 7, 0.5, 0)),
        "wa_fwd-emo2": (E.wa_fwd, (q, q, v2, kp, vp, 4, 7, 0.5, 1)),
        "wa_bwd-emo2": (E.wa_bwd, (q, q, v2, kp, vp, o2, r(1, 24, 9, 10), lse2, 4, 7, 0.5, 1)),
    }


OPCHECK_NAMES = ["edc_expand_fwd", "edc_dw_fwd-s2", "edc_dw_fwd-fused", "edc_epilogue_fwd",
                 "edc_dq_bwd", "edc_dv_bwd", "edc_dwweight_bwd", "edc_expand_dx_bwd",
                 "edc_expand_dw_bwd", "wa_fwd", "wa_bwd", "wa_fwd-emo2", "wa_bwd-emo2"]


@pytest.mark.parametrize("name", OPCHECK_NAMES)
def test_op_schema_and_fake_impl(name):
    """torch.library.opcheck: schema, FakeTensor (register_fake) and AOT-dispatch consistency,
    checked on the emulation namespace (same schemas and fake functions as the CUDA one)."""
    op, args = _opcheck_cases()[name]
    torch.library.opcheck(op, args)
