"""A static cost MODEL of EMO on one H200 -- estimates, NOT measurements.

``python -m bench.gpu_model [--models emo_5m] [--batch 256] [--dtypes bf16,fp16]
[--modes infer,train] [--json] [--kernels] [--blocks]``

It predicts a lower-bound GPU time per kernel, per block and per model for

* **eager** ``fused=False``: every aten op the model really calls (recorded on CPU with a
  ``TorchDispatchMode`` at batch 2 and 3 and extrapolated linearly to the batch; views and
  allocations dropped), each one a kernel that reads its inputs from and writes its outputs to
  DRAM; convolutions / matmuls on the tensor cores at a cuDNN/cuBLAS efficiency, depthwise on
  FP32 lanes at a cuDNN efficiency, activations on the SFU;
* **fused** ``fused=True`` as the code stands on CUDA today: the torch glue the fused forward
  calls (BatchNorm folding on every forward, LayerNorm, the qk conv, proj conv, adds) recorded
  the same way, plus the Triton kernels of ``emo_kernels/backends/triton`` (the per-tap
  recompute ``expand_dwconv_act`` and ``window_attention``) costed from their **compiled sm_90
  code**: ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`` with the
  specialization a channels_last launch gets (stride-1 ints constexpr, ints divisible by 16 and
  pointers marked 16-aligned), read with the bundled ``nvdisasm`` / ``cuobjdump``: registers,
  local memory (spills), shared memory, and SASS instruction counts per loop body x trip count
  (loops = backward branches; trip counts from the kernel source: taps k*k, input-channel
  chunks ceil(Cin/BLOCK_K), ...). Each launch's totals = per-warp counts x 4 warps x programs
  (HGMMA per warpgroup).

Bounds per kernel (``BOUNDS``): ``dot`` (tensor FLOPs / (peak x efficiency)), ``fp32`` (FP32
lane instructions), ``issue`` (all warp instructions, 4 per clock per SM), ``sfu`` (MUFU lane
ops), ``l2`` (bytes the kernel's loads/stores request, masked lanes included), ``dram``
(compulsory bytes), ``launch`` (a floor per kernel). A kernel's time is the largest; a block's
and the model's are sums (kernels run one after another). Constants: :data:`CONSTANTS`, each
marked measured / architecture / assumption as in gpu-design.md.

Approximations, stated: one compiled representative per distinct (kernel, constexpr set) --
the first block with that set gives the integer specialization --, fp16 reuses the bf16 code;
the eager kernels are recorded in fp32 and their bytes scaled to the element size; host
(Python / launch) time is not counted (it would be hidden at batch 256 by eager, not by
fused without CUDA graphs); L2 hits between eager kernels are not credited (so eager is a
little pessimistic, see gpu-design.md's "10.0 with L2 hits"). **Training** (``train``):
eager records the real autograd backward; fused records its glue's backward and costs the
Triton training kernels (``_fwd_kernel`` with batch statistics, ``_bn_apply``, ``_bwd_stats``,
``_bwd_dv``, the fp32 "ieee" GEMMs ``_gemm_gx`` / ``_gemm_gw`` on CUDA cores, window attention
backward) from their SASS the same way, plus the launchers' small torch reductions counted by
reading ``expand_dwconv_act.forward/backward`` (:data:`TRITON_GLUE`).

Where it lands against gpu-design.md (EMO-5M, 224, batch 256, bf16, first version): infer
eager ~7.9 ms vs the note's ~11.3, fused ~44 ms vs ~36; train eager ~21 ms vs ~30.6, fused
~176 ms vs ~193. Why: eager here is the recorded op list at DRAM speed with channels_last
1x1 convs as single kernels and no extra layout copies (the note assumed more traffic per
block); fused is bound by the ``l2`` bytes its loads request -- every LDG lane, masked lanes
and the per-tap re-reads of x and of the weight tiles included (LDG.E.U16 scalar loads where
Cin % 16 != 0) --, which overstates the traffic of masked lanes and understates L1 hits (the
note used ~1.7 ms of L2 on s3.1, this model ~3.3 ms); the training GEMMs ``_gemm_gx/_gw`` are
costed by instruction issue over the SMs their grid occupies (a grid of 3-324 programs uses
at most that many SMs; no latency or spill model). A GPU run decides.
These are **today's kernels**: the D1 design of gpu-design.md (issue #14's target, fused
<= 3.8 ms) is **not built**, and nothing here says it is reached.
"""
import argparse
import contextlib
import functools
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Dict

