"""Build (JIT or in place) and load the CUDA extension for the GPU check, then say, per op,
which backends can run on this device (``emo_kernels.explain`` on small tensors).

    python -m bench.cuda_build            # on the GPU machine (bench/gpu_check.sh runs it)
    python -m bench.cuda_build --dry-run  # say what would be done; build nothing
    python -m bench.cuda_build --cpu      # build the CPU extension in place (nothing else)

Steps (on a GPU, with CUDA sources in csrc/):
1. ``python setup.py build_ext --inplace`` of the CUDA extension alone
   (EMO_KERNELS_SKIP_CPU_BUILD=1: the CPU extension is built afterwards, by ``--cpu``, so the
   GPU work starts sooner; offline: the installed torch's cpp_extension, ninja when present;
   MAX_JOBS=$(nproc); EMO_KERNELS_CUDA_ARCHS = this GPU's capability, e.g. 90), so that
   every later process imports ``emo_kernels._C`` directly;
2. then the loader ``emo_kernels`` exposes (``emo_kernels._ext.load_cuda``, which also JIT-builds
   with torch.utils.cpp_extension.load when _C is missing), or, in other layouts, the first of
   ``build``, ``jit_build``, ``build_jit``, ``jit_load``, ``load_jit``, ``ensure_built``,
   ``load_cuda``, ``load`` in ``emo_kernels._ext``;
3. in a fresh process, ``explain`` per op, dtype and backend on small CUDA tensors.
Without CUDA sources (the cuda backend not on this branch) it says so and exits 0.
Exit status: 0 loaded or nothing to build, 1 the build or load failed.
"""
import argparse
import glob
import importlib
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOADER_MODULES = ("emo_kernels._ext",)
LOADER_NAMES = ("build", "jit_build", "build_jit", "jit_load", "load_jit", "ensure_built", "load_cuda", "load")


def find_loaders():
    found = []
    for modname in LOADER_MODULES:
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            continue
        for fn in LOADER_NAMES:
            if callable(getattr(mod, fn, None)):
                found.append((f"{modname}.{fn}", getattr(mod, fn)))
                break
    return found


def cuda_sources():
    return sorted(glob.glob(os.path.join(ROOT, "csrc", "*.cu"))
                  + glob.glob(os.path.join(ROOT, "csrc", "**", "*.cu"), recursive=True))


def try_loaders(loaders):
    for name, fn in loaders:
        t0 = time.perf_counter()
        try:
            mod = fn()
            print(f"cuda_build: {name}() loaded {getattr(mod, '__file__', mod)} "
                  f"in {time.perf_counter() - t0:.1f} s")
            return True
        except Exception as e:  # noqa: BLE001
            print(f"cuda_build: {name}() failed after {time.perf_counter() - t0:.1f} s: "
                  f"{type(e).__name__}: {e}")
    return False


def build_in_place(cpu=False):
    """``setup.py build_ext --inplace`` of the CUDA extension alone, or (``cpu``) of the CPU
    extension alone."""
    import torch
    env = dict(os.environ)
    env["EMO_KERNELS_SKIP_CUDA_BUILD" if cpu else "EMO_KERNELS_SKIP_CPU_BUILD"] = "1"
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    if cpu:  # only the ISA variant this machine runs (all three take ~3x as long)
        from emo_kernels._build import best_isa
        env.setdefault("EMO_KERNELS_CPU_ISA",
                       best_isa(torch.backends.cpu.get_cpu_capability()).lower())
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        env.setdefault("EMO_KERNELS_CUDA_ARCHS", f"{major}{minor}")
    if os.path.isdir("/usr/local/cuda"):
        env.setdefault("CUDA_HOME", "/usr/local/cuda")
    cmd = [sys.executable, "setup.py", "build_ext", "--inplace"]
    print(f"cuda_build: running {' '.join(cmd)} (MAX_JOBS={env['MAX_JOBS']}, "
          f"EMO_KERNELS_CUDA_ARCHS={env.get('EMO_KERNELS_CUDA_ARCHS', 'setup.py default')})",
          flush=True)
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, cwd=ROOT, env=env)
    print(f"cuda_build: setup.py build_ext exited {rc} after {time.perf_counter() - t0:.1f} s",
          flush=True)
    return rc == 0


def explain_table(device):
    """Print, per dtype, op and backend, whether ``explain`` lets it run on small tensors."""
    import torch
    device = torch.device(device)

    import emo_kernels
    from bench.config import SHORT_DTYPE
    from bench.shapes import OPS, AttnSpec, DwSpec
    dw = DwSpec(cin=8, cmid=16, k=3, stride=1, act="silu", skip=True, identity=False, H=9, W=9)
    at = AttnSpec(C=32, head_dim=16, H=9, W=9, window_size=7)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for op, spec in (("expand_dwconv_act", dw), ("window_attention", at)):
            args, kw, _ = OPS[op]["inputs"](spec, 1, device, dtype)
            for b, r in emo_kernels.explain(op, *args, **kw).items():
                print(f"explain {device} {SHORT_DTYPE[dtype]} {op} {b}: "
                      f"{'can run' if r is None else r}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--cpu", action="store_true", help="build the CPU extension in place, only")
    args = p.parse_args(argv)
    import torch
    if args.cpu:
        return 0 if build_in_place(cpu=True) else 1
    srcs = cuda_sources()
    loaders = find_loaders()
    print(f"cuda_build: torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"GPU: {torch.cuda.is_available()}; {len(srcs)} CUDA sources in csrc/; loaders: "
          f"{[n for n, _ in loaders] or 'none'}")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    ok = True
    if args.dry_run:
        print("cuda_build: --dry-run: nothing built; on a GPU: `setup.py build_ext --inplace`, "
              "then the loader above (JIT fallback)")
    elif not torch.cuda.is_available():
        print("cuda_build: no GPU here: nothing built (the CPU build and its checks are "
              "tests/backends/test_cuda_build.py's job)")
    elif not srcs:
        print("cuda_build: no CUDA sources in csrc/: the cuda backend is not on this branch "
              "yet; skipped")
    else:
        if not build_in_place():
            print("cuda_build: the in-place build failed; trying the loader (JIT) instead")
        ok = try_loaders(find_loaders())
    # in a fresh process: backends register themselves when emo_kernels is imported
    subprocess.call([sys.executable, "-c", f"from bench.cuda_build import explain_table; "
                     f"explain_table({str(device)!r})"], cwd=ROOT)
    print(f"cuda_build: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
