"""pytest setup for the benchmark suites ``bench/bench_*.py`` (not part of the default test run:
pyproject's testpaths is tests/). Run them as, e.g.::

    python -m pytest bench/ --benchmark-json=out.json      # settings: EMO_BENCH_* (common.config)

Collects ``bench_*.py`` files, and adds the device, versions, suite settings and (CUDA) the
measured device-to-device copy bandwidth to the JSON's machine_info.
"""
import pytest

from bench import common


def pytest_collect_file(file_path, parent):
    # bench_*.py are not matched by pytest's default python_files; explicit paths already are
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(scope="session")
def cfg():
    return common.config()


def pytest_benchmark_update_machine_info(config, machine_info):
    cfg = common.config()
    machine_info["emo_bench"] = dict(
        device=str(cfg.device), device_name=common.device_name(cfg.device),
        device_slug=common.device_slug(cfg.device), copy_gbps=(
            common.copy_bandwidth_cached(cfg.device) if cfg.device.type == "cuda" else None),
        tiny=cfg.tiny, size=cfg.size, rounds=cfg.rounds, warmup=cfg.warmup,
        compile=cfg.compile, **common.versions())
