#!/usr/bin/env bash
# One-shot GPU check for a fresh GPU machine (torch + triton preinstalled, no network):
#   1 env      device, versions (torch, triton, CUDA, driver), date   -> env.txt
#   2 build    in-place build of the CUDA extension for this GPU (bench/cuda_build.py: setup.py
#              build_ext --inplace, then emo_kernels._cuda.load(), its JIT fallback; skipped
#              with a message when the cuda backend is not on this branch)
#   3 tests    python -m pytest tests (the full suite, on the GPU)      -> tests.log
#   4 ops      bench/bench_expand_dwconv_act.py + bench_window_attention.py (pytest-benchmark;
#              bf16 then fp32, channels_last, batch 256; 30 % of the time left)
#   5 model    bench/bench_model.py (eager, fused per backend; bf16, fp16, fp32, channels_last,
#              batch 256 then 1; 60 % of the time left)
#   6 compile  bench/bench_model.py, torch.compile rows (EMO-5M, bf16, batch 256) with the rest,
#              if at least 40 s are left
#   7 report   bench/report.py -> <stem>.md / .json / .png
# Every part runs under `timeout` (SIGINT first, so pytest-benchmark still writes the rows it
# has; rows are ordered most important first); one global deadline keeps the whole run under
# GPU_CHECK_TOTAL seconds (default 450 s: within 8 minutes with the kill grace); time a part
# does not use goes to the later ones. Output: ONE folder, at most 8 files:
#   $OUT if set, else bench/results/gpu-<device>-<date>/:
#   env.txt summary.txt build.log tests.log <stem>.md <stem>.json <stem>.png logs.tar.gz
#
# Usage (repo root, as root on the GPU machine; system python3, PYTHONPATH=repo, no pip):
#   bash bench/gpu_check.sh
#   bash bench/gpu_check.sh --dry-run   # CPU smoke run of every part with tiny settings
#                                       # (CI: tests/test_bench.py), then checks the outputs
# Caps (seconds, env): GPU_CHECK_TOTAL=450 CAP_BUILD=150 CAP_TESTS=120, and upper bounds
#   CAP_OPS=150 CAP_MODEL=200 CAP_COMPILE=150 on the shares above. PYTHON=python3.
#   EMO_BENCH_* (bench/common.py) override the benchmark settings.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=0
for a in "$@"; do
  case "$a" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $a" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python3}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 GPU_CHECK_ACTIVE=1
START=$(date +%s)
TOTAL=${GPU_CHECK_TOTAL:-450}
RESERVE=30                     # kept for the report and packing
DATE=$(date -u +%F)
if [ $DRY = 1 ]; then TOTAL=${GPU_CHECK_TOTAL:-300}; fi

