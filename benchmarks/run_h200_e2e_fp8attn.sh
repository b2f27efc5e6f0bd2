#!/usr/bin/env bash
# Issue 17, end to end through the CLI on one H200 (one device call): the same 4 x 25 frames x 50 steps
# batch (benchmarks/manifests/e2e_realsize_25f.yaml, `model: realsize`) rendered by `fast` and then by
# `fp8-attn`, each in a fresh OUT, each reported by e2e_report.py (per-video wall time from the database).
# FRAMES=163 MANIFEST=benchmarks/manifests/e2e_realsize_163f.yaml PROFILES=fp8-attn: the long video, one
# profile a call (a 163-frame x 64-step video with `fast` takes ~7 of the call's 10 minutes).
# Needs the wheels in .whl (diffusers, sqlite-utils and its needs, imageio + imageio-ffmpeg, fa3-fwd).
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$OUT/log.txt"
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)" | tee -a "$OUT/log.txt"
[ -n "$SKIP_DOCTOR" ] || python3 -m batchgen doctor --model realsize 2>&1 | tail -25 | tee -a "$OUT/log.txt"
for profile in ${PROFILES:-fast fp8-attn}; do
  bash benchmarks/e2e_fast.sh "e2e_${FRAMES:-25}f_${profile}_h200.json" "$profile"
done
