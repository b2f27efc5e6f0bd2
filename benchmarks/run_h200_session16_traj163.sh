#!/usr/bin/env bash
# Issue 17, session 16, one H200 call: the 163-frame trajectory from the same noise for the exact path,
# `fast` and the `fp8-attn` recipe (fp8attn-smoothv+fp8mm), final latent rel. L2 and decoded PSNR
# (benchmarks/bench_fp8_attention.py, stage traj). 24 steps, not 64: the device time left (the exact path
# alone takes ~7.7 s a step at 163 frames). Needs .whl2 (diffusers, sqlite-utils) and .whl (fa3-fwd).
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl2/*.whl .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor
python3 benchmarks/bench_fp8_attention.py --stages traj --traj "163:${STEPS:-24}" \
  --traj-variants exact,fast,fp8attn-smoothv+fp8mm --budget-s "${BUDGET:-500}" --out "$OUT/traj163_h200.json" 2>&1 \
  | grep -v -e "it/s]" -e "s/it]" | tee -a "$OUT/log.txt"