SLUG=$("$PY" -c 'import torch
from bench.common import device_slug
print(device_slug("cuda" if torch.cuda.is_available() else "cpu"))' 2>/dev/null || echo unknown)
[ $DRY = 1 ] && SLUG="dryrun-$SLUG"
STEM="$SLUG-$DATE"
if [ -n "${OUT:-}" ]; then DEST=$OUT
elif [ $DRY = 1 ]; then DEST=$(mktemp -d /tmp/gpu_check_dry.XXXXXX)
else DEST=bench/results/$SLUG-$DATE
fi
mkdir -p "$DEST"
LOGS=$(mktemp -d /tmp/gpu_check_logs.XXXXXX)
SUMMARY="$DEST/summary.txt"
: > "$SUMMARY"
echo "gpu_check: $(date -u +%FT%TZ) dry=$DRY python=$PY out=$DEST total cap ${TOTAL}s" | tee -a "$SUMMARY"

# part NAME CAP LOG CMD...: run CMD under timeout (SIGINT, then KILL 10 s later) within the
# global deadline; append status and duration to summary.txt
part() {
  local name=$1 cap=$2 log=$3; shift 3
  local now left t0 rc
  now=$(date +%s); left=$(( START + TOTAL - RESERVE - now ))
  [ "$name" = report ] && left=$(( START + TOTAL - now ))
  (( cap > left )) && cap=$left
  if (( cap < 5 )); then
    echo "[$name] SKIPPED: no time left (deadline)" | tee -a "$SUMMARY"; return 0
  fi
  echo "== [$name] cap ${cap}s: $*" | tee -a "$SUMMARY"
  t0=$(date +%s)
  timeout -s INT -k 10 "$cap" "$@" >"$log" 2>&1
  rc=$?
  PART_RC=$rc
  local how=ok
  if (( rc == 124 || rc == 130 || rc == 137 )); then how="TIMED OUT (partial)"
  elif (( rc != 0 )); then how="exit $rc"; fi
  echo "[$name] $how after $(( $(date +%s) - t0 ))s; log: $(basename "$log")" | tee -a "$SUMMARY"
  tail -n 3 "$log" | sed "s/^/    [$name] /" | tee -a "$SUMMARY"
  return 0
}

# 1 env
{
  echo "date: $(date -u +%FT%TZ)"
  echo "host: $(uname -a)"
  echo "cpus: $(nproc)"
  "$PY" - <<'EOF'
import torch
from bench import common
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
print("device:", common.device_name(dev))
for k, v in common.versions().items():
    print(f"{k}: {v}")
if dev.type == "cuda":
    p = torch.cuda.get_device_properties(dev)
    print(f"capability: {p.major}.{p.minor}, SMs: {p.multi_processor_count}, "
          f"memory: {p.total_memory / 2**30:.1f} GiB")
EOF
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv
    nvidia-smi
  else
    echo "nvidia-smi: not found"
  fi
  command -v nvcc >/dev/null && nvcc --version | tail -n 2
} > "$DEST/env.txt" 2>&1
echo "[env] written: env.txt" | tee -a "$SUMMARY"

if [ $DRY = 1 ]; then
  # tiny settings: every part runs, quickly, on CPU
  export EMO_BENCH_TINY=1 EMO_BENCH_DEVICE=cpu EMO_BENCH_THREADS=1  # 1: no OpenMP stalls on a busy CI box
  BUILD_ARGS=(--dry-run)
  TEST_ARGS=(--collect-only -q tests/test_backends.py tests/test_reference_ops.py)
  OPS_K=(-k "Cin24-Cmid24 or C80-hd20")
  MODEL_K=(-k "(infer and torch) or (train and eager)")
  COMPILE_ARGS=(--collect-only -q)
else
  BUILD_ARGS=()
  TEST_ARGS=(-q -rs tests --deselect tests/test_bench.py::test_gpu_check_dry_run)
  OPS_K=()
  MODEL_K=()
  COMPILE_ARGS=(-q)
fi
BENCH_OPTS=(-p no:cacheprovider -rs --benchmark-columns=median,iqr,rounds --benchmark-sort=name)

# 2 build
part build "${CAP_BUILD:-150}" "$DEST/build.log" "$PY" -m bench.cuda_build "${BUILD_ARGS[@]}"

# without a built extension, every later process would retry the JIT build: switch it off
if [ $DRY = 0 ] && [ "${PART_RC:-0}" != 0 ]; then
  export EMO_KERNELS_CUDA_JIT=0
  echo "[build] failed: EMO_KERNELS_CUDA_JIT=0 for the later parts (cuda rows will skip)" | tee -a "$SUMMARY"
fi

# 3 tests
part tests "${CAP_TESTS:-120}" "$DEST/tests.log" "$PY" -m pytest -p no:cacheprovider "${TEST_ARGS[@]}"

left() { echo $(( START + TOTAL - RESERVE - $(date +%s) )); }
share() { local c=$(( $(left) * $1 / 100 )); (( c > $2 )) && c=$2; echo $c; }

# 4 op benchmarks (GPU: bf16 and fp32, channels_last, batch 256)
EMO_BENCH_DTYPES=${EMO_BENCH_DTYPES:-$([ $DRY = 1 ] && echo fp32 || echo bf16,fp32)} \
part ops "$(share 30 "${CAP_OPS:-150}")" "$LOGS/bench_ops.log" "$PY" -m pytest "${BENCH_OPTS[@]}" \
  bench/bench_expand_dwconv_act.py bench/bench_window_attention.py "${OPS_K[@]}" \
  --benchmark-json="$LOGS/ops.json"

# 5 model benchmarks (GPU: bf16/fp16/fp32, channels_last, batch 256 then 1; 10 rounds)
EMO_BENCH_ROUNDS=${EMO_BENCH_ROUNDS:-$([ $DRY = 1 ] && echo 1 || echo 10)} \
EMO_BENCH_WARMUP=${EMO_BENCH_WARMUP:-$([ $DRY = 1 ] && echo 1 || echo 3)} \
part model "$(share 60 "${CAP_MODEL:-200}")" "$LOGS/bench_model.log" "$PY" -m pytest "${BENCH_OPTS[@]}" \
  bench/bench_model.py "${MODEL_K[@]}" --benchmark-json="$LOGS/model.json"

# 6 torch.compile rows, if time is left (GPU: EMO-5M, bf16, batch 256; dry: collection only)
if (( $(left) >= 40 )); then
  EMO_BENCH_COMPILE=only EMO_BENCH_MODELS=${EMO_BENCH_COMPILE_MODELS:-emo_5m} \
  EMO_BENCH_DTYPES=${EMO_BENCH_COMPILE_DTYPES:-$([ $DRY = 1 ] && echo fp32 || echo bf16)} \
  EMO_BENCH_BATCHES=${EMO_BENCH_COMPILE_BATCHES:-$([ $DRY = 1 ] && echo 1 || echo 256)} \
  EMO_BENCH_ROUNDS=${EMO_BENCH_ROUNDS:-10} EMO_BENCH_WARMUP=${EMO_BENCH_WARMUP:-3} \
  part compile "$(share 100 "${CAP_COMPILE:-150}")" "$LOGS/bench_compile.log" "$PY" -m pytest \
    "${BENCH_OPTS[@]}" bench/bench_model.py "${COMPILE_ARGS[@]}" \
    --benchmark-json="$LOGS/compile.json"
else
  echo "[compile] SKIPPED: $(left)s left" | tee -a "$SUMMARY"
fi

# 7 report
JSONS=()
for j in ops model compile; do [ -s "$LOGS/$j.json" ] && JSONS+=("$LOGS/$j.json"); done
if (( ${#JSONS[@]} )); then
  NOTE="GPU check $(date -u +%F); parts and caps in summary.txt"
  [ $DRY = 1 ] && NOTE="DRY RUN on CPU with tiny settings: smoke test of the script, not a measurement"
  part report 30 "$LOGS/report.log" "$PY" -m bench.report "${JSONS[@]}" --out-dir "$DEST" \
    --stem "$STEM" --note "$NOTE"
else
  echo "[report] SKIPPED: no benchmark JSON was written" | tee -a "$SUMMARY"
fi

# pack everything else into one file (the device tool brings back at most 8 files)
tar -czf "$DEST/logs.tar.gz" -C "$LOGS" . 2>/dev/null
rm -rf "$LOGS"
ELAPSED=$(( $(date +%s) - START ))
echo "gpu_check: done in ${ELAPSED}s; files in $DEST:" | tee -a "$SUMMARY"
ls -1 "$DEST" | tee -a "$SUMMARY"

# check the expected outputs (the dry run must produce all of them)
status=0
for f in env.txt summary.txt build.log tests.log logs.tar.gz "$STEM.md" "$STEM.json"; do
  [ -s "$DEST/$f" ] || { echo "gpu_check: MISSING $f" | tee -a "$SUMMARY"; status=1; }
done
n=$(find "$DEST" -type f | wc -l)
(( n <= 8 )) || { echo "gpu_check: $n files in $DEST (> 8)" | tee -a "$SUMMARY"; status=1; }
[ $DRY = 1 ] && echo "gpu_check: dry run $([ $status = 0 ] && echo OK || echo FAILED)" | tee -a "$SUMMARY"
exit $status
