"""The JIT build of the CPU extension (emo_kernels/_ext.py): one build folder per torch version,
ISA and Python; a build lock that never makes a process wait forever (its owner's death drops
it, a live owner is waited for a bounded time), and recovery from a build killed midway."""
import fcntl
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from emo_kernels import _ext as _cpu

_LOAD = "import emo_kernels._ext as e; print('ISA', e.cpu_ops().isa())"


def _env(build_root, **extra):
    env = dict(os.environ, EMO_KERNELS_BUILD_DIR=str(build_root), PYTHONPATH=_cpu._ROOT,
               EMO_KERNELS_CPU_JIT="1", EMO_KERNELS_CPU_PREBUILT="0", **extra)  # JIT even
    # where setup.py built the extension in place
    return env


def test_build_dir_is_keyed_by_torch_isa_and_python(tmp_path, monkeypatch):
    monkeypatch.setenv(_cpu.BUILD_DIR_ENV, str(tmp_path))
    d = _cpu.build_dir(_cpu.cpu_extension(_cpu.cpu_isa()))
    assert os.path.dirname(d) == os.path.join(str(tmp_path), "jit_cpu")
    name = os.path.basename(d)
    assert torch.__version__ in name and _cpu.cpu_isa().lower() in name
    assert sys.implementation.cache_tag in name


def test_live_lock_owner_is_waited_for_a_bounded_time(tmp_path):
    """Another (live) process holding the build lock: the wait ends with an error naming the
    lock file and its owner."""
    path = os.path.join(str(tmp_path), _cpu.LOCK_NAME)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write("pid 4242 on elsewhere")
        f.flush()
        t0 = time.monotonic()
        with pytest.raises(ImportError, match="pid 4242 on elsewhere.*" + _cpu.LOCK_NAME):
            with pytest.warns(UserWarning, match="waiting"):
                with _cpu.build_lock(str(tmp_path), wait=0.5):
                    pass
        assert time.monotonic() - t0 < 10
    with _cpu.build_lock(str(tmp_path), wait=0.5):  # released: taken at once
        assert "pid %d" % os.getpid() in open(path).read()


@pytest.mark.slow
def test_build_killed_midway_then_next_process_recovers(tmp_path):
    """SIGKILL a process (and its compiler) in the middle of the JIT build; a stale torch
    ``lock`` file is left as well (older torch leaves one and waits on it forever). The next
    process says the build was interrupted, rebuilds and loads, in bounded time."""
    build = subprocess.Popen([sys.executable, "-c", _LOAD], env=_env(tmp_path), cwd=_cpu._ROOT,
                             start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    jit = os.path.join(str(tmp_path), "jit_cpu")
    deadline = time.monotonic() + 300
    try:
        while not any(os.path.exists(os.path.join(jit, d, "build.ninja"))
                      for d in (os.listdir(jit) if os.path.isdir(jit) else [])):
            assert build.poll() is None and time.monotonic() < deadline, "the build never began"
            time.sleep(0.2)
        time.sleep(2)  # the compiler is running
        assert build.poll() is None, "the build ended before it could be killed"
    finally:
        os.killpg(build.pid, signal.SIGKILL)
        build.wait()
    (folder,) = os.listdir(jit)
    assert os.path.exists(os.path.join(jit, folder, _cpu.INCOMPLETE))
    open(os.path.join(jit, folder, "lock"), "a").close()
    r = subprocess.run([sys.executable, "-c", _LOAD], env=_env(tmp_path), cwd=_cpu._ROOT,
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ISA" in r.stdout
    assert "was interrupted" in r.stderr and os.path.join(jit, folder) in r.stderr
    assert not os.path.exists(os.path.join(jit, folder, _cpu.INCOMPLETE))


def test_variant_choice(monkeypatch):
    """The best variant the CPU supports, unless $EMO_KERNELS_CPU_ISA forces one; forcing one
    the CPU lacks, or naming none, is refused with a clear error."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.delenv("EMO_KERNELS_CPU_ISA", raising=False)
    assert _cpu.cpu_isa() == "AVX2"
    monkeypatch.setenv("EMO_KERNELS_CPU_ISA", "default")
    assert _cpu.cpu_isa() == "DEFAULT"
    monkeypatch.setenv("EMO_KERNELS_CPU_ISA", "avx512")
    with pytest.raises(ImportError, match="EMO_KERNELS_CPU_ISA=avx512 but this CPU supports AVX2"):
        _cpu.cpu_isa()
    monkeypatch.setenv("EMO_KERNELS_CPU_ISA", "sse9")
    with pytest.raises(ImportError, match="names no variant"):
        _cpu.cpu_isa()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "SVE256")
    monkeypatch.delenv("EMO_KERNELS_CPU_ISA")
    assert _cpu.cpu_isa() == "DEFAULT"


def test_cuda_arch_flags():
    """TORCH_CUDA_ARCH_LIST's syntax (and the old EMO_KERNELS_CUDA_ARCHS one) to nvcc flags."""
    from emo_kernels import _build
    assert _build.cuda_arch_flags("8.0;9.0+PTX") == [
        "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
        "-gencode=arch=compute_90,code=compute_90"]
    assert _build.cuda_arch_flags("80, 90") == _build.cuda_arch_flags("8.0 9.0")
    with pytest.raises(ValueError, match="compute capability"):
        _build.cuda_arch_flags("Hopper")
