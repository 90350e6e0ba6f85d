"""Compile every Triton kernel for sm_80 and sm_90 without a GPU (ttir -> ... -> cubin).

Run in a subprocess by tests/backends/test_triton_compile.py on every software stack CI tests (torch
2.14 + triton 3.8, and the GPU machine's torch 2.11 + triton 3.6): the interpreter accepts
code the GPU compiler rejects, so this catches compiled-mode-only errors (constexpr misuse,
dot shapes, accumulator dtypes such as triton 3.6's fp64 ``tl.dot`` needing ``out_dtype``)
for every kernel in every dtype, fp64 included, and every constexpr branch the launchers use.
It needs no driver: triton ships ptxas.

The irmb_inference kernels are compiled exactly as their launchers launch them: the launchers
run on meta tensors (shapes only) of EMO-5M's blocks with the kernels replaced by recorders
(:func:`emo_launches`), and each recorded launch is specialized by triton's own launch-time
rule (:func:`launch_spec`: ints equal to 1 constexpr, ints divisible by 16 and 16-byte aligned
pointers marked), with the launch's tile sizes and ``num_warps`` (``irmb_inference.tiles``).
tests/backends/kernel_artifacts.py reads the compiled code of those launches.

Usage: python tests/backends/compile_kernels.py [--archs 80,90] [--dtypes fp16,bf16,fp32,fp64] [-j N]
Prints one line per arch and "compiled N kernels"; exits non-zero on the first failure.
"""
import argparse
import contextlib
import functools
import os
import sys
from concurrent.futures import ProcessPoolExecutor

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton._C.libtriton import native_specialize_impl  # noqa: E402  (the launcher's own rule)
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia.compiler import CUDABackend  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import emo_kernels.backends.triton.expand_dwconv_act as EDA  # noqa: E402
import emo_kernels.backends.triton.irmb_inference as IR  # noqa: E402
import emo_kernels.backends.triton.window_attention as WA  # noqa: E402

DTYPES = ("fp16", "bf16", "fp32", "fp64")
# pointer arguments that carry the op's dtype; every other pointer is the accumulator dtype
EDA_IO = ("x_ptr", "v_ptr", "p_ptr", "wexp_ptr", "bexp_ptr", "wdw_ptr", "bdw_ptr", "z_ptr", "gz_ptr",
          "gx_ptr")
WA_IO = ("Q", "K", "V", "KPAD", "VPAD", "O", "DO", "DQ", "DK", "DV_")
WA_ACC = ("LSE", "DKPAD", "DVPAD")
WA_FLOATS = ("scale_hi", "scale_lo")


def _acc(dt):
    return "fp64" if dt == "fp64" else "fp32"


def _eda_sig(kernel, dt, const):
    sig = {}
    for name in kernel.arg_names:
        if name in const:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*" + (dt if name in EDA_IO else _acc(dt))
        else:
            sig[name] = "i32"
    return sig


