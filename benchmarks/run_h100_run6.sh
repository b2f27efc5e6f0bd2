#!/usr/bin/env bash
# H100 run 6: the fp8-fast profile (fp8 multiplies in the block linears, compiled): s/step and MFU beside the
# bf16 compiled path at 25 and 163 frames, its output difference from diffusers, then an end-to-end batch.
set -o pipefail
export PYTHONUNBUFFERED=1
python3 benchmarks/bench_speed.py --stages steps --variants diffusers,compiled,fp8-compiled --variants-at "163:compiled+fp8-compiled" \
  --frames 25,163 --steps 3 --warmup 1 --budget-s 300 --out "$OUT/speed_fp8_h100.json" 2>&1 | grep -v -e "truncated because" -e "autocast" | tee -a "$OUT/log.txt"
bash "$(dirname "$0")/e2e_fast.sh" e2e_fp8fast_h100.json fp8-fast