import torch
from torch.utils._python_dispatch import TorchDispatchMode

KIND = "model, not a measurement"
BANNER = ("*** MODEL ESTIMATES, NOT MEASUREMENTS *** (bench/gpu_model.py: a static cost model "
          "of an H200 from compiled sm_90 code and stated constants; calibrate on a GPU)")
NOTE = ("today's kernels (per-tap recompute expand_dwconv_act, per-forward BN folding); the D1 "
        "design of gpu-design.md is not built")

# ----- machine constants (H200, one chip) ---------------------------------------------------
CONSTANTS = [
    # name, value, unit, status, note
    ("dram_bw", 4.3e12, "B/s", "measured", "copy on the lent machine (gpu-design.md)"),
    ("tensor_peak", 790e12, "FLOP/s", "measured", "dense bf16 large GEMM (fp16 assumed equal)"),
    ("sms", 132, "SMs", "measured", ""),
    ("clock", 1.98e9, "Hz", "measured", ""),
    ("issue_per_clk", 4, "warp-instr/clk/SM", "architecture", ""),
    ("fp32_lanes_per_clk", 128, "lane-ops/clk/SM", "architecture", "~67 TFLOP/s with FMA"),
    ("sfu_per_clk", 16, "lane-ops/clk/SM", "architecture",
     "SiLU = EX2 + RCP, erf-GELU ~21 FP32 instr + 1 EX2"),
    ("l2_bw", 7e12, "B/s", "assumption", "L2 hit bandwidth: measure first"),
    ("triton_dot_eff", 0.25, "fraction", "assumption", "Triton dot at 64x32x16 tiles: measure first"),
    ("cublas_eff", 0.5, "fraction", "assumption", "cuDNN/cuBLAS 1x1 conv / bmm at EMO shapes"),
    ("cudnn_dw_eff", 0.5, "fraction", "assumption", "cuDNN depthwise vs FP32 lane peak"),
    ("kernel_floor", 2e-6, "s", "assumption", "least GPU time per kernel (launch + tail)"),
]
C = {name: value for name, value, *_ in CONSTANTS}
BOUNDS = ("dot", "fp32", "issue", "sfu", "l2", "dram", "launch")
ESIZE = {"bf16": 2, "fp16": 2}
# tiny torch kernels the Triton launchers add per call (read off expand_dwconv_act.forward /
# backward and window_attention_bwd): dummies, Chan merge of batch statistics, running stats,
# partial-sum reductions and casts
TRITON_GLUE = {"eda_infer": 2, "eda_train_fwd": 22, "eda_train_bwd": 22, "wa_train_bwd": 2}


def _rate(name):
    return C["sms"] * C["clock"] * C[name]


# ----- kernel cost --------------------------------------------------------------------------
@dataclass
class Kernel:
    name: str
    block: str
    dot_flops: float = 0.0        # tensor-core FLOPs (issued)
    dot_eff: float = 1.0
    fp32: float = 0.0             # FP32 lane instructions
    issue: float = 0.0            # warp instructions (0: not modelled, elementwise via bytes)
    sfu: float = 0.0              # MUFU lane ops
    l2: float = 0.0               # bytes requested from L2
    dram: float = 0.0             # compulsory DRAM bytes
    count: int = 1                # launches
    sms: float = 0.0              # SMs the grid can occupy (0: all)
    detail: Dict = field(default_factory=dict)

    def bounds(self):
        occ = C["sms"] / min(self.sms or C["sms"], C["sms"])  # a grid smaller than the chip
        return {"dot": self.dot_flops / (C["tensor_peak"] * self.dot_eff) * occ,
                "fp32": self.fp32 / _rate("fp32_lanes_per_clk") * occ,
                "issue": self.issue / _rate("issue_per_clk") * occ,
                "sfu": self.sfu / _rate("sfu_per_clk") * occ,
                "l2": self.l2 / C["l2_bw"], "dram": self.dram / C["dram_bw"],
                "launch": self.count * C["kernel_floor"]}

    def time(self):
        b = self.bounds()
        k = max(b, key=b.get)
        return b[k], k


# ----- compiled Triton code: compile, disassemble, count --------------------------------------
_BIN = None


def _tool(name):
    global _BIN
    if _BIN is None:
        import triton
        _BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    return os.path.join(_BIN, name)