def _wa_sig(kernel, dt, const):
    sig = {}
    for name in kernel.arg_names:
        if name in const:
            sig[name] = "constexpr"
        elif name in WA_IO:
            sig[name] = "*" + dt
        elif name in WA_ACC:
            sig[name] = "*" + _acc(dt)
        elif name in WA_FLOATS:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def eda_cases(dt):
    """expand_dwconv_act: its 8 kernels, with the constexpr branches varied over the dtypes."""
    native = dt in ("fp16", "bf16")
    k, s, skip, has_exp, act = {"fp16": (5, 2, False, True, 2), "bf16": (3, 1, False, False, 0),
                                "fp32": (3, 1, True, True, 1), "fp64": (5, 1, True, True, 2)}[dt]
    blocks = dict(BLOCK_P=64, BLOCK_C=32, BLOCK_K=32,
                  ACC_DT=tl.float64 if dt == "fp64" else tl.float32)
    common = dict(HAS_EXP=has_exp, HAS_BEXP=has_exp, ACT=act, SKIP=skip, NATIVE_DOT=native,
                  **blocks)
    conv = dict(K=k, STRIDE=s, PAD=-(-(k - s) // 2))
    b1 = dict(SKIP=skip, BLOCK_P=64, BLOCK_C=32, ACC_DT=blocks["ACC_DT"])
    return [
        (EDA._fwd_kernel, dict(**conv, HAS_BDW=True, STORE_Z=True, STORE_P=True, STATS=False,
                               **b1)),
        (EDA._fwd_kernel, dict(**conv, HAS_BDW=False, STORE_Z=False, STORE_P=True, STATS=True,
                               **b1)),
        (EDA._bn_apply_kernel, b1),
        (EDA._bwd_stats_kernel, dict(BLOCK_P=64, BLOCK_C=32, ACC_DT=blocks["ACC_DT"])),
        (EDA._bwd_gp_kernel, dict(BLOCK_P=64, BLOCK_C=32, ACC_DT=blocks["ACC_DT"])),
        (EDA._bwd_dv_kernel, dict(**conv, **common)),
        (EDA._gemm_gx_kernel, dict(NATIVE_DOT=native, **blocks)),
        (EDA._gemm_gw_kernel, dict(NATIVE_DOT=native, **blocks)),
    ]


def wa_cases(dt):
    """window_attention: forward and backward, with and without the padding key, head dims
    padded (20 -> 32) and exact (32); EMOv2's forms: the contiguous second pass adding into
    the output (ACCUM), padded values, value heads of 70 (EMOv2-1M, padded to 128) and 128
    (EMOv2-5M) channels."""
    out = []
    for has_kpad, d, dv, vpad, close in ((True, 20, 20, False, False),
                                         (False, 32, 32, False, False),
                                         (True, 20, 70, True, True),
                                         (True, 32, 128, True, True)):
        const = dict(D=d, DV=dv, WS=7, BLOCK_L=64, BLOCK_D=32,
                     BLOCK_DV=max(32, 1 << (dv - 1).bit_length()), HAS_KPAD=has_kpad,
                     HAS_VPAD=vpad, CLOSE=close, ACCUM=close, UPCAST=False, IS_F64=dt == "fp64")
        out += [(WA._window_attention_fwd, const), (WA._window_attention_bwd, const)]
    return out


# ----- irmb_inference: the launches themselves ------------------------------------------------
IR_KERNELS = ("_expand_kernel", "_dwproj_kernel", "_ln_qk_attn_kernel")
LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")
TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32,
                "fp64": torch.float64}
# EMO-5M's iRMBs (0 the stem block, 1-3 stage 1, 4-6 stage 2, 7-15 stage 3, 16-18 stage 4)
# compiled in every dtype: every kernel and every constexpr branch EMO-5M's launches take (the
# stem block's squeeze-excite pair; expansion without / with the LayerNorm prologue, SiLU /
# GELU; depthwise k3 and k5, stride 2, the skip; the attention kernel)
IR_BLOCKS = (0, 1, 7, 8)


def launch_spec(kernel, args, kwargs):
    """What ``kernel[grid](*args, **kwargs)`` compiles, specialized by triton's own launch rule
    (``native_specialize_impl``, as the generated binder calls it): (kernel name, signature,
    constexprs, attrs, options). Ints equal to 1 become constexpr, ints divisible by 16 and
    pointers at 16-byte aligned addresses get ``tt.divisibility`` 16. Tensors may be meta
    tensors: an allocation's base is 256-byte aligned on CUDA, so a pointer is aligned when its
    storage offset is a multiple of 16 bytes."""
    values = dict(zip(kernel.arg_names, args), **{k: v for k, v in kwargs.items()
                                                  if k not in LAUNCH_OPTIONS})
    sig, const, attrs = {}, {}, {}
    for i, p in enumerate(kernel.params):
        v = values[p.name]
        if p.is_constexpr:
            sig[p.name], const[p.name] = "constexpr", v
            continue
        align = not p.do_not_specialize_on_alignment
        if isinstance(v, torch.Tensor):
            align = align and v.storage_offset() * v.element_size() % 16 == 0
        ty, spec = native_specialize_impl(CUDABackend, v, p.is_const, not p.do_not_specialize,
                                          align)
        sig[p.name] = ty
        if ty == "constexpr":
            const[p.name] = spec
        elif spec:
            attrs[(i,)] = CUDABackend.parse_attr(spec)
    return (kernel.__name__, sig, const, attrs,
            {k: v for k, v in kwargs.items() if k in LAUNCH_OPTIONS})


class _Recorder:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](...)`` records the launch."""

    def __init__(self, kernel, out):
        self.kernel, self.out = kernel, out

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.out.append(launch_spec(self.kernel, args, kwargs))


EDA_GEMMS = ("_gemm_gx_kernel", "_gemm_gw_kernel")
EDA_BWD_KERNELS = ("_bwd_stats_kernel", "_bwd_gp_kernel", "_bwd_dv_kernel") + EDA_GEMMS


def kernel(name):
    """The jitted kernel of that name (irmb_inference's or expand_dwconv_act's)."""
    return getattr(IR if name in IR_KERNELS else EDA, name)


@contextlib.contextmanager
def recording(out, module=IR, names=IR_KERNELS):
    """Within: the launches of ``module``'s kernels ``names`` (the irmb_inference kernels by
    default) append :func:`launch_spec` tuples to ``out`` instead of running."""
    saved = {n: getattr(module, n) for n in names}
    try:
        for n, k in saved.items():
            setattr(module, n, _Recorder(k, out))
        yield out
    finally:
        for n, k in saved.items():
            setattr(module, n, k)


def emo_launches(dt, blocks=None, model="emo_5m", batch=256, size=224):
    """The distinct irmb_inference launches of ``model``'s fused inference (``batch`` images of
    ``size`` x ``size``, dtype ``dt``) as :func:`launch_spec` tuples, each with the index of the
    first iRMB that launches it: the real launchers (``prepare_block`` / ``run_block``, the
    GPU branch of ``tiles``) run on meta tensors, recording the iRMBs ``blocks`` (all if
    None)."""
    from emo.inference import _blocks, block_args, stem_args
    from emo.model import CONFIGS, EMO
    dtype, meta = TORCH_DTYPES[dt], torch.device("meta")
    net = EMO(**CONFIGS[model]).eval()
    stages, irmbs = _blocks(net)
    w, _, stride, pad = stem_args(stages[0][0])[:4]
    h = (size + 2 * pad[0] - w.shape[2]) // stride[0] + 1
    x = torch.empty(batch, h, h, w.shape[0], dtype=dtype, device=meta).permute(0, 3, 1, 2)
    seen = {}
    for i, blk in enumerate(irmbs):
        args, kw = block_args(blk)
        to_meta = lambda t: t.to(meta) if isinstance(t, torch.Tensor) else t  # noqa: E731
        pb = IR.prepare_block([to_meta(a) for a in args], {k: to_meta(v) for k, v in kw.items()},
                              dtype, meta)
        rec = []
        with recording(rec):
            x = IR.run_block(x, pb)
        if blocks is None or i in blocks:
            for spec in rec:
                seen.setdefault(repr(spec), (i,) + spec)
    return list(seen.values())


@functools.lru_cache(maxsize=None)
def ir_cases(dt):
    return emo_launches(dt, IR_BLOCKS)


def train_gemm_launches(dt, model="emo_5m", batch=256, size=224):
    """The distinct backward-GEMM launches (``_gemm_gx`` and split-K ``_gemm_gw``) of the triton
    ``expand_dwconv_act`` in ``model``'s training step (``batch`` images of ``size`` x ``size``,
    dtype ``dt``), each with the index of the first iRMB that launches it: the real launcher
    (``expand_dwconv_act.backward``, GPU tiles) runs on meta tensors of each iRMB's shapes (a
    BatchNorm in training after the depthwise conv, as EMO's blocks have)."""
    from bench.shapes import irmb_specs
    from emo_kernels.formulas import dw_out_size
    meta = dict(dtype=TORCH_DTYPES[dt], device="meta")
    acc = dict(dtype=torch.float32, device="meta")
    seen = {}
    for i, (_name, spec) in enumerate(irmb_specs(model, size)):
        shapes = dict(spec.tensors)
        if shapes["w_exp"] is None:
            continue
        (cmid, cin), k = shapes["w_exp"][:2], shapes["w_dw"][-1]
        opts = dict(spec.options)
        stride = opts["stride"]
        ho, wo = (dw_out_size(n, k, stride) for n in (spec.H, spec.W))
        x = torch.empty(batch, spec.H, spec.W, cin, **meta).permute(0, 3, 1, 2)
        gz = torch.empty(batch, ho, wo, cmid, **meta).permute(0, 3, 1, 2)
        rec = []
        with recording(rec, EDA, EDA_BWD_KERNELS):
            EDA.backward(gz, x, torch.empty(cmid, cin, **meta), torch.empty(cmid, **meta),
                         torch.empty(cmid, 1, k, k, **meta),
                         torch.empty(batch, cmid, ho, wo, **meta), torch.empty(cmid, **acc),
                         torch.empty(cmid, **acc), torch.empty(cmid, **acc),
                         torch.empty(cmid, **acc), opts["act"], stride, opts["skip"], True)
        for launch in rec:
            if launch[0] in EDA_GEMMS:
                seen.setdefault(repr(launch), (i,) + launch)
    return list(seen.values())


