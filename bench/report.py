"""Turn pytest-benchmark JSON from the bench/ suites into a markdown report and a PNG plot.

    python -m bench.report model.json ops.json --out-dir bench/results [--stem NAME | --tag TAG]
        [--note TEXT]

Writes ``<stem>.md`` (tables: time, img/s, peak memory, speedup vs eager and vs torch.compile
where those rows exist; on CUDA rows also bytes moved per op, achieved GB/s and its share of
the device-to-device copy bandwidth measured in the same run), ``<stem>.json`` (the inputs'
rows merged) and ``<stem>.png`` (skipped, with a message, when matplotlib is missing).
The default stem follows the one naming scheme of result files (``bench/results.py``):
``<kind>_<device>_<YYYYMMDD>_t<threads>_<tag>``, tag ``suites`` unless --tag says otherwise,
e.g. ``cpu_Intel_Xeon_Processor_20261128_t1_suites``.
Times are CUDA-event medians where the row has them (CUDA), else pytest-benchmark medians.
"""
import argparse
import datetime
import json
import os
import re
import sys
from collections import OrderedDict

from bench import results

EAGER = {"model": "eager", "op": "torch"}
COMPILE = {"model": "compile", "op": "torch.compile"}


def load(paths):
    """(machine_info of the first file, [rows]) with one flat dict per benchmark."""
    machine, rows, dates, compiles = {}, [], [], []
    for p in paths:
        with open(p) as f:
            data = json.load(f)
        machine = machine or json.loads(json.dumps(data.get("machine_info", {})))
        c = data.get("machine_info", {}).get("emo_bench", {}).get("compile")
        if c is not None and c not in compiles:
            compiles.append(c)
        dates.append(data.get("datetime") or "")
        if "rows" in data:  # a merged JSON this script wrote: regenerate from it
            rows += data["rows"]
            continue
        for b in data.get("benchmarks", []):
            info = dict(b.get("extra_info", {}))
            if "suite" not in info:
                continue
            st = b.get("stats", {})
            info["name"] = b.get("name")
            info["ms"] = info.get("cuda_event_median_ms") or st.get("median", float("nan")) * 1e3
            info["timer"] = "cuda events" if info.get("cuda_event_median_ms") else "host"
            info["rounds"] = st.get("rounds")
            info["iqr_ms"] = st.get("iqr", 0.0) * 1e3
            if "[best]" in info["provider"] and info.get("backend"):
                info["provider"] = info["provider"].replace("best", info["backend"])
            rows.append(info)
    if compiles and "emo_bench" in machine:
        machine["emo_bench"]["compile"] = "+".join(compiles)
    # rows of one group together (a compile run's rows next to the eager rows they compare to)
    first = {}
    for r in rows:
        first.setdefault(_key(r), len(first))
    rows.sort(key=lambda r: first[_key(r)])
    return machine, rows, [d for d in dates if d]


def _key(r):
    return (r["suite"], r.get("op", r.get("model")), r["case"], r["mode"], r["dtype"],
            r["layout"], r["batch"], r.get("device_name"))


def add_derived(rows):
    """Speedups vs eager/compile within each group; img/s; GB/s and % of copy bandwidth."""
    groups = OrderedDict()
    for r in rows:
        groups.setdefault(_key(r), {})[r["provider"]] = r
    for g in groups.values():
        for r in g.values():
            for base_name, col in ((EAGER, "vs_eager"), (COMPILE, "vs_compile")):
                base = g.get(base_name[r["suite"]])
                r[col] = base["ms"] / r["ms"] if base and r["ms"] else None
            if r["suite"] == "model":
                r["img_s"] = r["batch"] / (r["ms"] / 1e3)
            if r.get("bytes") and r.get("device") == "cuda":
                r["gbps"] = r["bytes"] / (r["ms"] / 1e3) / 1e9
                r["pct_copy"] = 100 * r["gbps"] / r["copy_gbps"] if r.get("copy_gbps") else None
    return rows


def _f(v, fmt, none="–"):
    return none if v is None else format(v, fmt)


def _x(v):
    return "–" if v is None else f"{v:.2f}x"


