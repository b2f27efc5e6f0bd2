#!/usr/bin/env bash
# H100 run 3: an end-to-end batch through the CLI (profile fast, realsize model, 4 x 25 frames, 50 steps),
# then the scale-out benchmark on the one GPU this machine has (tiny model). Writes $OUT/*.json, $OUT/log.txt.
set -o pipefail
bash "$(dirname "$0")/e2e_fast.sh" e2e_fast_h100.json
echo "### bench_scaling --gpus 0 (tiny model)" | tee -a "$OUT/log.txt"
python3 benchmarks/bench_scaling.py --gpus 0 --jobs-per-gpu 4 --frames 13 --height 64 --width 96 --steps 8 --json "$OUT/scaling_1gpu_tiny_h100.json" 2>&1 | tee -a "$OUT/log.txt"
