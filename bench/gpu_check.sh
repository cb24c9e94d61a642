#!/usr/bin/env bash
# Everything seedfed checks on a CUDA device, in one run sized to about ten minutes on one
# large GPU (each step has its own time limit, so one slow step cannot starve the others):
#
#   1. pytest -m cuda                     the CUDA tests (CPU, device-master and host-master digests; streamed probes)
#   2. bench/gpu_check.py digest          one ledger: CPU vs CUDA vs pinned host master digests, and probes per layout
#   3. bench/gpu_check.py big             Llama-3-8B shape, master in host memory: peak device memory vs MeZO bf16
#   4. bench/probe.py --device cuda       probe time, resident vs streamed (GPT-2 small, bf16)
#
#     bash bench/gpu_check.sh                 # all four; logs and a summary under $OUT (default ./gpu-check)
#     STEPS="1 2" bash bench/gpu_check.sh     # some of them
#
# Exit status: 0 when every step passed.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
OUT=${OUT:-gpu-check}
STEPS=${STEPS:-"1 2 3 4"}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
status=0

"$PY" - <<'PY' | tee -a "$SUMMARY"
import torch
print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print(f"device: {torch.cuda.get_device_name(0)}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
PY

step() {  # step NUMBER NAME SECONDS COMMAND...
    local n=$1 name=$2 limit=$3
    shift 3
    case " $STEPS " in *" $n "*) ;; *) return 0 ;; esac
    echo "== $n. $name (limit ${limit}s)" | tee -a "$SUMMARY"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$OUT/step$n.log" 2>&1
    local rc=$?
    tail -n 15 "$OUT/step$n.log" | tee -a "$SUMMARY"
    echo "-- $n. $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$SUMMARY"
    [ "$rc" -eq 0 ] || status=1
}

step 1 "pytest -m cuda" 240 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/engine tests/client
step 2 "CPU vs CUDA vs host-master digest on one ledger" 150 "$PY" bench/gpu_check.py digest
# eager kernels: the 8B step measures memory, and compiling the kernels would take a minute of the budget
step 3 "Llama-3-8B client, master in host memory, vs MeZO bf16" 300 env SEEDFED_COMPILE=0 "$PY" bench/gpu_check.py big
step 4 "probe throughput, resident vs streamed" 180 "$PY" bench/probe.py --device cuda --dtype bfloat16 --batch 16 --repeats 5

echo "overall: $([ $status -eq 0 ] && echo PASS || echo FAIL)" | tee -a "$SUMMARY"
exit $status
