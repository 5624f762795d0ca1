#!/usr/bin/env bash
# One-shot GPU check of fastmmgan, for a lent CUDA machine that nobody can try beforehand.
#
#   bash benchmarks/gpu_check.sh            (from the repo root; no arguments)
#
# Stages: install, tests, fused-op benchmark (quick), train-step bench, a 3000-step training run, the data input
# path (colour-digits on the device, with prefetch, with neither).
# Each stage runs under `timeout` with its log kept, and a failing stage does not stop the next
# ones. The whole run stays within GPU_CHECK_BUDGET_S (default 450 s: with the 10 s kill grace and the
# report, under 8 minutes): a stage gets min(its own cap, what is left of the budget).
# Result: $DIR/gpu_check.md (also printed), DIR=${OUT:-benchmarks/gpu_check_out}.
# Nothing is fetched from the network (pip runs with --no-index and --no-deps).
#
# Environment: OUT (report dir; the device runner sets it and gets back what is written there),
# GPU_CHECK_NO_INSTALL=1 (skip the editable install), GPU_CHECK_BUDGET_S, PYTHON (interpreter).
# Exit status: 0 when the checks ran (failed stages are reported in the table), 1 on misuse.
set -u

if [ $# -gt 0 ]; then
    echo "usage: bash benchmarks/gpu_check.sh   (no arguments; env: OUT, GPU_CHECK_NO_INSTALL=1, GPU_CHECK_BUDGET_S, PYTHON)" >&2
    exit 1
fi
# Run from the repo root whatever the caller's directory (a relative $OUT stays relative to the caller's).
case ${OUT:-} in '' | /*) ;; *) OUT="$PWD/$OUT" ;; esac
cd "$(dirname "$0")/.." && [ -f pyproject.toml ] && [ -f benchmarks/gpu_ops.py ] || {
    echo "gpu_check: cannot find the repo root (pyproject.toml) above $0" >&2
    exit 1
}

# The GPU machine documents python3; fall back to python.
PY=${PYTHON:-$(command -v python3 || command -v python)}
if ! "$PY" -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
    echo "gpu_check: needs a CUDA GPU; none found, nothing run"
    exit 0
fi

BUDGET=${GPU_CHECK_BUDGET_S:-450}
case $BUDGET in '' | *[!0-9]*) echo "gpu_check: GPU_CHECK_BUDGET_S must be whole seconds, got '$BUDGET'" >&2; exit 1 ;; esac
DEADLINE=$(($(date +%s) + BUDGET))
DIR=${OUT:-benchmarks/gpu_check_out}
mkdir -p "$DIR" && DIR=$(cd "$DIR" && pwd) || { echo "gpu_check: cannot create report dir '$DIR'" >&2; exit 1; }
# Logs must be complete even when a stage is killed; no pip network access, ever.
export PYTHONUNBUFFERED=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1

NAMES=() STATUS=() SECS=() SUMMARY=() LOGS=()

# stage_limit CAP: seconds a stage may run: its cap, or what is left of the budget if less.
stage_limit() {
    local left=$((DEADLINE - $(date +%s)))
    echo $(($1 < left ? $1 : left))
}

# run_stage NAME LIMIT STDOUT_FILE CMD...: run CMD under timeout (stderr into $DIR/NAME.log, and stdout
# too unless STDOUT_FILE is given), then record its status and seconds. Sets RC for the caller.
run_stage() {
    local name=$1 limit=$2 out=$3 log="$DIR/$1.log"
    shift 3
    NAMES+=("$name") LOGS+=("$log")
    if [ "$limit" -lt 20 ]; then # not worth starting: the budget is spent
        STATUS+=("skipped (total budget spent)") SECS+=(0) RC=125
        return
    fi
    echo "gpu_check: $name (limit ${limit} s): $*" >&2
    local t0 t1
    t0=$(date +%s%N)
    # -k: a stage that ignores SIGTERM is killed 10 s later (status 137).
    if [ -n "$out" ]; then
        timeout -k 10 "$limit" "$@" >"$out" 2>"$log"
    else
        timeout -k 10 "$limit" "$@" >"$log" 2>&1
    fi
    RC=$?
    t1=$(date +%s%N)
    SECS+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')")
    case $RC in
        0) STATUS+=("ok") ;;
        124 | 137) STATUS+=("timed out (${limit} s)") ;;
        *) STATUS+=("FAILED rc=$RC") ;;
    esac
}

# summary TEXT: one markdown table cell (pipes escaped, one line, at most 200 characters).
summary() {
    SUMMARY+=("$(printf '%s' "$1" | tr '\n' ' ' | sed 's/|/\\|/g' | cut -c1-200)")
}

# last_line FILE [PATTERN]: the last non-empty line (matching PATTERN) of FILE, or nothing.
last_line() {
    [ -f "$1" ] || return 0
    grep -E "${2:-.}" "$1" | grep -v '^[[:space:]]*$' | tail -n 1
}

# 0. Editable install (maps kernels/ and export/ into the fastmmgan namespace).
if [ "${GPU_CHECK_NO_INSTALL:-0}" = 1 ]; then
    NAMES+=(install) STATUS+=("skipped (GPU_CHECK_NO_INSTALL=1)") SECS+=(0) LOGS+=("") SUMMARY+=("")
else
    run_stage install "$(stage_limit 90)" "" "$PY" -m pip install --no-deps --no-build-isolation -e . -q
    summary "$(last_line "$DIR/install.log")"
fi

# a. The CUDA tests: the kernels on CUDA tensors (GPU-only cases included), dispatch, the compiled step with
#    the kernels inside (inductor, CUDA graphs) against the eager reference, and the default training command.
#    The rest of the suite is CPU work that CI already runs.
#    (-o addopts: the machine's pytest may lack pytest-xdist, which the project's addopts ask for.)
run_stage tests "$(stage_limit 150)" "" "$PY" -m pytest -q -o addopts=-ra tests/test_kernels.py tests/test_ops_dispatch.py \
    tests/test_step.py tests/test_cuda_path.py tests/test_cached_training.py -p no:cacheprovider
summary "$(last_line "$DIR/tests.log" '[0-9]+ (passed|failed|error|errors|skipped)|no tests ran|ERROR|Error')"

# b. Fused ops vs cuBLAS + leaky-ReLU. The script stops starting cases 40 s before our timeout, so its
#    report is whole; it also rewrites the report after every case, in case it is killed anyway.
LIMIT=$(stage_limit 150)
run_stage ops "$LIMIT" "" "$PY" benchmarks/gpu_ops.py --quick --out "$DIR/ops.md" --budget-s $((LIMIT - 40))
OPS_LINE=$(last_line "$DIR/ops.log" '^gpu_ops: ')
summary "${OPS_LINE:-$(last_line "$DIR/ops.log")}"

# c. Train-step bench (compiled step vs eager reference); its stdout is the markdown table.
run_stage bench "$(stage_limit 120)" "$DIR/bench.md" "$PY" -m fastmmgan.bench --device cuda --rounds 5
if [ "$RC" = 0 ]; then
    summary "$(grep -E '^[a-z0-9_-]+ batch [0-9]+: ' "$DIR/bench.md" | paste -sd ';' | sed 's/;/; /g')"
else
    summary "$(last_line "$DIR/bench.log")"
fi

# d. A 3000-step training run with default settings: wall seconds and the last metrics line.
#    A fresh run dir, since a stale one would mix two runs' metrics (and we delete nothing).
RUN="$DIR/run"
[ -e "$RUN" ] && RUN="$DIR/run-$(date +%s)"
run_stage train "$(stage_limit 200)" "" "$PY" -m fastmmgan.train --steps 3000 --out "$RUN" --no-progress \
    --sample-every 0 --ckpt-every 0
METRICS=$(last_line "$RUN/metrics.jsonl")
if [ "$RC" = 0 ]; then
    summary "3000 steps in ${SECS[-1]} s ($(awk -v s="${SECS[-1]}" 'BEGIN { printf "%.0f", 3000 / s }') steps/s, start-up and compile included)"
else
    summary "$(last_line "$DIR/train.log")"
fi

# e. The GPU input path on colour-digits (a prepared, memory-mapped dataset): the training data on the device,
#    and off it with and without the pinned background prefetch. Steps/s of each run's last log window.
DATA_RUNS=""
for mode in "on:--data-on-device yes" "prefetch:--data-on-device no --prefetch yes" "plain:--data-on-device no --prefetch no"; do
    name=${mode%%:*}
    run_stage "data-$name" "$(stage_limit 60)" "" "$PY" -m fastmmgan.train --dataset colour-digits --steps 600 \
        --log-every 100 --out "$DIR/data-$name" --no-progress --sample-every 0 --ckpt-every 0 --cache-dir "$DIR/cache" \
        ${mode#*:}
    RATE=$(last_line "$DIR/data-$name/metrics.jsonl" steps_per_s | sed -E 's/.*"steps_per_s": ([0-9.]+).*/\1/')
    summary "steps/s at the end: ${RATE:-none}"
    DATA_RUNS="$DATA_RUNS $name=${RATE:-none}"
done

# The report: environment, stage table, the train run's last metrics, the two tables verbatim, log tails of failed stages.
GPU=$(timeout 20 nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1)
VERSIONS=$(timeout 60 "$PY" - <<'EOF' 2>&1
import platform, torch
try:
    import triton
    tv = triton.__version__
except Exception as exc:  # report it, do not fail
    tv = f"not importable ({exc})"
try:
    name = torch.cuda.get_device_name()
except Exception as exc:
    name = f"no device ({exc})"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {tv}, python {platform.python_version()}; torch sees: {name}")
EOF
)
REPORT="$DIR/gpu_check.md"
{
    echo "# fastmmgan GPU check"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); host: $(hostname); commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "- GPU (nvidia-smi name, driver): ${GPU:-nvidia-smi not available}"
    echo "- $VERSIONS"
    echo "- budget ${BUDGET} s; used $(($(date +%s) - DEADLINE + BUDGET)) s"
    echo
    echo "| stage | status | seconds | summary |"
    echo "|---|---|---:|---|"
    for i in "${!NAMES[@]}"; do
        echo "| ${NAMES[$i]} | ${STATUS[$i]} | ${SECS[$i]} | ${SUMMARY[$i]} |"
    done
    echo
    echo "Last line of ${RUN#"$DIR"/}/metrics.jsonl (train stage):"
    echo
    echo '```'
    echo "${METRICS:-(none)}"
    echo '```'
    echo
    echo "Input path on colour-digits, steps/s (data on the device, pinned prefetch, neither):${DATA_RUNS}"
    echo
    if [ -s "$DIR/ops.md" ]; then cat "$DIR/ops.md"; else echo "## Fused ops: no report (see ops.log)"; fi
    echo
    echo "## Train-step bench (python -m fastmmgan.bench --device cuda --rounds 5)"
    echo
    if [ -s "$DIR/bench.md" ]; then cat "$DIR/bench.md"; else echo "(no output; see bench.log)"; fi
    for i in "${!NAMES[@]}"; do
        if [ "${STATUS[$i]}" != ok ] && [ -s "${LOGS[$i]}" ]; then
            echo
            echo "## Log tail: ${NAMES[$i]} (${STATUS[$i]})"
            echo
            echo '```'
            tail -n 30 "${LOGS[$i]}"
            echo '```'
        fi
    done
} >"$REPORT"
cat "$REPORT"
echo "gpu_check: report in $REPORT" >&2
exit 0
