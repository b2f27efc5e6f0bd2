#!/usr/bin/env bash
# H100 run 7: s/step (hence MFU) of the profiles not yet measured at long videos: resident, fp8 and int8 at
# 163 frames (1 job, 2 steps), and fp8-fast beside fast at 85 frames. Writes $OUT/*.json and $OUT/log.txt.
set -o pipefail
export PYTHONUNBUFFERED=1
python3 benchmarks/bench_speed.py --stages steps --variants compiled,fp8-compiled --frames 85 --steps 3 --warmup 1 \
  --out "$OUT/speed_fp8_85f_h100.json" 2>&1 | grep -v -e "truncated because" -e "autocast" | tee -a "$OUT/log.txt"
python3 benchmarks/bench_profiles.py --frames 163 --steps 2 --jobs 1 --recipes resident,fp8,int8 --tag run7-163f \
  --out "$OUT/h100-163f-run7.json" 2>&1 | grep -v -e "truncated because" -e MatMul8bitLt | tee -a "$OUT/log.txt"
