#!/usr/bin/env bash
# Recipe that trained the demo model package models/lkseg-demo-abdomen (on one GPU machine).
#   1. write an MSD dataset of varied synthetic phantoms (Testing/benchmarks/phantom_dataset.py)
#   2. lkseg train DATASET OUT --preset cascade ... (coarse 6 mm locator + fine 1.5 mm segmenter)
# Variables (defaults in brackets): SEEDS [0-79], WORK [/tmp/lkseg-demo], WORKERS [nproc-1],
# FINE_MIN / COARSE_MIN wall-time budgets in minutes [6 / 1.2], ITERS [100], EXTRA (more lkseg train args).
set -euo pipefail
cd "$(dirname "$0")/../.."
SEEDS=${SEEDS:-0-79}
WORK=${WORK:-/tmp/lkseg-demo}
WORKERS=${WORKERS:-$(( $(nproc) - 1 ))}
FINE_MIN=${FINE_MIN:-6}
COARSE_MIN=${COARSE_MIN:-1.2}
ITERS=${ITERS:-100}
mkdir -p "$WORK"
t0=$(date +%s)
if [ ! -f "$WORK/data/dataset.json" ]; then
  python3 Testing/benchmarks/phantom_dataset.py "$WORK/data" --seeds "$SEEDS" --workers "$WORKERS"
fi
echo "dataset ready after $(( $(date +%s) - t0 )) s"
python3 -m lkseg -v train "$WORK/data" "$WORK/model" --preset cascade --id lkseg-demo-abdomen --version 0.1.0 \
  --task "Liver, liver tumours, kidneys, kidney tumours and cysts, spleen on abdominal CT (DEMO: trained on synthetic phantoms)" \
  --license Apache-2.0 --workers "$WORKERS" --iters-per-epoch "$ITERS" --epochs 1000 --coarse-epochs 1000 \
  --max-minutes "$FINE_MIN" --coarse-max-minutes "$COARSE_MIN" --weights-dtype float16 --val-fraction 0.1 ${EXTRA:-}
echo "trained after $(( $(date +%s) - t0 )) s"
