# Sourced by every bench/device script (on the GPU machine, or here with QUICK=1 to check the plumbing).
# Paths outside the repo copy survive between calls while the machine stays warm (30 s after a call).
set -euo pipefail
CARRY=${CARRY:-/root/rrec-carry}  # what the transfer legs copied
export RREC_CACHE=${RREC_CACHE:-/root/rrec-cache}  # the offline asset cache rrec.assets reads
RUNS=${RUNS:-/root/rrec-runs}  # training runs, kept for the next call
OUT=${OUT:-/tmp/rrec-out}  # the device tool's $OUT: at most 8 files come back
PY=${PY:-python3}
QUICK=${QUICK:-0}  # 1: tiny settings, to check the scripts on a CPU
export PYTHONPATH=$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$CARRY" "$RUNS" "$OUT"