_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Za-z0-9_.]*)(.*?);")
_TARGET = re.compile(r"`\((\.L_x_\d+)\)")
_LABEL = re.compile(r"^(\.L_x_\d+):")


def parse_sass(text):
    """[(address, opcode, operands)] and {label: address} of one kernel's nvdisasm output."""
    instrs, labels, pending = [], {}, []
    for line in text.splitlines():
        m = _LABEL.match(line.strip())
        if m:
            pending.append(m.group(1))
            continue
        m = _LINE.search(line)
        if m:
            addr = int(m.group(1), 16)
            for lab in pending:
                labels[lab] = addr
            pending = []
            instrs.append((addr, m.group(3), m.group(4)))
    return instrs, labels


def sass_loops(instrs, labels):
    """Loops as (start, end) address ranges: a branch to an earlier address, sorted by start
    (outer loops first)."""
    loops = []
    for addr, op, rest in instrs:
        if op.startswith("BRA"):
            t = _TARGET.search(rest)
            if t and labels.get(t.group(1), addr) < addr:  # (not the trailing self-loop)
                loops.append((labels[t.group(1)], addr))
    return sorted(set(loops))


def _width(op):
    for suffix, w in ((".128", 16), (".64", 8), (".U16", 2), (".S16", 2), (".U8", 1), (".S8", 1)):
        if suffix in op:
            return w
    return 4


_FP32 = ("FFMA", "FADD", "FMUL", "FMNMX", "FSEL", "FSETP", "FSET", "FCHK")
_HGMMA = re.compile(r"HGMMA\.(\d+)x(\d+)x(\d+)")


def count_sass(text, trips):
    """Per-warp executed counts of one program: instructions weighted by the product of the trip
    counts of their enclosing loops (``trips``: one per loop in order of loop start, outer
    first; a missing one counts 1 trip). Returns issue, fp32, mufu, dot FLOPs (per program),
    load/store bytes per warp (32 lanes x width, masked lanes included), loops, approx flag."""
    instrs, labels = parse_sass(text)
    loops = sass_loops(instrs, labels)
    approx = len(loops) != len(trips)
    out = dict(issue=0.0, fp32=0.0, mufu=0.0, dot_flops=0.0, ldst_bytes=0.0, hgmma=0.0,
               loops=len(loops), static_instr=len(instrs), approx_trips=approx)
    for addr, op, _ in instrs:
        w = 1.0
        for i, (s, e) in enumerate(loops):
            if s <= addr <= e:
                w *= trips[i] if i < len(trips) else 1
        out["issue"] += w
        base = op.split(".")[0]
        if base in _FP32:
            out["fp32"] += w
        elif base == "MUFU":
            out["mufu"] += w
        elif base in ("LDG", "STG", "LDGSTS", "LD", "ST"):
            out["ldst_bytes"] += w * 32 * _width(op)
        m = _HGMMA.match(op)
        if m:
            mm, nn, kk = map(int, m.groups())
            out["dot_flops"] += w * 2 * mm * nn * kk
            out["hgmma"] += w
        elif base == "HMMA":  # per warp (mma.sync m16n8k16): x 4 warps per program
            out["dot_flops"] += w * 2 * 16 * 8 * 16 * 4
    return out


def _pow2(n, lo, hi):
    return max(lo, min(hi, 1 << max(int(n) - 1, 0).bit_length()))


_EDA_IO = ("x_ptr", "wexp_ptr", "bexp_ptr", "wdw_ptr", "bdw_ptr", "z_ptr", "gz_ptr", "gx_ptr")
_WA_IO = ("Q", "K", "V", "KPAD", "O", "DO", "DQ", "DK", "DV")


