#!/usr/bin/env bash
# H100 run 12: the int8 profile with precomputed modulation (its AdaLN layers' int8 weights kept on the CPU,
# batchgen/modulation.py) against the same with it off: frame hashes must match, the peak should drop.
# Writes $OUT/*.json and $OUT/log.txt.
set -o pipefail
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
B="python3 benchmarks/bench_profiles.py"
filter() { grep -v -e "truncated because" -e MatMul8bitLt -e "kept in float32" -e "it/s]"; }
$B --frames 25 --steps 4 --jobs 3 --recipes int8 --tag run12-int8-modulation --out "$OUT/h100-25f-run12-int8.json" 2>&1 | filter | tee -a "$OUT/log.txt"
BATCHGEN_PRECOMPUTE_MODULATION=0 $B --frames 25 --steps 4 --jobs 3 --recipes int8 --tag run12-int8-modulation-off \
  --out "$OUT/h100-25f-run12-int8-modulation-off.json" 2>&1 | filter | tee -a "$OUT/log.txt"
$B --frames 163 --steps 2 --jobs 1 --recipes int8 --tag run12-163f-int8 --out "$OUT/h100-163f-run12-int8.json" 2>&1 | filter | tee -a "$OUT/log.txt"
