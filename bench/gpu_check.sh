#!/usr/bin/env bash
# One-shot GPU check for a fresh GPU machine (torch + triton preinstalled, no network, no pip):
# GPU work first, then what the CPU machines already cover. Parts, in order:
#   1 env        device, versions (torch, triton, CUDA, driver), date        -> env.txt
#   2 build      the CUDA extension ALONE (bench/cuda_build.py: setup.py build_ext --inplace
#                with EMO_KERNELS_SKIP_CPU_BUILD=1, MAX_JOBS=$(nproc), this GPU's arch only);
#                then the CPU extension starts building in the background for part 7
#   3 gpu-tests  the GPU test cases only (-k "triton or cuda": every dtype -- the triton
#                irmb_inference EMO blocks in fp32 and bf16 only, for time --, NaN-poisoned
#                outputs, gradcheck) of the kernel test files, with EMO_KERNELS_CPU_JIT=0 so
#                that nothing builds the CPU extension meanwhile   -> tests.log, gpu_tests.xml
#   4 calibrate  bench/calibrate.py: copy + L2-hit bandwidth, one bf16 GEMM, cuDNN depthwise
#                efficiency, expand_dwconv_act of s1.1/s3.1 per backend, EMO-5M batch 256 eager
#                vs fused=True vs the triton plan (eager and CUDA-graphed) vs torch.compile,
#                beside gpu-design.md's estimates
#                                                                           -> calibrate.jsonl
#   5 ops        op benchmarks (bf16, channels_last, batch 256; irmb_inference first, fwd only;
#                expand_dwconv_act and window_attention fwd and fwd+bwd)
#   6 measured   bench/measured.py: the table that lets auto pick a kernel (from part 5 and
#                part 3's junit XML; a backend with a failed GPU test gets no rows)
#                                                                         -> gpu_measured.json
#   7 tests-rest the rest of the suite (CPU-side tests on this stack), after the CPU build
#   7b gpu-model bench/gpu_model.py's predictions (a model) for part 4's EMO-5M rows -> summary.txt
#   8 report     bench/report.py over part 5's rows                  -> <stem>.md, <stem>.json
# Every part runs under `timeout` (SIGINT first, so pytest-benchmark and calibrate keep what
# they have); one global deadline keeps the whole run under GPU_CHECK_TOTAL seconds (default
# 450 s: within 8 minutes with the kill grace); time a part does not use goes to the later
# ones; a part cut short still leaves its partial output. Output: ONE folder, at most 8 files:
#   $OUT if set, else bench/results/<stem>/:
#   env.txt summary.txt tests.log calibrate.jsonl gpu_measured.json <stem>.md <stem>.json
#   <stem>: the one naming scheme of result files (bench/results.py),
#   <kind>_<device>_<YYYYMMDD>_t<threads>_gpucheck (dry run: ..._dryrun), e.g.
#   gpu_NVIDIA_H200_20261205_t16_gpucheck
#   logs.tar.gz (build, CPU build, junit XML, benchmark JSON and logs, report PNG)
#
# Usage (repo root, as root on the GPU machine; system python3, PYTHONPATH=repo, no pip):
#   bash bench/gpu_check.sh
#   bash bench/gpu_check.sh --dry-run   # CPU smoke run of every part with tiny settings
#                                       # (CI, on both software stacks), then checks the outputs
# Caps (seconds, env): GPU_CHECK_TOTAL=450 CAP_BUILD=150 CAP_GPU_TESTS=120 CAP_CALIBRATE=130
#   CAP_OPS=60 CAP_TESTS_REST=120. PYTHON=python3. EMO_BENCH_* (bench/config.py) override the
#   benchmark settings. The script never installs or downloads anything.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=0
for a in "$@"; do
  case "$a" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,42p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $a" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python3}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 GPU_CHECK_ACTIVE=1
export PIP_NO_INDEX=1          # belt and braces: nothing here may install or download
START=$(date +%s)
TOTAL=${GPU_CHECK_TOTAL:-450}
RESERVE=20                     # kept for the report and packing
DATE=$(date -u +%F)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ $DRY = 1 ]; then TOTAL=${GPU_CHECK_TOTAL:-400}; fi

if [ $DRY = 1 ]; then
  # tiny settings: every part runs, quickly, on CPU
  export EMO_BENCH_TINY=1 EMO_BENCH_DEVICE=cpu EMO_BENCH_THREADS=1  # 1: no OpenMP stalls on a busy CI box
