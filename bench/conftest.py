"""pytest setup for the benchmark suites ``bench/bench_*.py`` (not part of the default test run:
pyproject's testpaths is tests/). Run them as, e.g.::

    python -m pytest bench/ --benchmark-json=out.json      # settings: EMO_BENCH_* (bench/config.py)

Collects ``bench_*.py`` files, and adds the device, versions, suite settings and (CUDA) the
measured device-to-device copy bandwidth to the JSON's machine_info.
"""
import pytest

from bench import config as bench_config
from bench import env, memory


def pytest_collect_file(file_path, parent):
    # bench_*.py are not matched by pytest's default python_files; explicit paths already are
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(scope="session")
def cfg():
    return bench_config.config()


def pytest_benchmark_update_machine_info(config, machine_info):
    """The machine, as ``bench.report`` names its files (``bench.results``) and heads its report."""
    cfg = bench_config.config()
    machine_info["emo_bench"] = dict(
        device=str(cfg.device), device_name=env.device_name(cfg.device),
        device_kind=env.device_kind(cfg.device), device_model=env.device_model(cfg.device),
        threads=env.threads(), copy_gbps=memory.copy_bandwidth_cached(cfg.device),
        tiny=cfg.tiny, size=cfg.size, rounds=cfg.rounds, warmup=cfg.warmup,
        compile=cfg.compile, **env.versions())
