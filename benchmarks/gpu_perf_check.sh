#!/usr/bin/env bash
# Issue 8's measurements on one GPU in one go (about 12 minutes on an H200, much of it
# torch.compile): training pure steps (8192 and 16384 tokens/row, 8B shape; the 70B-shaped
# draft for memory), `speculators train` end to end, datagen (forward-only ceiling, synchronous
# and pipelined loops to local disk and /dev/shm, compiled as datagen runs; then eager). Each
# part has its own time limit, so one that hangs does not cost the others; every output lands
# in $OUT.
# Groups, for machines that limit one command's time: `steps` (~5 min warm, up to 13 min with a
# cold compile cache), `e2e` (~2.5 min),
# `datagen` (~5 min); no argument runs all three.
#   OUT=/some/dir bash benchmarks/gpu_perf_check.sh steps
set -uo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python}
OUT=${OUT:-/tmp/gpu_perf_check}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
part() {  # part NAME SECONDS COMMAND...: run, keep the output, report a timeout
    local name=$1 limit=$2
    shift 2
    echo "== $name"
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    tail -n 8 "$OUT/$name.txt"
    [ $rc -eq 0 ] || echo "== $name: exit $rc (124: over its ${limit}s limit)"
}
want() { [ -z "${GROUPS_WANTED}" ] || [[ " ${GROUPS_WANTED} " == *" $1 "* ]]; }
GROUPS_WANTED="$*"
T="$PY bench_train.py --steps 10"
if want steps; then
    part train-8192 240 $T --config llama-3.1-8b --total-seq-len 8192
    part train-16384 300 $T --config llama-3.1-8b --total-seq-len 16384
    part train-70b-8192 240 $T --config llama-3.1-70b --total-seq-len 8192
fi
if want e2e; then
    part train-e2e 200 "$PY" bench_train_e2e.py --size llama-3.1-8b --steps 30 --warmup 10 \
        --real-samples 48
fi
if want datagen; then
    part datagen 330 "$PY" bench_datagen.py --config llama-3.1-8b --device cuda \
        --num-samples 1024 --seq-length 2048 --batch-size 16 --length-mix sharegpt \
        --paths capture sync pipelined --out-dir /dev/shm . --ablate-compile
fi
