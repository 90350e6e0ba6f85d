"""Whole-model throughput of EMO on the present device: fused=False vs fused=True (and, for
CPU inference, the frozen ``InferencePlan``; see README, "fused=True on CPU").

    python -m bench.throughput                        # EMO-5M, inference, batch 1 and 16
    python -m bench.throughput --models emo_1m emo_5m --batch 1 16 --train --compile

Variants are timed interleaved (round-robin, one timed call each per round) so that the
noise of a shared machine hits all of them alike; the table reports medians. On CUDA, times
come from CUDA events after a warm-up. Prints a markdown table; --json writes the rows.
"""
import argparse
import statistics

import torch

import emo
import emo_kernels
from bench import engines, env, results, timing
from bench.models import build_model, make_step


def build_variants(name, device, dtype, channels_last, train, compile_):
    layout = "nhwc" if channels_last else "nchw"
    base = build_model(name, device, dtype, layout, train)
    variants = {"eager fused=False": base}
    fused = build_model(name, device, dtype, layout, train, fused=True, like=base)
    variants[f"fused=True ({emo_kernels.get_backend()})"] = fused
    if not train and device.type == "cpu":  # the frozen plan: the fast CPU inference path
        variants["InferencePlan (frozen)"] = fused.prepare_inference()
    if compile_:
        variants["torch.compile fused=False"] = engines.torch_compile(base)
    return variants


def run(args):
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype)
    rows = []
    for name in args.models:
        for batch in args.batch:
            for train in ([False, True] if args.train else [False]):
                torch.manual_seed(0)
                x = torch.randn(batch, 3, args.size, args.size, device=device, dtype=dtype)
                if args.channels_last:
                    x = x.to(memory_format=torch.channels_last)
                variants = build_variants(name, device, dtype, args.channels_last, train,
                                          args.compile)
                steps = {k: make_step(m, x, train) for k, m in variants.items()}
                for fn in steps.values():  # warm-up (and compile)
                    for _ in range(args.warmup):
                        fn()
                times = timing.interleaved(steps, device, args.iters)
                base = statistics.median(times["eager fused=False"])
                for k, ts in times.items():
                    med = statistics.median(ts)
                    rows.append(dict(
                        model=name, mode="train" if train else "infer", variant=k, batch=batch,
                        size=args.size, dtype=args.dtype, channels_last=args.channels_last,
                        device=env.device_name(device), ms=med * 1e3, img_s=batch / med,
                        speedup_vs_eager=base / med, iters=args.iters, torch=torch.__version__))
    return rows


def table(rows):
    head = "| model | mode | batch | variant | ms (median) | img/s | vs eager |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['mode']} | {r['batch']} | {r['variant']} | "
                     f"{r['ms']:.1f} | {r['img_s']:.1f} | {r['speedup_vs_eager']:.2f}x |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["emo_5m"], choices=emo.list_models())
    p.add_argument("--batch", nargs="+", type=int, default=[1, 16])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--device", default=None)
    p.add_argument("--train", action="store_true", help="also time a training step")
    p.add_argument("--compile", action="store_true", help="also time torch.compile(fused=False)")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", default=None, help="write the rows to this file")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 on a shared, oversubscribed machine)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args)
    r0 = rows[0]
    print(f"device: {r0['device']}  dtype: {args.dtype}  size: {args.size}  torch "
          f"{torch.__version__}  backend: {emo_kernels.get_backend()}  iters: {args.iters}")
    print(table(rows))
    if args.json:
        results.write_json(args.json, rows)


if __name__ == "__main__":
    main()
