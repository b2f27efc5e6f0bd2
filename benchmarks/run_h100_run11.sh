#!/usr/bin/env bash
# H100 run 11: every profile again with the current code, in one session, as issue 3's table asks: 25 frames,
# a batch of 4 jobs x 4 steps per profile (part a: resident, fp8, int8, nf4, group-offload; part b: offload
# and the seed guide's diffusers recipes), and 163 frames (part c: offload, nf4, group-offload; 1 job x 2
# steps). Expandable CUDA segments on, as the CLI sets them. Writes $OUT/*.json and $OUT/log.txt.
set -o pipefail
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
B="python3 benchmarks/bench_profiles.py"
filter() { grep -v -e "truncated because" -e MatMul8bitLt -e "kept in float32" -e "it/s]"; }
case "${1:-a}" in
  a) $B --frames 25 --steps 4 --jobs 4 --recipes resident,fp8,int8,nf4,group-offload --tag run11-25f-a \
       --out "$OUT/h100-25f-run11a.json" 2>&1 | filter | tee -a "$OUT/log.txt" ;;
  b) $B --frames 25 --steps 4 --jobs 4 --seed-jobs 2 --recipes offload,seed-gpu,seed-offload-tiling,seed-int8-offload-tiling \
       --tag run11-25f-b --out "$OUT/h100-25f-run11b.json" 2>&1 | filter | tee -a "$OUT/log.txt" ;;
  c) $B --frames 163 --steps 2 --jobs 1 --recipes offload,nf4,group-offload --tag run11-163f \
       --out "$OUT/h100-163f-run11.json" 2>&1 | filter | tee -a "$OUT/log.txt" ;;
esac
