#!/usr/bin/env bash
# The GPU check of issue 5 on one GPU (about 5 minutes on an H200): `speculators train
# --nproc-per-node 1` through its torchrun launch (one process: plain module, fused AdamW, bf16
# autocast, flex attention) on a Llama-3.1-8B-shaped random verifier and synthetic ShareGPT-length data;
# prints steady-state tokens/s and peak GPU memory as JSON (also saved to $OUT if set).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
LOG=${OUT:-/tmp}/bench_train_e2e.txt
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
"$PY" benchmarks/bench_train_e2e.py --size llama-3.1-8b --steps "${STEPS:-200}" \
    --nproc-per-node 1 --work-dir "${WORK_DIR:-/tmp/bench_train_e2e}" 2>&1 | tee "$LOG"
