"""Write the GPU measurement table (``emo_kernels/gpu_measured.json``) from a GPU run.

    python -m bench.measured OPS_JSON [OPS_JSON ...] --junit GPU_TESTS.xml --out gpu_measured.json

Reads the op benchmarks (pytest-benchmark JSON of the op suites bench/bench_<op>.py:
expand_dwconv_act, window_attention, irmb_inference (forward rows only); rows carry
``shape_class`` and the GPU ``family``) and the junit XML of the GPU test run. For each (op,
GPU kernel backend, family, shape class) it records every measured case's speedup over the
torch path (same case, mode, dtype, layout and batch; CUDA-event medians) and ``speedup_min``,
the smallest: ``auto`` picks the kernel for that class only when ``speedup_min`` exceeds
``emo_kernels.measured.MIN_SPEEDUP``. A backend with a failed or erroring GPU test gets no rows
at all, and an (op, backend) gets rows only when at least one GPU test of that op on that
backend passed (its test file ``test_<op>...`` and the backend in the test's id): a kernel not
shown correct on this GPU -- its tests failed, or never ran because the test part was cut
short -- is never picked, however fast.
bench/gpu_check.sh runs this at its end; a session commits the file into emo_kernels/ with the
run's results.
"""
import argparse
import json
import re
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict

from emo_kernels.measured import MIN_SPEEDUP

GPU_KERNEL_BACKENDS = ("triton", "cuda")


def failed_backends(junit_path):
    """Backends named in the id (class name or name) of a failed or erroring test of the junit
    XML; with no file (the tests did not run) every GPU kernel backend counts as failed."""
    if not junit_path:
        return set(GPU_KERNEL_BACKENDS)
    try:
        root = ET.parse(junit_path).getroot()
    except (OSError, ET.ParseError):
        return set(GPU_KERNEL_BACKENDS)
    bad = set()
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            where = f'{case.get("classname", "")} {case.get("name", "")}'
            bad |= {b for b in GPU_KERNEL_BACKENDS if _named(b, where)}
    return bad


def _named(backend, text):
    """The backend as a word of a test id (underscores separate: test_irmb_inference_triton)."""
    return re.search(rf"(?<![A-Za-z0-9]){backend}(?![A-Za-z0-9])", text) is not None


def verified(junit_path):
    """(op, backend) pairs with at least one passed GPU test in the junit XML: a test of the
    op's file (``test_<op>`` in its class name) whose id names the backend."""
    try:
        root = ET.parse(junit_path).getroot() if junit_path else None
    except (OSError, ET.ParseError):
        root = None
    ok = set()
    for case in (root.iter("testcase") if root is not None else ()):
        if any(case.find(t) is not None for t in ("failure", "error", "skipped")):
            continue
        where = f'{case.get("classname", "")} {case.get("name", "")}'
        for op in re.findall(r"test_([a-z]+(?:_[a-z]+)*?)(?:_triton|_cuda)?(?:\.py)?(?=[\s.]|$)",
                             case.get("classname", "").replace(".", " ")):
            ok |= {(op, b) for b in GPU_KERNEL_BACKENDS if _named(b, where)}
    return ok


def _median_ms(b):
    info = b.get("extra_info", {})
    ms = info.get("cuda_event_median_ms")
    return ms if ms is not None else b["stats"]["median"] * 1e3


def table(bench_rows, failed, commit="", verified_pairs=None):
    """The table's rows from pytest-benchmark rows (see the module docstring);
    ``verified_pairs``: the (op, backend) pairs shown correct (:func:`verified`), None: not
    checked."""
    torch_ms, kernel = {}, defaultdict(list)
    meta = {}
    for b in bench_rows:
        info = b.get("extra_info", {})
        if info.get("suite") != "op" or info.get("device") != "cuda" or info.get("compiled"):
            continue
        key = (info["op"], info["case"], info["mode"], info["dtype"], info["layout"],
               info["batch"], info.get("family"), info.get("shape_class"))
        if info["provider"] == "torch":
            torch_ms[key] = _median_ms(b)
        elif info["provider"] in GPU_KERNEL_BACKENDS and info["provider"] not in failed and (
                verified_pairs is None or (info["op"], info["provider"]) in verified_pairs):
            kernel[key].append((info["provider"], _median_ms(b)))
        meta = {k: info.get(k) for k in ("device_name", "torch", "triton", "cuda")}
    groups = defaultdict(list)
    for key, rows in kernel.items():
        if key not in torch_ms:
            continue
        op, case, mode, dtype, layout, batch, family, cls = key
        for backend, ms in rows:
            groups[(op, backend, family, cls)].append(dict(
                case=case, mode=mode, layout=layout, batch=batch, ms=ms,
                torch_ms=torch_ms[key], speedup=torch_ms[key] / ms))
    out = []
    for (op, backend, family, cls), cases in sorted(groups.items()):
        out.append(dict(op=op, backend=backend, family=family, shape_class=cls,
                        speedup_min=round(min(c["speedup"] for c in cases), 4),
                        device=meta.get("device_name"), torch=meta.get("torch"),
                        triton=meta.get("triton"), cuda=meta.get("cuda"), commit=commit,
                        cases=cases))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ops_json", nargs="*")
    ap.add_argument("--junit", help="junit XML of the GPU tests")
    ap.add_argument("--out", required=True)
    ap.add_argument("--commit", default="")
    ap.add_argument("--date", default="")
    a = ap.parse_args(argv)
    rows = []
    for path in a.ops_json:
        try:
            with open(path) as f:
                rows += json.load(f).get("benchmarks", [])
        except (OSError, ValueError) as e:
            print(f"measured: skipping {path}: {e}", file=sys.stderr)
    failed = failed_backends(a.junit)
    out = table(rows, failed, a.commit, verified(a.junit))
    for r in out:
        r["date"] = a.date
    doc = dict(about="GPU measurements that let auto pick a GPU kernel "
                     "(emo_kernels/measured.py); written by python -m bench.measured",
               runs=[dict(date=a.date, commit=a.commit, failed_backends=sorted(failed))],
               rows=out)
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)
    faster = [r for r in out if r["speedup_min"] > MIN_SPEEDUP]
    print(f"measured: {len(out)} rows ({len(faster)} faster than the torch path); backends "
          f"with failed GPU tests: {sorted(failed) or 'none'} -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
