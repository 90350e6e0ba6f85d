"""Committed GPU measurements: where ``auto`` may pick a GPU kernel.

A GPU kernel implementation (registered with ``gpu_kernel=True``: the triton and cuda
backends) is picked by ``auto`` for a CUDA tensor only when this table has a row for the same
op, backend, GPU family (``sm_90`` for an H100/H200, ``sm_80`` for an A100) and shape class
whose measured speedup over the torch path (cuDNN / cuBLAS) is above ``MIN_SPEEDUP``.
Everywhere else ``auto`` runs the torch path and ``explain`` says "not measured faster on
<device>". ``use_backend('triton')`` (or ``'cuda'``) still runs the kernels.

The table is ``emo_kernels/gpu_measured.json``. ``bench/gpu_check.sh`` writes a new one from
its op benchmarks (``python -m bench.measured``) into its output folder; a session commits it
here together with the run's results. Rows record what was measured (device, versions, date,
commit, the per-case speedups). ``$EMO_KERNELS_MEASURED`` names another table file (tests).

Shape classes (``shape_class``): ``expand_dwconv_act``: ``k{k}-s{stride}-{dtype}-{mode}``;
``window_attention``: ``ws{window}-hd{head_dim}-{dtype}-{mode}``; ``irmb_inference``:
``k{k}-s{stride}-{kind}-{dtype}-{mode}``, kind ``attn`` (a block with window attention),
``se`` (squeeze-excite: the stem block) or ``plain`` (the Triton kernels differ per kind); any
other op: ``{dtype}-{mode}``; mode is ``train`` when the call records autograd or uses
BatchNorm batch statistics, else ``infer``.
"""
import json
import os
from typing import List, Optional

import torch

TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_measured.json")
ENV_VAR = "EMO_KERNELS_MEASURED"
# a kernel must beat the torch path by this factor in every measured case of its class
MIN_SPEEDUP = 1.05
SHORT_DTYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32",
               torch.float64: "fp64"}

_CACHE = {}


def table_path() -> str:
    return os.environ.get(ENV_VAR) or TABLE_PATH


def load_table(path: Optional[str] = None) -> List[dict]:
    """The rows of the measurement table (cached per file and modification time; while
    torch.compile traces, the rows already loaded: no file access inside a graph)."""
    path = path or table_path()
    if torch.compiler.is_compiling():
        hit = _CACHE.get(path)
        return hit[1] if hit else []
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError:
        return []
    hit = _CACHE.get(path)
    if hit is None or hit[0] != stamp:
        with open(path) as f:
            data = json.load(f)
        rows = data.get("rows", []) if isinstance(data, dict) else []
        hit = _CACHE[path] = (stamp, rows)
    return hit[1]


_DEVICES = {}  # CUDA device index -> (name, family), filled by eager calls


def _device(device):
    idx = device.index if device.index is not None else (
        0 if torch.compiler.is_compiling() else torch.cuda.current_device())
    hit = _DEVICES.get(idx)
    if hit is None:
        if torch.compiler.is_compiling():
            return "a CUDA device not seen outside torch.compile", "sm_unknown"
        major, minor = torch.cuda.get_device_capability(idx)
        hit = _DEVICES[idx] = (torch.cuda.get_device_name(idx), f"sm_{major}{minor}")
    return hit


def device_family(device) -> str:
    """``sm_XY`` of a CUDA device."""
    return _device(torch.device(device))[1]


def _on_gpu(t) -> bool:
    return t.device.type == "cuda"


def _mode(tensors, kwargs) -> str:
    if kwargs.get("bn_training"):
        return "train"
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return "train"
    return "infer"


def shape_class(op: str, args, kwargs) -> str:
    """The class of an op call that a measurement row covers (see the module docstring)."""
    tensors = [t for t in list(args) + list(kwargs.values()) if isinstance(t, torch.Tensor)]
    tail = f"{SHORT_DTYPE.get(tensors[0].dtype, str(tensors[0].dtype))}-{_mode(tensors, kwargs)}"
    if op == "expand_dwconv_act":
        return f"k{args[3].shape[-1]}-s{kwargs.get('stride', 1)}-{tail}"
    if op == "window_attention":
        return f"ws{kwargs.get('window_size', 7)}-hd{kwargs.get('head_dim')}-{tail}"
    if op == "irmb_inference":
        kind = ("attn" if kwargs.get("w_qk") is not None
                else "se" if kwargs.get("se_reduce_weight") is not None else "plain")
        return f"k{args[3].shape[-1]}-s{kwargs.get('stride', 1)}-{kind}-{tail}"
    return tail


def find(op: str, backend: str, family: str, cls: str) -> Optional[dict]:
    for r in load_table():
        if (r.get("op"), r.get("backend"), r.get("family"), r.get("shape_class")) == \
                (op, backend, family, cls):
            return r
    return None


def auto_reason(op: str, backend: str, args, kwargs) -> Optional[str]:
    """None when ``auto`` may pick ``backend``'s GPU kernel for this call, else why not."""
    x = next(a for a in args if isinstance(a, torch.Tensor))
    if not _on_gpu(x):
        return None  # the implementation's own can_run decides about other devices
    name, family = _device(x.device)
    cls = shape_class(op, args, kwargs)
    row = find(op, backend, family, cls)
    where = f"{name} ({family}) for {op} {cls}"
    if row is None:
        return f"not measured faster than the torch path on {where}: no committed measurement"
    if not row.get("speedup_min", 0.0) > MIN_SPEEDUP:
        return (f"not measured faster than the torch path on {where}: measured "
                f"{row.get('speedup_min')}x on {row.get('device')} ({row.get('date')})")
    return None