@functools.lru_cache(maxsize=None)
def compiled(which, kname, dt, const_items, int_items):
    """Compile one kernel for sm_90 (cached per kernel x specialization within a run) and read
    its artifacts: registers, local memory (spills), shared memory, the SASS text."""
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    if which == "eda":
        from emo_kernels.backends.triton import expand_dwconv_act as mod
    else:
        from emo_kernels.backends.triton import window_attention as mod
    kernel = getattr(mod, kname)
    import triton.language as tl
    const = dict(const_items)
    if "ACC_DT" in kernel.arg_names:
        const["ACC_DT"] = tl.float32
    ints = {n: v for n, v in int_items if n in kernel.arg_names}
    for n, v in ints.items():
        if v == 1:
            const[n] = 1
    sig, attrs = {}, {}
    for i, n in enumerate(kernel.arg_names):
        if n in const:
            sig[n] = "constexpr"
        elif n.endswith("_ptr") or n in _WA_IO or n in ("LSE", "DKPAD"):
            io = n in _EDA_IO or n in _WA_IO
            sig[n] = "*" + (dt if io else "fp32")
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif n in ("scale_hi", "scale_lo"):
            sig[n] = "fp32"
        else:
            sig[n] = "i32"
            if ints.get(n, 1) % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    target = GPUTarget("cuda", 90, 32)
    try:
        c = triton.compile(ASTSource(kernel, sig, const, attrs), target=target,
                           options=dict(num_warps=4))
    except Exception:  # noqa: BLE001  (an older triton's attrs format: compile unspecialized)
        c = triton.compile(ASTSource(kernel, sig, const), target=target, options=dict(num_warps=4))
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(c.asm["cubin"])
        f.flush()
        sass = subprocess.run([_tool("nvdisasm"), "-c", f.name], capture_output=True,
                              text=True, check=True).stdout
        res = subprocess.run([_tool("cuobjdump"), "-res-usage", f.name], capture_output=True,
                             text=True).stdout
    regs = re.search(r"REG:(\d+)", res)
    local = re.search(r"LOCAL:(\d+)", res)
    return dict(sass=sass, regs=int(regs.group(1)) if regs else None,
                local=int(local.group(1)) if local else None,
                shared=int(getattr(c.metadata, "shared", 0) or 0),
                spills=bool(re.search(r"\b(LDL|STL)\b", sass)))


def triton_kernel(block, which, kname, dt, const, ints, trips, programs, dram, label=None):
    art = compiled(which, kname, "bf16" if dt == "fp16" else dt, tuple(sorted(const.items())),
                   tuple(sorted(ints.items())))
    n = count_sass(art["sass"], trips)
    warps = 4
    k = Kernel(label or kname, block, dot_flops=n["dot_flops"] * programs,
               dot_eff=C["triton_dot_eff"], fp32=n["fp32"] * 32 * warps * programs,
               issue=n["issue"] * warps * programs, sfu=n["mufu"] * 32 * warps * programs,
               l2=n["ldst_bytes"] * warps * programs, dram=dram, sms=programs,
               detail=dict(kernel=kname, programs=programs, trips=list(trips),
                           regs=art["regs"], local_bytes=art["local"], spills=art["spills"],
                           shared=art["shared"], sass_instr=n["static_instr"],
                           loops=n["loops"], approx_trips=n["approx_trips"],
                           hgmma=n["hgmma"] > 0, const={a: str(b) for a, b in const.items()}))
    return k


# ----- recording the torch ops a forward (and backward) calls --------------------------------
_SKIP = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach",
         "lift_fresh", "_unsafe_view", "_reshape_alias", "_to_copy_noop", "set_", "resize_",
         "_local_scalar_dense", "is_same_size",
         "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "item"}
_SFU = {"silu": (2, 4), "silu_backward": (2, 8), "gelu": (1, 21), "gelu_backward": (2, 30),
        "sigmoid": (2, 2), "sigmoid_backward": (0, 3), "_softmax": (1, 6), "exp": (1, 1),
        "rsqrt": (1, 1), "erf": (1, 21)}


