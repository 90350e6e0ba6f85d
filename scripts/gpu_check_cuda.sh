#!/usr/bin/env bash
# One-shot check of the cuda backend on a GPU machine (the lent H200: torch 2.11, nvcc 13.0,
# 16 cores, no network). Builds emo_kernels._C in place for the local GPU, runs every cuda test
# (the real kernels against the float64 reference, gradcheck, and the shared op tests' cuda
# cases), then a short fwd+bwd timing against the torch reference. Meant to fit in ~8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
ARCH=$($PY -c "import torch; M, m = torch.cuda.get_device_capability(); print(f'{M}{m}')")
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
echo "== build for sm_$ARCH"
time EMO_KERNELS_CUDA_ARCHS=$ARCH MAX_JOBS=${MAX_JOBS:-16} $PY setup.py build_ext --inplace -q
echo "== tests"
$PY -m pytest -q -p no:cacheprovider tests -k "cuda" ${PYTEST_ARGS:-} || status=$?
echo "== timing (ms per fwd+bwd, median of 20)"
$PY - <<'PYEOF'
import torch, emo_kernels
from emo_kernels.cuda import expand_dwconv_act_cuda, window_attention_cuda
from emo_kernels.reference import expand_dwconv_act_ref, window_attention_ref

def t(fn, *args, **kw):
    args = [a.detach().requires_grad_() if torch.is_tensor(a) and a.is_floating_point() else a
            for a in args]
    def step():
        out = fn(*args, **kw)
        out.backward(torch.ones_like(out))
    for _ in range(3):
        step()
    ts = []
    for _ in range(20):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); step(); e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e))
    return sorted(ts)[len(ts) // 2]

dev = torch.device("cuda")
print(torch.cuda.get_device_name(), "torch", torch.__version__)
for dt in (torch.float32, torch.bfloat16):
    # EMO-5M stage-2 block at 224: B=64, 72 -> 216 channels, 28x28, k3, skip
    x = torch.randn(64, 72, 28, 28, device=dev, dtype=dt)
    w, b = torch.randn(216, 72, 1, 1, device=dev, dtype=dt) * 0.1, torch.randn(216, device=dev, dtype=dt)
    wd = torch.randn(216, 1, 3, 3, device=dev, dtype=dt) * 0.3
    kw = dict(act="silu", stride=1, skip=True, bn_weight=torch.ones(216, device=dev, dtype=dt),
              bn_bias=torch.zeros(216, device=dev, dtype=dt), running_mean=torch.zeros(216, device=dev),
              running_var=torch.ones(216, device=dev), bn_training=True)
    print(f"expand_dwconv_act {dt}: cuda {t(expand_dwconv_act_cuda, x, w, b, wd, None, **kw):.2f}"
          f"  torch {t(expand_dwconv_act_ref, x, w, b, wd, None, **kw):.2f}")
    # EMO-5M stage-3 attention at 256: B=64, C=160, head_dim 32, 16x16 (padded to 21x21)
    q, k, v = (torch.randn(64, 160, 16, 16, device=dev, dtype=dt) for _ in range(3))
    kp = torch.randn(160, device=dev, dtype=dt)
    print(f"window_attention  {dt}: cuda {t(window_attention_cuda, q, k, v, kp, head_dim=32):.2f}"
          f"  torch {t(window_attention_ref, q, k, v, kp, head_dim=32):.2f}")
PYEOF
exit ${status:-0}
