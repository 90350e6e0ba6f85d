"""Shared pieces of the benchmarks: devices and versions, timing, model variants, the EMO
block shapes read off the models, op arguments, bytes-moved formulas, memory, bandwidth.

Used by ``bench/throughput.py`` (the README's main job) and the pytest-benchmark suites
``bench/bench_*.py``. Configuration of the suites comes from environment variables (so that
``bench/gpu_check.sh`` and CI can size them without pytest options), see :func:`config`.
"""
import functools
import gc
import os
import platform
import re
import statistics
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

import emo
import emo_kernels
from emo_kernels import backends, measured

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
SHORT_DTYPE = measured.SHORT_DTYPE  # one table: measured.py keys its shape classes by it


# ----- device, versions ---------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


def device_slug(device) -> str:
    """Short file-name-safe device tag: ``cpu-x86_64`` or ``gpu-nvidia-h200``."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return "gpu-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"cpu-{platform.machine()}"


def versions() -> Dict[str, str]:
    try:
        import triton
        triton_v = triton.__version__
    except Exception:  # noqa: BLE001  (not installed, or broken)
        triton_v = "not installed"
    return dict(torch=torch.__version__, triton=triton_v, cuda=str(torch.version.cuda),
                python=platform.python_version(), emo_kernels=emo_kernels.__version__)


def default_device() -> torch.device:
    return torch.device(os.environ.get("EMO_BENCH_DEVICE")
                        or ("cuda" if torch.cuda.is_available() else "cpu"))


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# ----- suite configuration -----------------------------------------------------------------
def _env_list(name, default):
    v = os.environ.get(name)
    return [s for s in re.split(r"[,\s]+", v) if s] if v else list(default)


@dataclass
class Config:
    device: torch.device
    dtypes: List[torch.dtype]
    batches: List[int]
    op_batches: List[int]
    layouts: List[str]           # "nchw" (contiguous) and/or "nhwc" (channels_last)
    models: List[str]            # whole-model rows
    shape_models: List[str]      # models whose block shapes the op suites use
    size: int
    rounds: int                  # timed rounds per row
    warmup: int
    compile: str                 # "0": no compile rows; "1": with; "only": compile rows only
    tiny: bool
    notes: List[str] = field(default_factory=list)


def config() -> Config:
    """The suites' settings, from environment variables (defaults depend on the device).

    EMO_BENCH_DEVICE   cuda | cpu                     (default: cuda when present)
    EMO_BENCH_DTYPES   fp32,bf16,fp16                 (CPU: fp32; CUDA: bf16,fp16,fp32)
    EMO_BENCH_BATCHES  whole-model batches            (CPU: 1,16; CUDA: 256,1)
    EMO_BENCH_OP_BATCHES  op-suite batches            (CPU: 16; CUDA: 256)
    EMO_BENCH_LAYOUTS  nchw,nhwc (nhwc = channels_last) (CPU: nchw; CUDA: nhwc)
    EMO_BENCH_MODELS   emo_5m,emo_1m                  (whole-model rows)
    EMO_BENCH_SHAPE_MODELS  emo_5m,emo_1m             (block shapes for the op suites)
    EMO_BENCH_SIZE     image size (224)
    EMO_BENCH_ROUNDS   timed rounds per row           (CPU: 5; CUDA: 30)
    EMO_BENCH_WARMUP   untimed calls first            (CPU: 1; CUDA: 5)
    EMO_BENCH_COMPILE  0 | 1 | only: torch.compile rows (slow: ~50-80 s per EMO-5M compile
                       on 2 CPU cores, each mode and batch compiled separately) (default 0)
    EMO_BENCH_TINY=1   smoke mode: emo_1m at 64x64, batch 1, 1 round (CI's dry run)
    EMO_BENCH_THREADS  torch CPU threads (default: torch's). On a shared, oversubscribed
                       machine use 1: with 2 OpenMP threads and busy cores, every parallel
                       region can stall ~100 ms at its barrier (seen here: a 0.15 ms
                       depthwise conv took 150 ms with 2 threads under load).
    """
    set_threads()
    device = default_device()
    cuda = device.type == "cuda"
    tiny = os.environ.get("EMO_BENCH_TINY", "0") not in ("", "0")
    dtypes = [DTYPES[d] for d in _env_list("EMO_BENCH_DTYPES",
                                           ["bf16", "fp16", "fp32"] if cuda else ["fp32"])]
    models = _env_list("EMO_BENCH_MODELS", ["emo_1m"] if tiny else ["emo_5m", "emo_1m"])
    cfg = Config(
        device=device, dtypes=dtypes,
        batches=[int(b) for b in _env_list("EMO_BENCH_BATCHES",
                                           [1] if tiny else ([256, 1] if cuda else [1, 16]))],
        op_batches=[int(b) for b in _env_list("EMO_BENCH_OP_BATCHES",
                                              [1] if tiny else ([256] if cuda else [16]))],
        layouts=_env_list("EMO_BENCH_LAYOUTS", ["nhwc"] if cuda else ["nchw"]),
        models=models,
        shape_models=_env_list("EMO_BENCH_SHAPE_MODELS", models),
        size=int(os.environ.get("EMO_BENCH_SIZE", 64 if tiny else 224)),
        rounds=int(os.environ.get("EMO_BENCH_ROUNDS", 1 if tiny else (30 if cuda else 5))),
        warmup=int(os.environ.get("EMO_BENCH_WARMUP", 1 if tiny else (5 if cuda else 1))),
        compile=os.environ.get("EMO_BENCH_COMPILE", "0").strip().lower() or "0",
        tiny=tiny)
    for lay in cfg.layouts:
        if lay not in ("nchw", "nhwc"):
            raise ValueError(f"EMO_BENCH_LAYOUTS: {lay!r} is not nchw or nhwc")
    return cfg


def set_threads():
    n = os.environ.get("EMO_BENCH_THREADS")
    if n and torch.get_num_threads() != int(n):
        torch.set_num_threads(int(n))


def memory_format(layout):
    return torch.channels_last if layout == "nhwc" else torch.contiguous_format


# ----- whole-model steps (shared with bench/throughput.py) ----------------------------------
def make_step(model, x, train):
    """A closure running one inference forward, or one SGD training step (fwd+bwd+update)."""
    if not train:
        def step():
            with torch.inference_mode():
                model(x)
        return step
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    target = torch.randint(0, 1000, (x.shape[0],), device=x.device)

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def timer(device):
    """``timed(fn) -> seconds``: CUDA events on CUDA (synchronized), perf_counter on CPU."""
    if torch.device(device).type == "cuda":
        def timed(fn):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            return a.elapsed_time(b) / 1e3
    else:
        def timed(fn):
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
    return timed


def build_model(name, device, dtype, layout="nchw", train=False, fused=False, like=None):
    """An EMO model on ``device``/``dtype``/layout; with ``like``, the same weights as it."""
    m = emo.create_model(name, fused=fused)
    if like is not None:
        m.load_state_dict(like.state_dict())
    m = m.to(device=device, dtype=dtype, memory_format=memory_format(layout))
    m.train(train)
    return m


def _gen(device, seed):
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


def _randn(shape, g, device, dtype, scale=1.0):
    """Random normal drawn on the device itself (fast for GPU-sized inputs), then cast."""
    return (torch.randn(*shape, generator=g, device=device) * scale).to(dtype)


def model_input(batch, size, device, dtype, layout="nchw", seed=0):
    x = _randn((batch, 3, size, size), _gen(device, seed), device, dtype)
    return x.contiguous(memory_format=memory_format(layout))


class BackendStep:
    """Run ``step`` with an emo_kernels backend selected (None: leave the selection alone)."""

    def __init__(self, step, backend=None):
        self.step, self.backend = step, backend

    def __call__(self):
        if self.backend is None:
            return self.step()
        with emo_kernels.use_backend(self.backend):
            return self.step()


# ----- EMO block shapes, read off the models ------------------------------------------------
@dataclass(frozen=True)
class DwSpec:
    """One ``expand_dwconv_act`` call of an iRMB (per image)."""
    cin: int
    cmid: int
    k: int
    stride: int
    act: str
    skip: bool
    identity: bool       # w_exp is None (the stem iRMB)
    H: int
    W: int

    @property
    def out_hw(self):
        pad = -(-(self.k - self.stride) // 2)
        return ((self.H + 2 * pad - self.k) // self.stride + 1,
                (self.W + 2 * pad - self.k) // self.stride + 1)

    @property
    def id(self):
        return (f"Cin{self.cin}-Cmid{self.cmid}-{self.H}x{self.W}-k{self.k}-s{self.stride}-"
                f"{'id' if self.identity else self.act}{'-skip' if self.skip else ''}")


@dataclass(frozen=True)
class AttnSpec:
    """One ``window_attention`` call of an attention iRMB (per image)."""
    C: int
    head_dim: int
    H: int
    W: int
    window_size: int

    @property
    def id(self):
        return f"C{self.C}-hd{self.head_dim}-{self.H}x{self.W}-ws{self.window_size}"


@functools.lru_cache(maxsize=None)
def block_specs(model_name, size=224):
    """[(module name, DwSpec | AttnSpec)] for every op call of one fused forward of the model.

    Runs the model once (eval, batch 1, CPU, torch backend) with the two public ops wrapped so
    that each call records its arguments: the shapes are what the model really passes."""
    model = emo.create_model(model_name, fused=True).eval()
    calls, current = [], [None]
    hooks = [m.register_forward_pre_hook(lambda mod, inp, n=n: current.__setitem__(0, n))
             for n, m in model.named_modules() if isinstance(m, emo.iRMB)]
    orig_dw, orig_attn = emo_kernels.expand_dwconv_act, emo_kernels.window_attention

    def rec_dw(x, w_exp, b_exp, w_dw, b_dw=None, **kw):
        calls.append((current[0], DwSpec(
            cin=x.shape[1], cmid=w_dw.shape[0], k=w_dw.shape[-1], stride=kw.get("stride", 1),
            act=kw.get("act", "silu"), skip=bool(kw.get("skip", False)),
            identity=w_exp is None, H=x.shape[2], W=x.shape[3])))
        return orig_dw(x, w_exp, b_exp, w_dw, b_dw, **kw)

    def rec_attn(q, k, v, k_pad=None, **kw):
        calls.append((current[0], AttnSpec(C=q.shape[1], head_dim=kw["head_dim"], H=q.shape[2],
                                           W=q.shape[3], window_size=kw.get("window_size", 7))))
        return orig_attn(q, k, v, k_pad, **kw)

    emo_kernels.expand_dwconv_act, emo_kernels.window_attention = rec_dw, rec_attn
    try:
        with torch.no_grad(), emo_kernels.use_backend("torch"):
            model(torch.zeros(1, 3, size, size))
    finally:
        emo_kernels.expand_dwconv_act, emo_kernels.window_attention = orig_dw, orig_attn
        for h in hooks:
            h.remove()
    return tuple(calls)


def distinct_specs(models, size=224, kind=DwSpec):
    """{spec: {model: [block names]}} over the models, in order of first appearance."""
    out: Dict[object, Dict[str, List[str]]] = {}
    for name in models:
        for block, spec in block_specs(name, size):
            if isinstance(spec, kind):
                out.setdefault(spec, {}).setdefault(name, []).append(block)
    return out


# ----- op arguments -------------------------------------------------------------------------
def dw_inputs(spec: DwSpec, batch, device, dtype, layout="nchw", train=False, seed=0):
    """(args, kwargs, leaves) for ``expand_dwconv_act`` as the fused model calls it.

    Eval (``train=False``): BN folded into the biases, no BN arguments. Train: BN with batch
    statistics (running stats updated in place), leaves require grad."""
    g = _gen(device, seed)

    def r(*shape, scale=1.0):
        return _randn(shape, g, device, dtype, scale)
    x = r(batch, spec.cin, spec.H, spec.W).contiguous(memory_format=memory_format(layout))
    w_exp = None if spec.identity else r(spec.cmid, spec.cin, 1, 1, scale=spec.cin ** -0.5)
    b_exp = None if spec.identity else r(spec.cmid, scale=0.1)
    w_dw = r(spec.cmid, 1, spec.k, spec.k, scale=1.0 / spec.k)
    b_dw = r(spec.cmid, scale=0.1)
    kwargs = dict(act="none" if spec.identity else spec.act, stride=spec.stride,
                  skip=spec.skip)
    leaves = [t for t in (x, w_exp, b_exp, w_dw, b_dw) if t is not None]
    if train:
        bn_w, bn_b = r(spec.cmid, scale=0.1) + 1, r(spec.cmid, scale=0.1)
        kwargs.update(bn_weight=bn_w, bn_bias=bn_b,
                      running_mean=torch.zeros(spec.cmid, device=device, dtype=dtype),
                      running_var=torch.ones(spec.cmid, device=device, dtype=dtype),
                      bn_training=True, momentum=0.1, eps=1e-6)
        leaves += [bn_w, bn_b]
        for t in leaves:
            t.requires_grad_(True)
    return (x, w_exp, b_exp, w_dw, b_dw), kwargs, leaves


def attn_inputs(spec: AttnSpec, batch, device, dtype, layout="nchw", train=False, seed=0):
    """(args, kwargs, leaves) for ``window_attention`` as the fused model calls it: q and k are
    the two channel halves of one (B, 2C, H, W) qk tensor, v a separate map."""
    g = _gen(device, seed)
    fmt = memory_format(layout)
    qk = _randn((batch, 2 * spec.C, spec.H, spec.W), g, device, dtype).contiguous(memory_format=fmt)
    v = _randn((batch, spec.C, spec.H, spec.W), g, device, dtype).contiguous(memory_format=fmt)
    k_pad = _randn((spec.C,), g, device, dtype, 0.1)
    leaves = [qk, v, k_pad]
    if train:
        for t in leaves:
            t.requires_grad_(True)
    C = spec.C
    args = (qk[:, :C], qk[:, C:], v, k_pad)
    kwargs = dict(head_dim=spec.head_dim, window_size=spec.window_size)
    return args, kwargs, leaves


def backend_reasons(op, args, kwargs) -> Dict[str, Optional[str]]:
    """{backend: None if it can run this call, else why not}, from ``emo_kernels.explain``.

    Differences from explain: an implementation that ``auto`` skips only because it is not yet
    verified on hardware counts as runnable (a benchmark asks for it by name); the Triton
    interpreter (TRITON_INTERPRET=1 on CPU tensors) is refused: it is a test tool,
    thousands of times slower than the reference."""
    reasons = emo_kernels.explain(op, *args, **kwargs)
    out = {}
    dev = next(a for a in args if isinstance(a, torch.Tensor)).device
    for b, r in reasons.items():
        if r is not None and r.startswith("usable when asked for explicitly"):
            r = None
        if r is None and b == "triton" and dev.type != "cuda" and backends.triton_interpreted():
            r = "Triton interpreter (TRITON_INTERPRET=1): a test tool, not benchmarked"
        out[b] = r
    return out


def model_backend_reasons(model_name, device, dtype, layout, size, train) -> Dict[str, Optional[str]]:
    """Per backend: None if it can run every op call of the fused model, else the first reason."""
    out = {b: None for b in backends.BACKENDS}
    for _, spec in block_specs(model_name, size):
        if isinstance(spec, DwSpec):
            op, (args, kw, _) = "expand_dwconv_act", dw_inputs(spec, 1, device, dtype, layout, train)
        else:
            op, (args, kw, _) = "window_attention", attn_inputs(spec, 1, device, dtype, layout, train)
        for b, r in backend_reasons(op, args, kw).items():
            if r is not None and out[b] is None:
                out[b] = f"{op} {spec.id}: {r}"
    return out


def model_auto_backends(model_name, device, dtype, layout, size, train) -> List[str]:
    """The backends 'auto' picks over the model's op calls (explain's order: the first that
    can run each call, never an implementation auto skips, nor the Triton interpreter)."""
    picks = set()
    for _, spec in block_specs(model_name, size):
        if isinstance(spec, DwSpec):
            op, (args, kw, _) = "expand_dwconv_act", dw_inputs(spec, 1, device, dtype, layout, train)
        else:
            op, (args, kw, _) = "window_attention", attn_inputs(spec, 1, device, dtype, layout, train)
        reasons = emo_kernels.explain(op, *args, **kw)
        if torch.device(device).type != "cuda" and backends.triton_interpreted():
            reasons["triton"] = "interpreter"
        picks.add(next((b for b in backends.BACKENDS if reasons[b] is None), "none"))
    return [b for b in backends.BACKENDS + ("none",) if b in picks]


# ----- bytes moved (for achieved GB/s on GPU rows) ------------------------------------------
def bytes_expand_dwconv_act(spec: DwSpec, batch, elem_size, mode):
    """Compulsory memory traffic of one ``expand_dwconv_act`` call, in bytes.

    The op's docstring: a fused kernel reads x and the weights and writes z, per image
    ``e*(Cin*H*W + Cmid*Ho*Wo)``; weights ``e*(Cmid*Cin + Cmid*k*k + 2*Cmid)`` once per call.
    fwd+bwd (training) adds the backward's minimum: read x again and dz, write dx and the
    weight gradients: ``e*(Cin*H*W + Cmid*Ho*Wo + Cin*H*W)`` per image + weights again.
    (BatchNorm batch statistics and any recomputation are extra traffic a kernel may need;
    this is a lower bound, so achieved GB/s is an effective bandwidth.)"""
    ho, wo = spec.out_hw
    x_el, z_el = spec.cin * spec.H * spec.W, spec.cmid * ho * wo
    w_el = (0 if spec.identity else spec.cmid * spec.cin + spec.cmid) + spec.cmid * spec.k ** 2 + spec.cmid
    if mode == "fwd":
        return elem_size * (batch * (x_el + z_el) + w_el)
    return elem_size * (batch * (3 * x_el + 2 * z_el) + 2 * w_el)


def bytes_window_attention(spec: AttnSpec, batch, elem_size, mode):
    """Compulsory memory traffic of one ``window_attention`` call, in bytes.

    The op's docstring: a fused kernel reads q, k and v once and writes the output once:
    ``4*B*C*H*W`` elements. fwd+bwd adds the backward's minimum: read q, k, v and dout,
    write dq, dk, dv: 7 more maps, 11 in all (the forward's output, or a per-row statistic,
    re-read by a flash-style backward, is not counted)."""
    n = batch * spec.C * spec.H * spec.W
    return elem_size * n * (4 if mode == "fwd" else 11)


def copy_bandwidth(device, nbytes=1 << 30, reps=20) -> Optional[float]:
    """Device-to-device copy bandwidth in GB/s (bytes read + bytes written), CUDA-event median
    of ``reps`` copies of a ``nbytes`` buffer; None on CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    src = torch.empty(nbytes // 4, device=device, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / statistics.median(times) / 1e9


_COPY_BW: Dict[str, Optional[float]] = {}


def copy_bandwidth_cached(device) -> Optional[float]:
    key = str(torch.device(device))
    if key not in _COPY_BW:
        _COPY_BW[key] = copy_bandwidth(device)
    return _COPY_BW[key]


# ----- peak memory --------------------------------------------------------------------------
def _proc_kb(field_name):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise OSError(field_name)


def _malloc_trim():
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except Exception:  # noqa: BLE001  (not glibc)
        pass


def peak_memory(fn, device) -> Tuple[Optional[float], str]:
    """(MiB, what was measured) for one call of ``fn``.

    CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak (absolute: weights,
    input, activations, gradients). CPU: the rise of the resident set during the call
    (VmHWM after resetting it through /proc/self/clear_refs, minus VmRSS before, after a
    malloc_trim): the step's extra memory; None where /proc does not allow it."""
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2 ** 20, "cuda max_memory_allocated"
    try:
        _malloc_trim()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _proc_kb("VmRSS")
        fn()
        return max(_proc_kb("VmHWM") - before, 0) / 1024, "cpu peak RSS rise (VmHWM reset)"
    except OSError:
        fn()
        return None, "n/a (no /proc/self/clear_refs)"


# ----- pytest-benchmark glue ----------------------------------------------------------------
def run_benchmark(benchmark, fn, device, rounds, warmup):
    """Warm up, then time ``fn`` with pytest-benchmark (``rounds`` rounds of one call).

    On CUDA each timed call ends with a synchronize (so pytest-benchmark's host timer sees the
    device time) and is bracketed by CUDA events; returns the events' median in ms (None on
    CPU), which the report prefers on CUDA."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    sync(device)
    if device.type != "cuda":
        benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)
        return None
    times = []

    def timed():
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize(device)
        times.append(a.elapsed_time(b))
    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=0)
    return statistics.median(times)


def base_info(cfg: Config, dtype, layout, batch):
    info = dict(device=cfg.device.type, device_name=device_name(cfg.device),
                dtype=SHORT_DTYPE[dtype], layout=layout, batch=batch, size=cfg.size)
    info.update(versions())
    if cfg.device.type == "cuda":
        info["copy_gbps"] = copy_bandwidth_cached(cfg.device)
        info["family"] = measured.device_family(cfg.device)
    return info


# ----- the op suites (bench_expand_dwconv_act.py, bench_window_attention.py) ----------------
OPS = {
    "expand_dwconv_act": dict(kind=DwSpec, inputs=dw_inputs, bytes=bytes_expand_dwconv_act),
    "window_attention": dict(kind=AttnSpec, inputs=attn_inputs, bytes=bytes_window_attention),
}
COMPILED = "torch.compile"   # provider: torch.compile of the reference (the torch backend)


def op_cases(op):
    """pytest.param list for one op: every distinct block shape of the configured models x
    mode (fwd, fwd+bwd) x dtype x layout x batch x provider (each backend, and torch.compile
    of the reference when EMO_BENCH_COMPILE is set), with readable ids."""
    import pytest
    cfg = config()
    specs = distinct_specs(tuple(cfg.shape_models), cfg.size, OPS[op]["kind"])
    providers = [] if cfg.compile == "only" else list(backends.BACKENDS)
    if cfg.compile != "0":
        providers.append(COMPILED)
    cases = []
    for dtype in cfg.dtypes:
        for layout in cfg.layouts:
            for batch in cfg.op_batches:
                for mode in ("fwd", "fwd+bwd"):
                    for spec, uses in specs.items():
                        for prov in providers:
                            cases.append(pytest.param(
                                spec, uses, mode, dtype, layout, batch, prov,
                                id=f"{mode}-{spec.id}-{SHORT_DTYPE[dtype]}-{layout}-B{batch}-"
                                   f"{prov}"))
    return cases


def run_op_row(benchmark, op, spec, uses, mode, dtype, layout, batch, provider):
    """Time one op row (skipping, with explain's reason, a backend that cannot run it)."""
    import pytest
    cfg = config()
    dev = cfg.device
    train = mode == "fwd+bwd"
    args, kwargs, leaves = OPS[op]["inputs"](spec, batch, dev, dtype, layout, train)
    public = getattr(emo_kernels, op)
    if provider == COMPILED:
        ref = backends._REGISTRY[op]["torch"].fn
        torch._dynamo.reset()
        compiled = torch.compile(ref, dynamic=False)

        def call():
            return compiled(*args, **kwargs)
    else:
        reason = backend_reasons(op, args, kwargs)[provider]
        if reason is not None:
            pytest.skip(f"{provider}: {reason}")

        def call():
            with emo_kernels.use_backend(provider):
                return public(*args, **kwargs)
    if train:
        try:
            out = call()
        except emo_kernels.BackendUnavailableError as e:
            pytest.skip(f"{provider}: {e}")
        grad = torch.randn_like(out)
        del out

        def fn():
            for t in leaves:
                t.grad = None
            call().backward(grad)
    else:
        def fn():
            with torch.no_grad():
                call()
    try:
        ev_ms = run_benchmark(benchmark, fn, dev, cfg.rounds, cfg.warmup)
    except emo_kernels.BackendUnavailableError as e:
        pytest.skip(f"{provider}: {e}")
    except Exception as e:  # noqa: BLE001
        if provider == COMPILED:
            pytest.skip(f"torch.compile failed: {type(e).__name__}: {str(e)[:300]}")
        raise
    info = base_info(cfg, dtype, layout, batch)
    elem = torch.empty((), dtype=dtype).element_size()
    info.update(suite="op", op=op, case=spec.id, mode=mode, provider=provider,
                shape_class=measured.shape_class(op, args, kwargs),
                backend=None if provider == COMPILED else provider,
                compiled=provider == COMPILED,
                uses={m: len(b) for m, b in uses.items()}, bytes=OPS[op]["bytes"](
                    spec, batch, elem, mode))
    if ev_ms is not None:
        info["cuda_event_median_ms"] = ev_ms
    benchmark.extra_info.update(info)