def compile_spec(spec, arch):
    """Compile one :func:`launch_spec` tuple for sm_``arch``."""
    name, sig, const, attrs, options = spec
    return triton.compile(ASTSource(kernel(name), sig, const, attrs),
                          target=GPUTarget("cuda", arch, 32), options=options)


def jobs(archs, dtypes):
    for arch in archs:
        for dt in dtypes:
            for i, (kernel, const) in enumerate(eda_cases(dt)):
                yield ("eda", i, arch, dt)
            for i, _ in enumerate(wa_cases(dt)):
                yield ("wa", i, arch, dt)
            for i, _ in enumerate(ir_cases(dt)):
                yield ("ir", i, arch, dt)


def compile_one(job):
    which, i, arch, dt = job
    if which == "ir":
        spec = ir_cases(dt)[i][1:]
        name, const = spec[0], spec[2]
        build = functools.partial(compile_spec, spec, arch)
    else:
        kernel, const = (eda_cases if which == "eda" else wa_cases)(dt)[i]
        sig = (_eda_sig if which == "eda" else _wa_sig)(kernel, dt, const)
        name = kernel.__name__
        warps = 8 if const.get("BLOCK_DV", 0) > 64 else 4  # as window_attention's launcher
        build = functools.partial(triton.compile, ASTSource(kernel, sig, const),
                                  target=GPUTarget("cuda", arch, 32),
                                  options=dict(num_warps=warps))
    try:
        compiled = build()
    except Exception as e:  # noqa: BLE001  (report which kernel, then fail)
        return f"FAILED sm_{arch} {dt} {name} {const}: {type(e).__name__}: {e}"
    if not compiled.asm.get("cubin"):
        return f"FAILED sm_{arch} {dt} {name}: no cubin"
    return None


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", default="80,90")
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    ap.add_argument("-j", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args(argv)
    archs = [int(x) for x in a.archs.split(",")]
    todo = list(jobs(archs, a.dtypes.split(",")))
    with ProcessPoolExecutor(max_workers=a.j) as pool:
        errors = [e for e in pool.map(compile_one, todo) if e]
    for e in errors:
        print(e)
    if errors:
        return 1
    print(f"compiled {len(todo)} kernels for {','.join(f'sm_{x}' for x in archs)} "
          f"({a.dtypes}) with triton {triton.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
