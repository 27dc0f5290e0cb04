#!/usr/bin/env bash
# Choi et al.'s comparison on Fashion-MNIST (MLP), sized for a 2-core CPU (under an hour).
# Running it again resumes; it was first run with --trials 8 and then extended to 20.
# Usage: benchmarks/choi_comparison.sh [OUT_DIR]   (default runs/choi_fmnist_mlp)
# Then: .venv/bin/natgrad report OUT_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/choi_fmnist_mlp}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
exec nice -n 10 .venv/bin/python -m natgrad.cli compare \
    --workload fmnist_mlp \
    --optimizers sgd,momentum,nesterov,rmsprop,adam,nadam \
    --space restricted,full \
    --trials ${TRIALS:-20} --steps 800 --seeds 3 --workers 2 \
    --out "$OUT"
