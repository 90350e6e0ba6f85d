"""Result files: their one naming scheme, and writing them.

Every result file (and the folder of a ``bench/gpu_check.sh`` run) is named

    <kind>_<device>_<YYYYMMDD>_t<threads>[_<tag>].<ext>

``kind`` is ``cpu`` or ``gpu``; ``device`` the CPU model or GPU name with vendor marks and
clock dropped and every other run of non-alphanumerics made one ``_`` (``Intel_Xeon_Processor``,
``AMD_EPYC``, ``NVIDIA_H200``); the date is the UTC date of the run; ``threads`` torch's CPU
threads; ``tag`` (lower case, ``[a-z0-9_]``) says what was run when a plain name would not
(``plan``, ``emo_1m``, ``suites``, ``gpucheck``, ``dryrun``). E.g.
``cpu_Intel_Xeon_Processor_20261128_t2_emo_1m.md``. :func:`stem` builds a name, :data:`STEM_RE`
/ :func:`parse_stem` read one back; :func:`write` writes the ``.md`` and ``.json`` of a stem.
Written by ``bench.bench_cpu`` (the tables), ``bench.report`` (the pytest-benchmark suites'
report) and ``bench/gpu_check.sh`` (its output folder and report).
"""
import datetime
import json
import os
import re
from typing import List, Optional

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
STEM_RE = re.compile(r"^(?P<kind>cpu|gpu)_(?P<device>[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*?)_"
                     r"(?P<date>\d{8})_t(?P<threads>\d+)(?:_(?P<tag>[a-z0-9]+(?:_[a-z0-9]+)*))?$")


def device_slug(model: str) -> str:
    """``Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz`` -> ``Intel_Xeon_Platinum_8375C``."""
    s = re.sub(r"\((R|TM|r|tm)\)", "", model)
    s = re.sub(r"@.*$", "", s)
    s = re.sub(r"\bCPU\b", "", s)
    return re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_") or "unknown"


def tag_slug(tag: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", tag.lower()).strip("_")


def stem(kind: str, model: str, threads: int, date=None, tag: Optional[str] = None) -> str:
    """A result file's name without extension (see the module docstring). ``kind``: ``cpu``
    or ``gpu`` (``cuda`` is taken for ``gpu``); ``date``: a date, datetime or ISO string
    (default: today, UTC)."""
    kind = {"cuda": "gpu"}.get(kind, kind)
    if kind not in ("cpu", "gpu"):
        raise ValueError(f"kind must be cpu or gpu, not {kind!r}")
    if date is None:
        date = datetime.datetime.now(datetime.timezone.utc).date()
    if isinstance(date, str):
        date = datetime.date.fromisoformat(date[:10])
    out = f"{kind}_{device_slug(model)}_{date:%Y%m%d}_t{int(threads)}"
    if tag and tag_slug(tag):
        out += f"_{tag_slug(tag)}"
    assert STEM_RE.match(out), out
    return out


def stem_for(device, tag: Optional[str] = None, date=None) -> str:
    """:func:`stem` for this machine: ``device``'s kind and model, torch's threads now."""
    from bench import env
    return stem(env.device_kind(device), env.device_model(device), env.threads(), date, tag)


def parse_stem(name: str) -> Optional[dict]:
    """{kind, device, date, threads, tag} of a result file's name (extensions dropped), or None
    when it does not follow the scheme."""
    m = STEM_RE.match(name.split(".", 1)[0])
    return m.groupdict() if m else None


def write_markdown(path, text: str):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")


def write_json(path, data):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


def write(base, markdown: Optional[str] = None, data=None) -> List[str]:
    """Write ``<base>.md`` and/or ``<base>.json`` (``base``: a path without extension, e.g.
    ``os.path.join(RESULTS_DIR, stem_for("cpu"))``); returns the paths written."""
    paths = []
    if markdown is not None:
        write_markdown(base + ".md", markdown)
        paths.append(base + ".md")
    if data is not None:
        write_json(base + ".json", data)
        paths.append(base + ".json")
    return paths
