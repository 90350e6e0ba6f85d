"""The pytest-benchmark suites' settings, from ``EMO_BENCH_*`` environment variables (so that
``bench/gpu_check.sh`` and CI can size them without pytest options): :func:`config`.
"""
import os
import re
from dataclasses import dataclass, field
from typing import List

import torch

from bench import env
from emo_kernels import measured

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
SHORT_DTYPE = measured.SHORT_DTYPE  # one table: measured.py keys its shape classes by it


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
    env.set_threads()
    device = env.default_device()
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
