#!/usr/bin/env bash
# H100 run 3: an end-to-end batch through the CLI (profile fast, realsize model, 4 x 25 frames, 50 steps),
# then the scale-out benchmark on the one GPU this machine has (tiny model). Writes $OUT/*.json, $OUT/log.txt.
set -o pipefail
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor
log() { tee -a "$OUT/log.txt"; }
echo "### batchgen render benchmarks/manifests/e2e_realsize_25f.yaml --profile fast" | log
start=$(date +%s.%N)
python3 -m batchgen render benchmarks/manifests/e2e_realsize_25f.yaml --profile fast --out /tmp/e2e_fast --no-progress 2>&1 | grep -v "truncated because" | log
end=$(date +%s.%N)
python3 benchmarks/e2e_report.py /tmp/e2e_fast --command-seconds "$(python3 -c "print($end - $start)")" | tee "$OUT/e2e_fast_h100.json" | log
echo "### bench_scaling --gpus 0 (tiny model)" | log
python3 benchmarks/bench_scaling.py --gpus 0 --jobs-per-gpu 4 --frames 13 --height 64 --width 96 --steps 8 --json "$OUT/scaling_1gpu_tiny_h100.json" 2>&1 | log
