"""The compiled code of the irmb_inference kernels as EMO-5M launches them (224 x 224, batch 256,
bf16), and of the backward GEMMs of its training step (expand_dwconv_act's ``_gemm_gx`` and
split-K ``_gemm_gw``), for sm_90 and sm_80, without a GPU.

Every distinct launch (kernel x constexprs x integer specialization x tiles / num_warps, the
first iRMB that makes it named) is recorded from the real launchers and specialized as a
launch is (compile_kernels.emo_launches / launch_spec), compiled with Triton's bundled ptxas and
read with its bundled ``nvdisasm -c`` and ``cuobjdump -res-usage`` (found and parsed as
bench/gpu_model.py does): registers, stack, local memory, spill instructions (LDL/STL), shared
memory (the size the launch requests), HGMMA / HMMA counts and the global memory instructions
(LDG / LDGSTS / STG by width). Run in a subprocess by tests/backends/test_triton_artifacts.py,
which asserts on the JSON. (Counted per kernel, not per source load: the SASS line table
attributes a load to the line of its first use as often as to its own.)

Usage: python tests/backends/kernel_artifacts.py [--archs 90,80] [--dtype bf16] [--json PATH] [-j N]
"""
import argparse
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import compile_kernels as ck  # (the script's folder is on sys.path; it drops TRITON_INTERPRET)
from bench.gpu_model import disassemble, parse_sass

_MEM = ("LDG", "LDGSTS", "STG")


def sass_facts(sass):
    """Spill (LDL/STL), HGMMA and HMMA instruction counts and the global memory opcodes with
    their counts, of one kernel's ``nvdisasm -c`` output."""
    out = dict(spills=0, hgmma=0, hmma=0, memory={})
    for _addr, op, _operands, _guarded in parse_sass(sass)[0]:
        base = op.split(".")[0]
        if base in ("LDL", "STL"):
            out["spills"] += 1
        elif base in ("HGMMA", "HMMA"):
            out[base.lower()] += 1
        elif base in _MEM:
            out["memory"][op] = out["memory"].get(op, 0) + 1
    return out


def artifacts(job):
    """Compile one launch for one arch and read its artifacts."""
    (block, *spec), arch = job
    name, sig, const, attrs, options = spec
    compiled = ck.compile_spec(spec, arch)
    sass, usage = disassemble(compiled.asm["cubin"])
    usage = {k.lower(): v for k, v in usage.items()}
    params = [(i, p.name, sig[p.name]) for i, p in enumerate(ck.kernel(name).params)
              if not p.is_constexpr]
    return dict(
        kernel=name, arch=arch, block=block, num_warps=options.get("num_warps", 4),
        num_stages=options.get("num_stages"),
        const={k: v for k, v in const.items() if isinstance(v, (bool, int))},
        ints={n: "=1" if ty == "constexpr" else "D" if (i,) in attrs else ""
              for i, n, ty in params if not ty.startswith("*")},
        aligned_ptrs=all((i,) in attrs for i, _, ty in params if ty.startswith("*")),
        regs=usage.get("reg"), stack=usage.get("stack", 0), local=usage.get("local", 0),
        static_shared=usage.get("shared", 0), shared=int(compiled.metadata.shared),
        **sass_facts(sass))


def summary(r):
    c = r["const"]
    shape = " ".join(f"{k}={c[k]}" for k in ("CIN", "CMID", "COUT", "C", "K", "STRIDE") if k in c)
    flags = " ".join(k for k in ("LN", "SKIP", "STORE_Z", "HAS_N2", "HAS_XSCALE") if c.get(k))
    return (f"sm_{r['arch']} block {r['block']:2d} {r['kernel']:19s} {shape} {flags} "
            f"BLOCKS {'/'.join(str(v) for k, v in c.items() if k.startswith('BLOCK_'))} "
            f"warps {r['num_warps']}: regs {r['regs']} stack {r['stack']} "
            f"spill-instr {r['spills']} shared {r['shared']} HGMMA {r['hgmma']} HMMA {r['hmma']} "
            f"{' '.join(f'{op} x{n}' for op, n in sorted(r['memory'].items()))}")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", default="90,80")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--json")
    ap.add_argument("-j", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args(argv)
    todo = [(spec, int(arch))
            for spec in ck.emo_launches(a.dtype) + ck.train_gemm_launches(a.dtype)
            for arch in a.archs.split(",")]
    with ProcessPoolExecutor(max_workers=a.j) as pool:
        results = list(pool.map(artifacts, todo))
    for r in results:
        print(summary(r))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    print(f"read {len(results)} compiled launches with triton {ck.triton.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
