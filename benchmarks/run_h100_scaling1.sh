#!/usr/bin/env bash
# H100 run 4: the quick start on the GPU, then the scale-out benchmark on this machine's one GPU (tiny model).
set -o pipefail
export PYTHONUNBUFFERED=1
log() { tee -a "$OUT/log.txt"; }
echo "### batchgen render jobs/quickstart.yaml (GPU)" | log
python3 -m batchgen render jobs/quickstart.yaml --out /tmp/quick --no-progress 2>&1 | log
python3 -m batchgen status /tmp/quick --json | log
echo "### bench_scaling --gpus 0 (tiny model)" | log
python3 benchmarks/bench_scaling.py --gpus 0 --jobs-per-gpu 4 --frames 13 --height 64 --width 96 --steps 8 --json "$OUT/scaling_1gpu_tiny_h100.json" 2>&1 | log
