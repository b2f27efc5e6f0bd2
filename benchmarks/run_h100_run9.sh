#!/usr/bin/env bash
# H100 run 9: the int8 profile with batchgen's kernel (int8 weights dequantized per layer, bf16 multiplies;
# batchgen/int8_linear.py) instead of bitsandbytes' LLM.int8. Part "a": from_pretrained int8/nf4 on the GPU,
# output distance from bf16 per int8 kernel, and int8 beside resident at 25 frames. Part "b": int8 at 163
# frames. Writes $OUT/*.json and $OUT/log.txt.
set -o pipefail
export PYTHONUNBUFFERED=1
part="${1:-a}"
filter() { grep -v -e "truncated because" -e MatMul8bitLt -e "kept in float32"; }
if [ "$part" = a ]; then
  python3 benchmarks/gpu_quantized_load.py --json "$OUT/gpu_quantized_load_h100_run9.json" 2>&1 | filter | tee -a "$OUT/log.txt"
  python3 benchmarks/int8_fidelity.py --layers 4 --frames 25 --json "$OUT/int8_fidelity_h100.json" 2>&1 | filter | tee -a "$OUT/log.txt"
  python3 benchmarks/bench_profiles.py --frames 25 --steps 4 --jobs 2 --recipes int8,resident --tag run9-int8-dequant \
    --out "$OUT/h100-25f-run9-int8-dequant.json" 2>&1 | filter | tee -a "$OUT/log.txt"
else
  python3 benchmarks/bench_profiles.py --frames 163 --steps 2 --jobs 1 --recipes int8 --tag run9-163f-int8-dequant \
    --out "$OUT/h100-163f-run9-int8-dequant.json" 2>&1 | filter | tee -a "$OUT/log.txt"
fi
