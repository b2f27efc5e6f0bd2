#!/usr/bin/env bash
# H100 run 8: int8 as from_pretrained makes it (LLM.int8 outlier threshold 6.0, diffusers' default) beside
# the threshold 0.0 that runs 1-4 measured, and resident at 163 frames with expandable CUDA segments.
set -o pipefail
export PYTHONUNBUFFERED=1
B="python3 benchmarks/bench_profiles.py"
run() { echo "### $*" | tee -a "$OUT/log.txt"; env "$@" 2>&1 | grep -v -e "truncated because" -e MatMul8bitLt -e "kept in float32" | tee -a "$OUT/log.txt"; }
run BATCHGEN_BENCH_INT8_THRESHOLD=6.0 $B --frames 25 --steps 4 --jobs 2 --recipes int8,resident --tag run8-int8-t6 --out "$OUT/h100-25f-run8-int8-t6.json"
run BATCHGEN_BENCH_INT8_THRESHOLD=0.0 $B --frames 25 --steps 4 --jobs 2 --recipes int8 --tag run8-int8-t0 --out "$OUT/h100-25f-run8-int8-t0.json"
run PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True $B --frames 163 --steps 2 --jobs 1 --recipes resident --tag run8-163f-expandable --out "$OUT/h100-163f-run8-expandable.json"
