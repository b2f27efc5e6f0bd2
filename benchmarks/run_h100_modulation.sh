#!/usr/bin/env bash
# H100 run 4: precomputed AdaLN modulation (batchgen/modulation.py) and group offloading without host syncs.
# Frames with modulation on vs off must hash the same; peaks and s/step of resident, group-offload, fp8.
# Then the production int8/nf4 from_pretrained path on the GPU. Writes $OUT/*.json and $OUT/log.txt.
set -o pipefail
export PYTHONUNBUFFERED=1
B="python3 benchmarks/bench_profiles.py --steps 4 --jobs 3"
run() { echo "### $*" | tee -a $OUT/log.txt; env "$@" 2>&1 | grep -v -e "truncated because" -e MatMul8bitLt | tee -a $OUT/log.txt; }
run BATCHGEN_PRECOMPUTE_MODULATION=0 $B --frames 25 --recipes resident,fp8 --tag run4-25f-modulation-off --out $OUT/h100-25f-run4-modulation-off.json
run $B --frames 25 --recipes resident,fp8,group-offload --tag run4-25f --out $OUT/h100-25f-run4.json
run BATCHGEN_GROUP_OFFLOAD_RESIDENT_GIB=6 $B --frames 25 --recipes group-offload --tag run4-25f-go6 --out $OUT/h100-25f-run4-go6.json
run python3 benchmarks/gpu_quantized_load.py --json $OUT/gpu_quantized_load_h100.json
run $B --frames 163 --steps 2 --jobs 2 --recipes group-offload --tag run4-163f --out $OUT/h100-163f-run4.json