fi
TAG=gpucheck; [ $DRY = 1 ] && TAG=dryrun
# the benchmarks' device and threads (EMO_BENCH_DEVICE, EMO_BENCH_THREADS) name the files
STEM=$("$PY" -c "from bench import env, results
env.set_threads()
print(results.stem_for(env.default_device(), tag='$TAG'))" 2>/dev/null \
  || echo "gpu_unknown_$(date -u +%Y%m%d)_t0_$TAG")
if [ -n "${OUT:-}" ]; then DEST=$OUT
elif [ $DRY = 1 ]; then DEST=$(mktemp -d /tmp/gpu_check_dry.XXXXXX)
else DEST=bench/results/$STEM
fi
mkdir -p "$DEST"
LOGS=$(mktemp -d /tmp/gpu_check_logs.XXXXXX)
SUMMARY="$DEST/summary.txt"
: > "$SUMMARY"
echo "gpu_check: $(date -u +%FT%TZ) commit=$COMMIT dry=$DRY python=$PY out=$DEST total cap ${TOTAL}s" | tee -a "$SUMMARY"

left() { echo $(( START + TOTAL - RESERVE - $(date +%s) )); }

# part NAME CAP LOG CMD...: run CMD under timeout (SIGINT, then KILL 10 s later) within the
# global deadline; append status and duration to summary.txt
part() {
  local name=$1 cap=$2 log=$3; shift 3
  local l t0 rc how
  l=$(left); [ "$name" = report ] && l=$(( l + RESERVE ))
  (( cap > l )) && cap=$l
  if (( cap < 5 )); then
    echo "[$name] SKIPPED: no time left (deadline)" | tee -a "$SUMMARY"; PART_RC=124; return 0
  fi
  echo "== [$name] cap ${cap}s: $*" | tee -a "$SUMMARY"
  t0=$(date +%s)
  timeout -s INT -k 10 "$cap" "$@" >"$log" 2>&1
  rc=$?
  PART_RC=$rc
  how=ok
  if (( rc == 124 || rc == 130 || rc == 137 )); then how="TIMED OUT (partial)"
  elif (( rc != 0 )); then how="exit $rc"; fi
  echo "[$name] $how after $(( $(date +%s) - t0 ))s; log: $(basename "$log")" | tee -a "$SUMMARY"
  tail -n 3 "$log" | sed "s/^/    [$name] /" | tee -a "$SUMMARY"
  return 0
}

# 1 env
{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $COMMIT"
  echo "host: $(uname -a)"
  echo "cpus: $(nproc)"
  "$PY" - <<'PYEOF'
import torch
from bench import env
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
print("device:", env.device_name(dev))
for k, v in env.versions().items():
    print(f"{k}: {v}")
if dev.type == "cuda":
    p = torch.cuda.get_device_properties(dev)
    print(f"capability: {p.major}.{p.minor}, SMs: {p.multi_processor_count}, "
          f"memory: {p.total_memory / 2**30:.1f} GiB")
PYEOF
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv
  else
    echo "nvidia-smi: not found"
  fi
  command -v nvcc >/dev/null && nvcc --version | tail -n 2
} > "$DEST/env.txt" 2>&1
echo "[env] written: env.txt" | tee -a "$SUMMARY"

GPU_TEST_FILES=(tests/ops/test_expand_dwconv_act.py tests/ops/test_window_attention.py tests/ops/test_validation.py
                tests/ops/test_irmb_inference_triton.py)
if [ $DRY = 1 ]; then
  BUILD_ARGS=(--dry-run)
  GPU_TEST_ARGS=(--collect-only -q)
  REST_ARGS=(--collect-only -q --continue-on-collection-errors tests)
  REST_JIT=0   # collecting must not JIT-build the CPU extension (a minute, for nothing)
  CAL_ARGS=(--dry-run)
  OPS_K=(-k "fwd- and (Cin24-Cmid24 or C80-hd20) and torch")
  OPS_DTYPES=fp32
else
  BUILD_ARGS=()
  GPU_TEST_ARGS=(-q -rs)
  # test files needing a package the GPU machine lacks (hypothesis, onnx...) fail to collect:
  # run the others rather than abort the part
  REST_ARGS=(-q -rs --continue-on-collection-errors tests
             --deselect tests/bench/test_bench.py::test_gpu_check_dry_run)
  for f in "${GPU_TEST_FILES[@]}"; do REST_ARGS+=(--deselect "$f"); done
  REST_JIT=${EMO_KERNELS_CPU_JIT:-1}
  CAL_ARGS=()
  OPS_K=()
  OPS_DTYPES=bf16
fi
BENCH_OPTS=(-p no:cacheprovider -rs --benchmark-columns=median,iqr,rounds --benchmark-sort=name)

# 2 build: the CUDA extension alone, then the CPU extension in the background
part build "${CAP_BUILD:-150}" "$LOGS/build.log" "$PY" -m bench.cuda_build "${BUILD_ARGS[@]}"
if [ $DRY = 0 ] && [ "${PART_RC:-0}" != 0 ]; then
  export EMO_KERNELS_CUDA_JIT=0   # no later process retries the build
  echo "[build] failed: EMO_KERNELS_CUDA_JIT=0 for the later parts (cuda rows will skip)" | tee -a "$SUMMARY"
fi
CPU_BUILD_PID=""
if [ $DRY = 0 ]; then
  "$PY" -m bench.cuda_build --cpu > "$LOGS/cpu_build.log" 2>&1 &
  CPU_BUILD_PID=$!
fi

# 3 the GPU test cases first (nothing may build the CPU extension meanwhile)
EMO_KERNELS_CPU_JIT=0 part gpu-tests "${CAP_GPU_TESTS:-120}" "$DEST/tests.log" "$PY" -m pytest \
  -p no:cacheprovider "${GPU_TEST_ARGS[@]}" "${GPU_TEST_FILES[@]}" \
  -k "(triton or cuda) and not (test_emo_block and (float64 or float16))" \
  --junitxml="$LOGS/gpu_tests.xml"

# 4 calibration measurements (each line written as soon as it is measured)
EMO_KERNELS_CPU_JIT=0 part calibrate "${CAP_CALIBRATE:-130}" "$LOGS/calibrate.log" "$PY" -m bench.calibrate \
  --out "$DEST/calibrate.jsonl" "${CAL_ARGS[@]}"

# 5 op benchmarks (GPU: bf16, channels_last, batch 256; irmb_inference fwd only)
EMO_KERNELS_CPU_JIT=0 EMO_BENCH_DTYPES=${EMO_BENCH_DTYPES:-$OPS_DTYPES} \
EMO_BENCH_ROUNDS=${EMO_BENCH_ROUNDS:-$([ $DRY = 1 ] && echo 1 || echo 10)} \
EMO_BENCH_WARMUP=${EMO_BENCH_WARMUP:-$([ $DRY = 1 ] && echo 1 || echo 3)} \
part ops "${CAP_OPS:-60}" "$LOGS/bench_ops.log" "$PY" -m pytest "${BENCH_OPTS[@]}" \
  bench/bench_irmb_inference.py bench/bench_expand_dwconv_act.py bench/bench_window_attention.py "${OPS_K[@]}" \
  --benchmark-json="$LOGS/ops.json"

# 6 the measurement table auto reads (commit it into emo_kernels/ with the results)
OPS_JSONS=(); [ -s "$LOGS/ops.json" ] && OPS_JSONS=("$LOGS/ops.json")
part measured 20 "$LOGS/measured.log" "$PY" -m bench.measured "${OPS_JSONS[@]}" \
  --junit "$LOGS/gpu_tests.xml" --out "$DEST/gpu_measured.json" --commit "$COMMIT" --date "$DATE"

# 7 the rest of the suite, once the CPU extension is built
if [ -n "$CPU_BUILD_PID" ]; then
  l=$(left); (( l > 0 )) && timeout "$l" tail --pid="$CPU_BUILD_PID" -f /dev/null
  wait "$CPU_BUILD_PID" 2>/dev/null; echo "[cpu-build] exit $? (log: cpu_build.log)" | tee -a "$SUMMARY"
fi
EMO_KERNELS_CPU_JIT=$REST_JIT part tests-rest "${CAP_TESTS_REST:-120}" "$LOGS/tests_rest.log" \
  "$PY" -m pytest -p no:cacheprovider "${REST_ARGS[@]}"

# 7b the cost model's predictions (bench/gpu_model.py: a MODEL, not a measurement) for the
#    EMO-5M rows part 4 measured, into summary.txt beside them, so this run calibrates the model
#    (last before the report: it needs no GPU, so the GPU parts run first)
MODEL_ARGS=(--models emo_5m --batch 256 --dtypes bf16 --modes infer,train)
# (dry run: two small blocks only -- compiling every D1 kernel takes minutes on 2 cores)
[ $DRY = 1 ] && MODEL_ARGS=(--models emo_1m --batch 2 --dtypes bf16 --modes infer
                            --only stage0.0,stage1.1,head)
part gpu-model "${CAP_MODEL:-60}" "$LOGS/gpu_model.log" "$PY" -m bench.gpu_model "${MODEL_ARGS[@]}"
grep -E "MODEL ESTIMATES|^model |^emo_|^    ! " "$LOGS/gpu_model.log" | head -30 | tee -a "$SUMMARY"

# 8 report
if [ -s "$LOGS/ops.json" ]; then
  NOTE="GPU check $(date -u +%F) on commit $COMMIT; parts and caps in summary.txt"
  [ $DRY = 1 ] && NOTE="DRY RUN on CPU with tiny settings: smoke test of the script, not a measurement"
  mkdir -p "$LOGS/report"
  part report 20 "$LOGS/report.log" "$PY" -m bench.report "$LOGS/ops.json" --out-dir "$LOGS/report" \
    --stem "$STEM" --note "$NOTE"
  for ext in md json; do [ -f "$LOGS/report/$STEM.$ext" ] && mv "$LOGS/report/$STEM.$ext" "$DEST/"; done
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
for f in env.txt summary.txt tests.log calibrate.jsonl gpu_measured.json logs.tar.gz "$STEM.md" "$STEM.json"; do
  [ -s "$DEST/$f" ] || { echo "gpu_check: MISSING $f" | tee -a "$SUMMARY"; status=1; }
done
n=$(find "$DEST" -type f | wc -l)
(( n <= 8 )) || { echo "gpu_check: $n files in $DEST (> 8)" | tee -a "$SUMMARY"; status=1; }
[ $DRY = 1 ] && echo "gpu_check: dry run $([ $status = 0 ] && echo OK || echo FAILED)" | tee -a "$SUMMARY"
exit $status