def _tensors(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for y in x:
            yield from _tensors(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _tensors(y)


def _conv_flops(args, out):
    x, w = args[0], args[1]
    groups = args[8] if len(args) > 8 else 1
    flops = 2 * out.numel() * w.shape[1] * math.prod(w.shape[2:])
    return flops, groups > 1 and groups == x.shape[1]


class Recorder(TorchDispatchMode):
    """Records every kernel-launching aten op: (block, name, elements moved, FLOPs)."""

    def __init__(self):
        super().__init__()
        self.ops, self.block, self.paused = [], "stem", False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if self.paused or getattr(func, "is_view", False) or name in _SKIP:
            return out
        moved = 0
        for t in list(_tensors(args)) + list(_tensors(kwargs or {})) + list(_tensors(out)):
            moved += t.numel() * (1 if t.is_floating_point() else t.element_size() / 2)
        rec = dict(block=self.block, op=name, el=moved, dot=0.0, dw=0.0, sfu=0.0, fp32=0.0)
        outs = list(_tensors(out))
        if name == "convolution" and outs:
            fl, dw = _conv_flops(args, outs[0])
            rec["dw" if dw else "dot"] = fl
        elif name == "convolution_backward":
            fl, dw = _conv_flops((args[1], args[2], None, None, None, None, None, None,
                                  args[-2] if len(args) > 9 else 1), args[0])
            rec["dw" if dw else "dot"] = fl * sum(bool(m) for m in args[-1][:2])
        elif name in ("mm", "bmm", "addmm", "baddbmm") and outs:
            a = args[1] if name in ("addmm", "baddbmm") else args[0]
            rec["dot"] = 2 * outs[0].numel() * a.shape[-1]
        elif name in _SFU and outs:
            s, f = _SFU[name]
            rec["sfu"], rec["fp32"] = s * outs[0].numel(), f * outs[0].numel()
        self.ops.append(rec)
        return out


class _StubCall(torch.autograd.Function):
    """Stands for a Triton op call: zeros of the output shape, nothing recorded; its backward
    records the op's backward launch."""

    @staticmethod
    def forward(ctx, rec, call, shape, *inputs):
        ctx.rec, ctx.call, ctx.inputs = rec, call, inputs
        rec.paused = True
        try:
            return inputs[0].new_zeros(shape)
        finally:
            rec.paused = False

    @staticmethod
    def backward(ctx, g):
        rec = ctx.rec
        rec.ops.append(dict(block=rec.block, op="TRITON_BWD", triton=ctx.call))
        rec.paused = True
        try:
            grads = [torch.zeros_like(t) if isinstance(t, torch.Tensor) else None
                     for t in ctx.inputs]
        finally:
            rec.paused = False
        return (None, None, None, *grads)


def _record(model_name, batch, mode, fused, size):
    """Record one forward (+ backward in train) at ``batch``."""
    import emo
    import emo.inference
    import emo_kernels
    torch.manual_seed(0)
    model = emo.create_model(model_name, fused=fused)
    model.train(mode == "train")
    rec = Recorder()
    hooks = []
    for n, m in model.named_modules():
        if isinstance(m, emo.iRMB) or n in ("stage0.0", "norm", "head"):
            label = n if n not in ("norm", "head") else "head"
            hooks.append(m.register_forward_pre_hook(lambda *a, label=label: setattr(rec, "block", label)))
            if mode == "train":
                hooks.append(m.register_full_backward_pre_hook(
                    lambda *a, label=label: setattr(rec, "block", label)))

    def stub_dw(x, w_exp, b_exp, w_dw, b_dw=None, **kw):
        k, s = w_dw.shape[-1], kw.get("stride", 1)
        pad = -(-(k - s) // 2)
        ho, wo = ((d + 2 * pad - k) // s + 1 for d in x.shape[2:])
        call = dict(op="eda", cin=x.shape[1], cmid=w_dw.shape[0], H=x.shape[2], W=x.shape[3],
                    Ho=ho, Wo=wo, k=k, stride=s, act=kw.get("act", "silu"),
                    skip=bool(kw.get("skip")), has_exp=w_exp is not None,
                    has_bexp=b_exp is not None, has_bdw=b_dw is not None,
                    bn_training=bool(kw.get("bn_training")), train=mode == "train")
        rec.ops.append(dict(block=rec.block, op="TRITON", triton=call))
        ins = [x, w_exp, b_exp, w_dw, b_dw, kw.get("bn_weight"), kw.get("bn_bias")]
        return _StubCall.apply(rec, call, (x.shape[0], w_dw.shape[0], ho, wo), *ins)

    def stub_attn(q, k, v, k_pad=None, **kw):
        call = dict(op="wa", C=q.shape[1], head_dim=kw["head_dim"], H=q.shape[2], W=q.shape[3],
                    ws=kw.get("window_size", 7), has_kpad=k_pad is not None, train=mode == "train")
        rec.ops.append(dict(block=rec.block, op="TRITON", triton=call))
        return _StubCall.apply(rec, call, tuple(v.shape), v, q, k, k_pad)

    x = torch.randn(batch, 3, size, size)
    import emo.model as emo_model
    saved = (emo_kernels.expand_dwconv_act, emo_kernels.window_attention, emo.inference.active,
             emo_model.is_tracing)
    emo_kernels.expand_dwconv_act, emo_kernels.window_attention = stub_dw, stub_attn
    emo.inference.active = lambda *a, **k: False      # the CUDA path: no prepared CPU plan
    emo_model.is_tracing = lambda *a, **k: False      # the recorder is a dispatch mode
    try:
        with (torch.no_grad() if mode == "infer" else contextlib.nullcontext()), \
                emo_kernels.use_backend("torch"), rec:
            out = model(x)
            if mode == "train":
                rec.block = "head"
                out.sum().backward()
    finally:
        (emo_kernels.expand_dwconv_act, emo_kernels.window_attention, emo.inference.active,
         emo_model.is_tracing) = saved
        for h in hooks:
            h.remove()
    return rec.ops


@functools.lru_cache(maxsize=None)
def recorded(model_name, batch, mode, fused, size=224):
    """The op list at ``batch``: recorded at batch 2 and 3, extrapolated linearly (batch 1
    takes other paths: views where batch > 1 copies)."""
    r1, r2 = _record(model_name, 2, mode, fused, size), _record(model_name, 3, mode, fused, size)
    if [o["op"] for o in r1] != [o["op"] for o in r2]:
        raise RuntimeError(f"{model_name} {mode}: batch 2 and 3 record different op lists")
    out = []
    for a, b in zip(r1, r2):
        if "triton" in a:
            out.append(a)
            continue
        out.append({k: (a[k] + (batch - 2) * (b[k] - a[k]) if isinstance(a[k], (int, float))
                        else a[k]) for k in a})
    return out


def torch_kernel(op, e):
    dw = op["dw"]
    return Kernel(op["op"], op["block"], dot_flops=op["dot"], dot_eff=C["cublas_eff"],
                  fp32=op["fp32"] + dw / 2 / C["cudnn_dw_eff"], sfu=op["sfu"],
                  l2=op["el"] * e, dram=op["el"] * e)


# ----- the Triton kernels of one op call ----------------------------------------------------
def _glue(block, n):
    return Kernel("triton launcher glue", block, count=n)


def eda_kernels(block, call, batch, dt, e, backward=False):
    """The Triton expand_dwconv_act launches of one call (forward, or its backward)."""
    cin, cmid, H, W, Ho, Wo, k, s = (call[n] for n in ("cin", "cmid", "H", "W", "Ho", "Wo", "k", "stride"))
    bp, bc, bk = _pow2(Ho * Wo, 16, 64), _pow2(cmid, 16, 32), _pow2(cin, 16, 32)
    nt = -(-Ho * Wo // bp)
    progs = batch * nt * -(-cmid // bc)
    act = {"none": 0, "silu": 1, "gelu": 2}[call["act"]]
    common = dict(HAS_EXP=call["has_exp"], HAS_BEXP=call["has_bexp"], ACT=act, SKIP=call["skip"],
                  NATIVE_DOT=True, BLOCK_P=bp, BLOCK_C=bc, BLOCK_K=bk)
    conv = dict(K=k, STRIDE=s, PAD=-(-(k - s) // 2))
    ints = dict(CIN=cin, CMID=cmid, H=H, W=W, HO=Ho, WO=Wo, NT=nt, sxb=cin * H * W, sxc=1,
                sxh=W * cin, sxw=cin, szb=cmid * Ho * Wo, szc=1, szh=Wo * cmid, szw=cmid)
    nk = -(-cin // bk)
    x_b, z_b = batch * cin * H * W * e, batch * cmid * Ho * Wo * e
    w_b = (cin * cmid + cmid * (k * k + 2)) * e
    trips = [k * k, nk] if call["has_exp"] else [k * k]
    bn = call["bn_training"]
    out = []
    if not backward:
        out.append(triton_kernel(
            block, "eda", "_fwd_kernel", dt,
            dict(**conv, HAS_BDW=call["has_bdw"], STORE_Z=not bn, STORE_P=bn or call["train"],
                 STATS=bn, **common), ints, trips, progs,
            x_b + w_b + (z_b if not bn else 0) + (2 * z_b if bn or call["train"] else 0),
            label="expand_dwconv_act fwd (per-tap recompute)"))
        if bn:
            out.append(triton_kernel(block, "eda", "_bn_apply_kernel", dt, common, ints,
                                     [nk] if call["skip"] and call["has_exp"] else [], progs,
                                     2 * z_b + z_b + (x_b if call["skip"] else 0)))
        out.append(_glue(block, TRITON_GLUE["eda_train_fwd" if call["train"] else "eda_infer"]))
        return out
    ints_bwd = dict(CMID=cmid, HO=Ho, WO=Wo, NT=nt, sgb=cmid * Ho * Wo, sgc=1, sgh=Wo * cmid,
                    sgw=cmid)
    out.append(triton_kernel(block, "eda", "_bwd_stats_kernel", dt,
                             dict(BLOCK_P=bp, BLOCK_C=bc), ints_bwd, [], progs, 3 * z_b))
    bpi = _pow2(H * W, 16, 64)
    nti = -(-H * W // bpi)
    progs_i = batch * nti * -(-cmid // bc)
    ints_dv = dict(ints, NT=nti, sgb=cmid * Ho * Wo, sgc=1, sgh=Wo * cmid, sgw=cmid,
                   sob=cin * H * W, soc=1, soh=W * cin, sow=cin)
    out.append(triton_kernel(block, "eda", "_bwd_dv_kernel", dt,
                             dict(**conv, **dict(common, BLOCK_P=bpi)), ints_dv,
                             [nk, k * k] if call["has_exp"] else [k * k], progs_i,
                             x_b + 3 * z_b + batch * cmid * H * W * 4))
    if call["has_exp"]:
        gu_b = batch * cmid * H * W * 4
        out.append(triton_kernel(block, "eda", "_gemm_gx_kernel", dt,
                                 dict(BLOCK_P=bpi, BLOCK_C=bc, BLOCK_K=bk),
                                 dict(CIN=cin, CMID=cmid, H=H, W=W, NT=nti, sob=cin * H * W,
                                      soc=1, soh=W * cin, sow=cin),
                                 [-(-cmid // bc)], batch * nti * nk, gu_b + x_b))
        out.append(triton_kernel(block, "eda", "_gemm_gw_kernel", dt,
                                 dict(BLOCK_P=bpi, BLOCK_C=bc, BLOCK_K=bk),
                                 dict(B=batch, CIN=cin, CMID=cmid, H=H, W=W, sxb=cin * H * W,
                                      sxc=1, sxh=W * cin, sxw=cin),
                                 [-(-batch * H * W // bpi)], -(-cmid // bc) * nk, gu_b + x_b))
    out.append(_glue(block, TRITON_GLUE["eda_train_bwd"]))
    return out


def wa_kernels(block, call, batch, dt, e, backward=False):
    Cc, d, H, W, ws = (call[n] for n in ("C", "head_dim", "H", "W", "ws"))
    n1, n2 = -(-H // ws), -(-W // ws)
    bl = max(16, 1 << (ws * ws - 1).bit_length())
    const = dict(D=d, WS=ws, BLOCK_L=bl, BLOCK_D=max(16, 1 << (d - 1).bit_length()),
                 HAS_KPAD=call["has_kpad"], UPCAST=False, IS_F64=False)
    progs = batch * n1 * n2 * (Cc // d)
    m = batch * Cc * H * W * e
    if not backward:
        return [triton_kernel(block, "wa", "_window_attention_fwd", dt, const, {}, [], progs,
                              4 * m, label="window_attention fwd")]
    return [triton_kernel(block, "wa", "_window_attention_bwd", dt, const, {}, [], progs,
                          11 * m, label="window_attention bwd"),
            _glue(block, TRITON_GLUE["wa_train_bwd"])]


# ----- rows -------------------------------------------------------------------------------
def kernels_for(model_name, batch, dt, mode, fused, size=224):
    e = ESIZE[dt]
    out = []
    for op in recorded(model_name, batch, mode, fused, size):
        if "triton" in op:
            call, bwd = op["triton"], op["op"] == "TRITON_BWD"
            fn = eda_kernels if call["op"] == "eda" else wa_kernels
            out += fn(op["block"], call, batch, dt, e, backward=bwd)
        else:
            out.append(torch_kernel(op, e))
    return out


def _summary(kernels):
    per_bound = {b: 0.0 for b in BOUNDS}
    blocks: Dict[str, Dict] = {}
    for k in kernels:
        t, b = k.time()
        per_bound[b] += t
        blk = blocks.setdefault(k.block, dict(ms=0.0, kernels=0, by_bound={}))
        blk["ms"] += t * 1e3
        blk["kernels"] += k.count
        blk["by_bound"][b] = blk["by_bound"].get(b, 0.0) + t * 1e3
    total = sum(per_bound.values())
    for blk in blocks.values():
        blk["bound"] = max(blk["by_bound"], key=blk["by_bound"].get)
    return total * 1e3, max(per_bound, key=per_bound.get), blocks, per_bound


def row(model_name, batch, dt, mode, size=224, kernels=False):
    eager = kernels_for(model_name, batch, dt, mode, False, size)
    fused = kernels_for(model_name, batch, dt, mode, True, size)
    e_ms, e_bound, e_blocks, _ = _summary(eager)
    f_ms, f_bound, f_blocks, f_per = _summary(fused)
    r = dict(kind=KIND, model=model_name, batch=batch, dtype=dt, mode=mode, size=size,
             eager_ms=round(e_ms, 3), fused_ms=round(f_ms, 3),
             binding_bound=f_bound, eager_binding_bound=e_bound,
             fused_over_eager=round(f_ms / e_ms, 2),
             eager_kernels=sum(k.count for k in eager), fused_kernels=sum(k.count for k in fused),
             fused_ms_by_bound={b: round(v * 1e3, 3) for b, v in f_per.items() if v},
             note=NOTE + ("; train backward: eager's real autograd ops, fused: today's Triton "
                          "backward kernels costed from their SASS + recorded glue backward"
                          if mode == "train" else ""))
    r["blocks"] = {b: dict(eager_ms=round(e_blocks.get(b, {}).get("ms", 0.0), 4),
                           eager_bound=e_blocks.get(b, {}).get("bound"),
                           fused_ms=round(v["ms"], 4), fused_bound=v["bound"],
                           fused_kernels=v["kernels"]) for b, v in f_blocks.items()}
    if kernels:
        r["kernels"] = {"fused": [_kdict(k) for k in fused if k.detail],
                        "eager_top": [_kdict(k) for k in sorted(eager, key=lambda k: -k.time()[0])[:15]]}
    return r


def _kdict(k):
    t, b = k.time()
    return dict(name=k.name, block=k.block, us=round(t * 1e6, 2), bound=b,
                bounds_us={n: round(v * 1e6, 2) for n, v in k.bounds().items()},
                dot_gflop=round(k.dot_flops / 1e9, 3), dram_mb=round(k.dram / 1e6, 3),
                l2_mb=round(k.l2 / 1e6, 3), **k.detail)


def constants_table():
    lines = ["| constant | value | unit | status | note |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {v:g} | {u} | {s} | {note} |" for n, v, u, s, note in CONSTANTS]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=BANNER)
    ap.add_argument("--models", default="emo_1m,emo_2m,emo_5m,emo_6m")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--dtypes", default="bf16,fp16")
    ap.add_argument("--modes", default="infer,train")
    ap.add_argument("--json", action="store_true", help="one JSON object per row")
    ap.add_argument("--kernels", action="store_true", help="per-kernel detail (fused, eager top 15)")
    ap.add_argument("--blocks", action="store_true", help="per-block table (human output)")
    a = ap.parse_args(argv)
    rows = [row(m, a.batch, dt, mode, a.size, a.kernels)
            for m in a.models.split(",") for dt in a.dtypes.split(",") for mode in a.modes.split(",")]
    if a.json:
        for r in rows:
            if not a.kernels and not a.blocks:
                r.pop("blocks")
            print(json.dumps(r))
        return 0
    print(BANNER)
    print(f"Rows: {a.size}x{a.size}, batch {a.batch}, channels_last; lower-bound GPU ms per batch "
          f"(host time not counted). {NOTE}.\n")
    print(constants_table() + "\n")
    print(f"{'model':8} {'dtype':5} {'mode':5} {'eager ms':>9} {'fused ms':>9} {'fused/eager':>11}"
          f"  fused binding bound  (eager bound)")
    for r in rows:
        print(f"{r['model']:8} {r['dtype']:5} {r['mode']:5} {r['eager_ms']:9.2f} {r['fused_ms']:9.2f} "
              f"{r['fused_over_eager']:10.2f}x  {r['binding_bound']:19}  ({r['eager_binding_bound']})")
        if a.blocks:
            for b, v in r["blocks"].items():
                print(f"    {b:12} eager {v['eager_ms']:8.3f} ms ({v['eager_bound']})   fused "
                      f"{v['fused_ms']:8.3f} ms ({v['fused_bound']}, {v['fused_kernels']} kernels)")
        if a.kernels:
            for k in r["kernels"]["fused"]:
                print(f"    {k['block']:12} {k['name'][:44]:44} {k['us']:9.1f} us {k['bound']:6} "
                      f"regs {k['regs']} local {k['local_bytes']} smem {k['shared']} "
                      f"HGMMA {k['hgmma']} trips {k['trips']}{' (approx)' if k['approx_trips'] else ''}")
    print("\n" + BANNER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
