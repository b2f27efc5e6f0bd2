#!/usr/bin/env bash
# Session 15, one H200 call: the NF4 pre-quantized transformer test (needs a GPU: diffusers' bitsandbytes
# quantizer refuses without one), then the Wan / LTX-Video recipes of diffusers' docs at published size
# beside batchgen's encode-first lever (benchmarks/bench_family_recipes.py). Needs .whl2 (diffusers,
# sqlite-utils and its needs) and .bnb (bitsandbytes 0.50.2 unpacked, CUDA 13.0 and CPU libraries only).
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl2/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/.bnb:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$OUT/log.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_checkpoints.py -k nf4 -rs 2>&1 | tail -15 | tee -a "$OUT/log.txt"
python3 benchmarks/bench_family_recipes.py --steps 3 --budget-s "${BUDGET:-330}" --out "$OUT/family_recipes_h200.json" 2>&1 \
  | grep -v -e "it/s]" -e "s/it]" | tee -a "$OUT/log.txt"
