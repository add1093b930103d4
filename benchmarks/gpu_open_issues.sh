#!/usr/bin/env bash
# The one-GPU measurements of issues 16-19, in three groups that each fit one 10-minute device
# call (every part time-limited and skipped when the group's deadline is near; logs and JSON
# results packed into $OUT/GROUP.tgz, a summary in $OUT/GROUP-summary.txt):
#   train  `speculators train` end to end on the Llama-3.1-8B shape (bench_train_e2e.py): the
#          work of the defaults before issue 16 (lm_head trained, full-vocab metrics every step)
#          against docs/performance.md's 59,210 tokens/s (issue 18: one GPU not slower); today's
#          defaults; then every sample its own file, evicted from the page cache, bf16 and fp8
#          (issue 19: the data wait)
#   peer   the pure step against speculators 0.9.0's (../shared/peer), interleaved, two rounds:
#          the peer's work (lm_head frozen, draft-vocab accuracy every step) and our defaults;
#          then rows of 16384 (needs the peer wheels and step script in .peer-whl)
#   final  the peer's step and ours on its work, interleaved, two rounds; our defaults' pure step
#          and end to end (page cache); the GPU tests with what time is left
#   e2e    the pure step (defaults), then `speculators train` end to end on the same shape: files
#          in the page cache, then read from the disk in fp8 and bf16 (issue 16: >= 90%)
#   profile  the pure step's kernel table (the peer's work), then rows of 16384 alone, with
#          recompiles logged and Python stacks every 60 s
#   vllm   `speculators regenerate` with vLLM and with transformers on SmolLM2 and ShareGPT rows,
#          kill -9 and resume (issue 17); datagen bf16 against fp8 on the 8B shape (issue 19)
#          (needs vLLM and SmolLM2 set up: SMOLLM2, DATA)
#   OUT=/tmp/o bash benchmarks/gpu_open_issues.sh train
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
GROUP=${1:?give a group: train, peer or vllm}
OUT=${OUT:-/tmp/gpu_open_issues}
WORK=${WORK:-/root/gpu_work}
LOGS=$WORK/logs-$GROUP
DEADLINE=$(( $(date +%s) + ${BUDGET_S:-560} ))
mkdir -p "$OUT" "$LOGS"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
part() {  # part NAME SECONDS COMMAND...: run with a time limit (cut to the deadline), keep the log
    local name=$1 limit=$2 left=$(( DEADLINE - $(date +%s) ))
    shift 2
    (( left < limit )) && limit=$left
    if (( limit < 30 )); then echo "== $name: skipped, ${left}s left" | tee -a "$OUT/$GROUP-summary.txt"; return; fi
    echo "== $name ($(date +%T), limit ${limit}s)"
    timeout -s KILL "$limit" "$@" > "$LOGS/$name.txt" 2>&1
    local rc=$?
    { echo "== $name: exit $rc"; grep -E '^\{' "$LOGS/$name.txt" | tail -n 3; } | tee -a "$OUT/$GROUP-summary.txt"
    [ $rc -eq 0 ] || tail -n 15 "$LOGS/$name.txt"
}
peer_setup() {  # speculators 0.9.0 and its wheels into /tmp/peer; PEER runs its step script
    local p=/tmp/peer
    "$PY" -m pip install -q --no-index --no-deps --target $p-deps $(ls .peer-whl/*.whl | grep -v '/speculators-')
    "$PY" -m pip install -q --no-index --no-deps --target $p .peer-whl/speculators-*.whl
    # their package is also named speculators: its own PYTHONPATH, never ours beside it
    PEER="env PYTHONPATH=$p:$p-deps LOSS_IMPL=eager OUT=$LOGS $PY .peer-whl/speculators090_train_step.py"
}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/$GROUP-summary.txt"
df -h "$WORK" /dev/shm | tee -a "$OUT/$GROUP-summary.txt"

if [ "$GROUP" = train ]; then
    E="$PY benchmarks/bench_train_e2e.py --size llama-3.1-8b --work-dir $WORK/e2e"
    part e2e-work-before-16 200 $E --steps 30 --warmup 10 --real-samples 48 \
        --train-args "--train-lm-head --metrics-every 1"
    part e2e-defaults 130 $E --steps 30 --warmup 10 --real-samples 48
    part e2e-cold-bf16 130 $E --steps 40 --warmup 10 --cold
    rm -rf "$WORK"/e2e/llama-3.1-8b/data-*-bf16
    part e2e-cold-fp8 130 $E --steps 40 --warmup 10 --cold --hidden-states-dtype fp8
fi
if [ "$GROUP" = peer ]; then
    peer_setup
    T="$PY benchmarks/bench_train.py --config llama-3.1-8b"
    for r in 1 2; do
        part peer-8192-$r 180 env T=8192 $PEER
        prof=(); [ $r = 2 ] && prof=(--profile "$LOGS/prof-peer-work-8192.txt")
        part ours-peer-work-8192-$r 150 $T --total-seq-len 8192 --steps 20 --metrics-every 1 --accuracy-over draft "${prof[@]}"
        part ours-defaults-8192-$r 120 $T --total-seq-len 8192 --steps 20
    done
    part ours-defaults-16384 150 $T --total-seq-len 16384 --steps 10
    part gpu-tests 120 "$PY" -m pytest -q -x -p no:cacheprovider -m "gpu" tests/unit/train tests/integration/test_train_gpu.py
fi
if [ "$GROUP" = final ]; then
    peer_setup
    T="$PY benchmarks/bench_train.py --config llama-3.1-8b --total-seq-len 8192 --steps 20"
    for r in 1 2; do
        part peer-8192-$r 150 env T=8192 $PEER
        part ours-peer-work-8192-$r 80 $T --metrics-every 1 --accuracy-over draft
    done
    part pure-defaults-8192 70 $T
    part e2e-defaults 150 "$PY" benchmarks/bench_train_e2e.py --size llama-3.1-8b \
        --work-dir $WORK/e2e --steps 40 --warmup 10 --real-samples 48
    part gpu-tests 100 "$PY" -m pytest -q -x -p no:cacheprovider -m "gpu" tests/unit/train tests/integration/test_train_gpu.py
fi
if [ "$GROUP" = e2e ]; then
    E="$PY benchmarks/bench_train_e2e.py --size llama-3.1-8b --work-dir $WORK/e2e"
    part pure-defaults-8192 110 $PY benchmarks/bench_train.py --config llama-3.1-8b --total-seq-len 8192 --steps 20
    part e2e-defaults 150 $E --steps 40 --warmup 10 --real-samples 48
    part e2e-cold-fp8 170 $E --steps 40 --warmup 10 --cold --hidden-states-dtype fp8
    part e2e-cold-bf16 150 $E --steps 40 --warmup 10 --cold
fi
if [ "$GROUP" = profile ]; then
    T="$PY benchmarks/bench_train.py --config llama-3.1-8b"
    part prof-peer-work-8192 170 $T --total-seq-len 8192 --steps 10 --metrics-every 1 \
        --accuracy-over draft --profile "$LOGS/prof-peer-work-8192.txt"
    part rows-16384 360 env TORCH_LOGS=recompiles,graph_breaks $T --total-seq-len 16384 \
        --steps 5 --dump-stacks-every 60
fi
if [ "$GROUP" = vllm ]; then
    part regenerate 300 "$PY" benchmarks/bench_regenerate.py --model "$SMOLLM2" --data "$DATA" \
        --backends vllm transformers --max-samples 32 --max-new-tokens 256 --seq-length 1024 \
        --batch-size 8 --kill-after 120 --work-dir "$WORK/regen" --json "$LOGS/regenerate.json"
    cp "$WORK/regen/vllm.jsonl.meta.json" "$LOGS/" 2>/dev/null
    part datagen-fp8 240 "$PY" benchmarks/bench_datagen_processes.py --shape llama-3.1-8b \
        --tokenizer "$SMOLLM2" --nproc 1 --hidden-states-dtype bf16 fp8 --num-samples 256 \
        --seq-length 2048 --batch-size 16 --work-dir "$WORK/datagen" --json "$LOGS/datagen.json"
fi
tar czf "$OUT/$GROUP.tgz" -C "$LOGS" .
