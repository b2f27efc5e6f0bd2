#!/usr/bin/env bash
# Second H100 run: decode chunking, group-offload residency, 163 frames. Writes $OUT/*.json and $OUT/log.txt.
set -o pipefail
B="python3 benchmarks/bench_profiles.py"
run() { echo "### $*" | tee -a $OUT/log.txt; env "$@" 2>&1 | grep -v -e "truncated because" -e MatMul8bitLt | tee -a $OUT/log.txt; }
run BATCHGEN_DECODE_LATENT_FRAMES=1 BATCHGEN_GROUP_OFFLOAD_RESIDENT_GIB=6.5 $B --frames 25 --steps 4 --jobs 3 --recipes resident,group-offload,fp8,nf4 --tag run2-25f --out $OUT/results-h100-25f-run2.json
run BATCHGEN_DECODE_LATENT_FRAMES=1 BATCHGEN_GROUP_OFFLOAD_RESIDENT_GIB=6.5 $B --frames 163 --steps 2 --jobs 2 --recipes group-offload,nf4 --tag run2-163f --out $OUT/results-h100-163f.json
run BATCHGEN_DECODE_LATENT_FRAMES=0 BATCHGEN_GROUP_OFFLOAD_RESIDENT_GIB=6.5 $B --frames 163 --steps 2 --jobs 1 --recipes group-offload --tag run2-163f-unchunked-decode --out $OUT/results-h100-163f-unchunked.json