def markdown(machine, rows, dates, note=None):
    eb = machine.get("emo_bench", {})
    r0 = rows[0] if rows else {}
    out = [f"# EMO benchmarks: {eb.get('device_name') or r0.get('device_name', '?')}", ""]
    date = (dates[0] if dates else datetime.datetime.utcnow().isoformat())[:19]
    out.append(f"- date (UTC): {date}")
    out.append(f"- versions: torch {eb.get('torch', r0.get('torch'))}, triton "
               f"{eb.get('triton', r0.get('triton'))}, CUDA {eb.get('cuda', r0.get('cuda'))}, "
               f"python {eb.get('python', '?')}")
    if eb.get("copy_gbps"):
        out.append(f"- device-to-device copy bandwidth, measured in this run: "
                   f"{eb['copy_gbps']:.0f} GB/s (bytes read + written)")
    out.append(f"- settings: image {eb.get('size', r0.get('size'))}x"
               f"{eb.get('size', r0.get('size'))}, {eb.get('rounds', '?')} timed rounds after "
               f"{eb.get('warmup', '?')} warm-up calls per row, compile={eb.get('compile', '0')}"
               + (" (TINY smoke settings: not a measurement)" if eb.get("tiny") else ""))
    out.append("- time: median per call; CUDA rows: CUDA-event median (pytest-benchmark's "
               "own, synchronized host timer is in the JSON); CPU rows: pytest-benchmark median;"
               " IQR: pytest-benchmark's interquartile range (host timer)")
    out.append("- speedups: vs `eager` (models: fused=False; ops: the torch reference) and vs "
               "`torch.compile` of the same, within one group (same shape, mode, dtype, "
               "layout, batch); – where that row was not run")
    if note:
        out.append(f"- note: {note}")
    models = [r for r in rows if r["suite"] == "model"]
    if models:
        mem = sorted({r.get("mem_metric", "") for r in models})
        out += ["", "## Whole model", "", f"peak memory: {'; '.join(mem)}", "",
                "| model | mode | dtype | layout | batch | variant | ms | IQR ms | img/s | "
                "peak MiB | vs eager | vs compile | compile s |",
                "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in models:
            out.append(f"| {r['model']} | {r['mode']} | {r['dtype']} | {r['layout']} | "
                       f"{r['batch']} | {r['provider']} | {r['ms']:.2f} | {r['iqr_ms']:.2f} | "
                       f"{r['img_s']:.1f} | "
                       f"{_f(r.get('peak_mem_mb'), '.0f', 'n/a')} | {_x(r['vs_eager'])} | "
                       f"{_x(r['vs_compile'])} | {_f(r.get('compile_s'), '.0f')} |")
    for op in sorted({r["op"] for r in rows if r["suite"] == "op"}):
        ops = [r for r in rows if r.get("op") == op]
        cuda = any(r.get("device") == "cuda" for r in ops)
        out += ["", f"## `{op}`", ""]
        if cuda:
            out += ["bytes: compulsory traffic (formula in bench/shapes.py, "
                    f"`bytes_{op}`); GB/s = bytes / time; % of the measured copy bandwidth", ""]
        head = ("| shape | mode | dtype | layout | batch | provider | ms | IQR ms | vs eager "
                "| vs compile |")
        sep = "|---|---|---|---|---|---|---:|---:|---:|---:|"
        if cuda:
            head += " MB moved | GB/s | % copy BW |"
            sep += "---:|---:|---:|"
        out += [head, sep]
        for r in ops:
            line = (f"| {r['case']} | {r['mode']} | {r['dtype']} | {r['layout']} | {r['batch']} | "
                    f"{r['provider']} | {r['ms']:.3f} | {r['iqr_ms']:.3f} | {_x(r['vs_eager'])} | "
                    f"{_x(r['vs_compile'])} |")
            if cuda:
                line += (f" {r['bytes'] / 1e6:.1f} | {_f(r.get('gbps'), '.0f')} | "
                         f"{_f(r.get('pct_copy'), '.0f')} |")
            out.append(line)
    if not rows:
        out += ["", "(no benchmark rows)"]
    return "\n".join(out) + "\n"


def plot(rows, path, title):
    """One panel per suite: horizontal bars per group, one bar per provider (models: img/s;
    ops: ms, log scale). Returns None, or why the plot was skipped."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return f"matplotlib is not importable ({e})"
    panels = [("model", "img/s (higher is better)", "img_s")] + [
        (op, "ms per call (lower is better, log)", "ms")
        for op in sorted({r["op"] for r in rows if r["suite"] == "op"})]
    panels = [p for p in panels if any((r.get("op") or r["suite"]) == p[0] for r in rows)]
    if not panels:
        return "no rows to plot"
    sizes = []
    for name, _, _ in panels:
        sel = [r for r in rows if (r.get("op") or r["suite"]) == name]
        sizes.append(len({_key(r) for r in sel}))
    fig, axes = plt.subplots(len(panels), 1, squeeze=False,
                             figsize=(11, sum(2 + 0.28 * n * 1.0 for n in sizes)),
                             gridspec_kw=dict(height_ratios=[2 + 0.28 * n for n in sizes]))
    for ax, (name, xlabel, val) in zip(axes[:, 0], panels):
        sel = [r for r in rows if (r.get("op") or r["suite"]) == name]
        groups = list(OrderedDict.fromkeys(_key(r) for r in sel))
        provs = list(OrderedDict.fromkeys(r["provider"] for r in sel))
        h = 0.8 / len(provs)
        for i, p in enumerate(provs):
            ys, xs = [], []
            for gi, g in enumerate(groups):
                r = next((r for r in sel if _key(r) == g and r["provider"] == p), None)
                if r is not None:
                    ys.append(gi + i * h)
                    xs.append(r[val])
            ax.barh(ys, xs, height=h, label=p)
        ax.set_yticks([gi + 0.4 - h / 2 for gi in range(len(groups))])
        ax.set_yticklabels([f"{g[2]} {g[3]} {g[4]} {g[5]} B{g[6]}" for g in groups], fontsize=7)
        ax.invert_yaxis()
        if val == "ms":
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_title(name if name != "model" else "whole model", fontsize=10)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def default_stem(machine, rows, dates, tag="suites"):
    """The result files' name (``bench.results.stem``) from the run's machine_info (written by
    bench/conftest.py), falling back to the rows' device and device_name ("<model> (N threads)"
    on CPU) for JSON written before machine_info had the kind, model and threads."""
    eb = machine.get("emo_bench", {})
    r0 = rows[0] if rows else {}
    kind = eb.get("device_kind") or (
        "gpu" if any(r.get("device") == "cuda" for r in rows) else "cpu")
    name = eb.get("device_name") or r0.get("device_name") or "unknown"
    m = re.match(r"^(.*) \((\d+) threads\)$", name)
    model = eb.get("device_model") or (m.group(1) if m else name)
    threads = eb.get("threads") or (int(m.group(2)) if m else 0)
    date = (dates[0] if dates else datetime.datetime.utcnow().isoformat())[:10]
    return results.stem(kind, model, threads, date, tag)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", nargs="+", help="pytest-benchmark JSON files (--benchmark-json)")
    p.add_argument("--out-dir", default=os.path.join("bench", "results"))
    p.add_argument("--stem", default=None, help="file name stem (default: bench/results.py's "
                   "<kind>_<device>_<YYYYMMDD>_t<threads>_<tag>)")
    p.add_argument("--tag", default="suites", help="tag of the default stem (default: suites)")
    p.add_argument("--note", default=None, help="a line for the report's header")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    paths = [j for j in args.json if os.path.exists(j)]
    for j in args.json:
        if j not in paths:
            print(f"report: {j} does not exist (that part did not finish?); skipped",
                  file=sys.stderr)
    if not paths:
        print("report: no JSON input", file=sys.stderr)
        return 1
    machine, rows, dates = load(paths)
    add_derived(rows)
    stem = args.stem or default_stem(machine, rows, dates, args.tag)
    os.makedirs(args.out_dir, exist_ok=True)
    base = os.path.join(args.out_dir, stem)
    md = markdown(machine, rows, dates, args.note)
    why = "--no-plot" if args.no_plot else plot(rows, base + ".png", f"{stem}: "
                                                  f"{machine.get('emo_bench', {}).get('device_name', '')}")
    if why:
        md += f"\n(plot skipped: {why})\n"
        print(f"report: plot skipped: {why}")
    results.write(base, md, dict(machine_info=machine, datetime=dates[0] if dates else None,
                                 sources=[os.path.basename(p) for p in paths], rows=rows))
    print(f"report: wrote {base}.md, {base}.json" + ("" if why else f", {base}.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
