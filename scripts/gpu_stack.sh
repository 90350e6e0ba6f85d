#!/usr/bin/env bash
# The GPU machine's software stack, tested here (CI runs this before the main suite):
#   1. .venv-gpu with exactly that machine's packages (requirements-gpu-stack.txt: torch 2.11
#      + triton 3.6 + numpy >= 2.4 ...); the package is NOT installed into it (the GPU machine
#      runs the checkout through PYTHONPATH, as bench/gpu_check.sh does);
#   2. on that stack: the Triton kernels in the interpreter, opcheck and torch.compile of the
#      ops, the sm_80/sm_90 compiles of every kernel in every dtype, the compiled code of the
#      irmb_inference launches (spills, shared memory, HGMMA/HMMA, 128-bit accesses), the
#      backend rules;
#   3. a simulated bare GPU machine: bench/gpu_check.sh --dry-run with only those packages,
#      no network (unshare -n), pip replaced by a stub; fails if the script installs or
#      downloads anything (the package list must be unchanged afterwards).
# Idempotent: a second run reuses .venv-gpu. Honors $PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv-gpu/bin/python ] || "$PY" -m venv .venv-gpu
.venv-gpu/bin/python -m pip install -q --disable-pip-version-check -r requirements-gpu-stack.txt
G=$PWD/.venv-gpu/bin/python
export PYTHONPATH=$PWD
export EMO_KERNELS_CPU_JIT=0  # the CPU extension is not this stack's subject (no ninja there)
echo "gpu_stack: $($G -c 'import torch, triton, numpy; print("torch", torch.__version__, "triton", triton.__version__, "numpy", numpy.__version__)')"

# the CPU and CUDA extensions are not built for this stack: their backends' tests opt out
EMO_KERNELS_SKIP_CPU_BUILD=1 EMO_KERNELS_SKIP_CUDA_BUILD=1 \
  $G -m pytest -q -p no:cacheprovider tests/ops/test_expand_dwconv_act.py tests/ops/test_window_attention.py \
  tests/backends/test_triton_compile.py tests/backends/test_triton_artifacts.py \
  tests/backends/test_dispatch.py tests/backends/test_measured.py
# the triton irmb_inference kernels in this stack's interpreter: every EMO block in fp32, the
# 16-wide tiles, the chain runner and the whole EMO-1M/2M plans (every dtype runs in the main
# suite; here the interpreter of triton 3.6 is the subject)
EMO_KERNELS_SKIP_CPU_BUILD=1 EMO_KERNELS_SKIP_CUDA_BUILD=1 \
  $G -m pytest -q -p no:cacheprovider tests/ops/test_irmb_inference_triton.py \
  -k "float32 or small_tiles or chain or whole_model or nchw"

# 3. the simulated bare GPU machine
before=$($G -m pip list --format=freeze --disable-pip-version-check 2>/dev/null | sort)
stub=$(mktemp -d)
for p in pip pip3; do
  printf '#!/bin/sh\necho "bare GPU machine: pip is not available ($0 $*)" >&2\nexit 97\n' > "$stub/$p"
  chmod +x "$stub/$p"
done
out=$(mktemp -d)
net=(unshare -n)
if ! unshare -n true 2>/dev/null; then
  echo "gpu_stack: WARNING: unshare -n is not permitted here; the dry run runs with the network" >&2
  net=()
fi
rc=0
env -u EMO_KERNELS_CPU_JIT PATH="$stub:$PATH" OUT="$out" PYTHON="$G" "${net[@]}" \
  bash bench/gpu_check.sh --dry-run > "$out.log" 2>&1 || rc=$?
after=$($G -m pip list --format=freeze --disable-pip-version-check 2>/dev/null | sort)
if [ "$rc" != 0 ] || ! grep -q "dry run OK" "$out.log"; then
  tail -n 60 "$out.log"; echo "gpu_stack: the bare-machine dry run FAILED (exit $rc)" >&2; exit 1
fi
if grep -q "bare GPU machine: pip is not available" "$out.log" || [ "$before" != "$after" ]; then
  diff <(echo "$before") <(echo "$after") || true
  echo "gpu_stack: bench/gpu_check.sh tried to install something on a bare GPU machine" >&2; exit 1
fi
rm -rf "$stub" "$out" "$out.log"
echo "gpu_stack: bare-machine dry run OK (no network, no pip, package list unchanged)"
