#!/usr/bin/env bash
# Session 16, on one H200: batchgen's own memory profiles on Wan and LTX-Video. In order: the lead's GPU
# tests of the families (tests/test_family_gpu.py, when it exists); every (model, profile) of
# benchmarks/bench_family_profiles.py through the Renderer, the way a batch renders; then two end-to-end
# batches through the CLI, each rendered, verified and reported by e2e_report.py (per-video wall time
# from the database) with a one-line summary:
#   LTX-Video 2B, fast, 4 x 161 frames x 512x704 x 50 steps (benchmarks/manifests/e2e_family_ltx.yaml)
#   Wan 2.1 1.3B, resident, 2 x 81 frames x 480x832 x 50 steps (benchmarks/manifests/e2e_family_wan.yaml)
# With "recipes" in STAGES, diffusers' documented recipes for the same MODELS follow (bench_family_recipes.py),
# so a model's profiles and its recipes come from one call.
# All of it takes more than one 10-minute device call; STAGES picks the parts of this call, e.g.
#   BUDGET=360 STAGES="test bench" bash benchmarks/run_h200_session16_families.sh
#   STAGES="ltx wan" bash benchmarks/run_h200_session16_families.sh
# MANIFEST_LTX / MANIFEST_WAN replace the manifests (e2e_fast.sh's MANIFEST style). Needs .whl2 (diffusers,
# sqlite-utils and its needs) and .bnb (bitsandbytes 0.50.2 unpacked); the end-to-end batches also need
# imageio and imageio-ffmpeg (installed from .whl when it is there) to write their MP4s.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl2/*.whl || exit 1
for d in .whl .whl3; do  # .whl3: imageio-ffmpeg alone, for a call that carries no other wheels
  if compgen -G "$d/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $d/*.whl || exit 1
  fi
done
export PYTHONPATH=/tmp/site:$PWD/.bnb:$PWD PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor}
stages=" ${STAGES:-test bench ltx wan} "
log() { tee -a "$OUT/log.txt"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | log
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)" | log

# One batch: render MANIFEST into DIR, verify it, report it into $OUT/NAME.json, and say per-video wall time.
e2e() {
  local manifest=$1 dir=$2 name=$3
  echo "### batchgen render $manifest --out $dir" | log
  rm -rf "$dir"  # a fresh OUT: resuming an old one would render nothing and report the old batch
  local start end
  start=$(date +%s.%N)
  python3 -m batchgen render "$manifest" --out "$dir" --no-progress 2>&1 | grep -v "truncated because" | log
  end=$(date +%s.%N)
  python3 -m batchgen verify "$dir" 2>&1 | log
  python3 benchmarks/e2e_report.py "$dir" --command-seconds "$(python3 -c "print($end - $start)")" > "$OUT/$name.json" || return 1
  # The per-video render seconds the metadata index recorded, beside the database's claim-to-done times.
  python3 - "$OUT/$name.json" "$dir/metadata.jsonl" "$name" <<'EOF' | log
import json, sys
report = json.load(open(sys.argv[1]))
rows = [json.loads(line) for line in open(sys.argv[2]) if line.strip()]
render = sum(r["render_seconds"] for r in rows) / len(rows)
print(f"{sys.argv[3]}: {report['videos']} videos, per video {report['per_video_first_claim_to_last_done_s']} s "
      f"(claim to done), {report['per_video_after_the_first_s']} s after the first, "
      f"{report.get('per_video_whole_command_s')} s with loading; metadata.jsonl: {len(rows)} rows, "
      f"render {render:.1f} s/video, {rows[0]['seconds_per_step']:.3f} s/step, profile {rows[0]['profile']}")
EOF
}

if [[ $stages == *" test "* ]]; then
  if [ -f tests/test_family_gpu.py ]; then
    python3 -m pytest -q -p no:cacheprovider tests/test_family_gpu.py -rs 2>&1 | tail -25 | log
  else
    echo "tests/test_family_gpu.py: not there yet, skipped" | log
  fi
fi
if [[ $stages == *" bench "* ]]; then
  # MODELS / PROFILES / BENCH_NAME split the rows over calls.
  python3 benchmarks/bench_family_profiles.py ${MODELS:+--models "$MODELS"} ${PROFILES:+--profiles "$PROFILES"} \
    --out "$OUT/${BENCH_NAME:-family_profiles_h200}.json" --budget-s "${BUDGET:-420}" 2>&1 \
    | grep -v -e "it/s]" -e "s/it]" | log
fi
if [[ $stages == *" recipes "* ]]; then
  # diffusers' documented recipes for the same MODELS, in the same call as their profiles (RECIPES to pick).
  python3 benchmarks/bench_family_recipes.py ${MODELS:+--models "$MODELS"} ${RECIPES:+--recipes "$RECIPES"} \
    --out "$OUT/${RECIPES_NAME:-family_recipes_h200}.json" --budget-s "${RECIPE_BUDGET:-480}" 2>&1 \
    | grep -v -e "it/s]" -e "s/it]" -e "should be kept in float32" | log
fi
if [[ $stages == *" ltx "* || $stages == *" wan "* ]] && ! python3 -c "import imageio, imageio_ffmpeg" 2>/dev/null; then
  echo "imageio / imageio-ffmpeg missing: the end-to-end batches cannot write MP4s, skipped" | log
  exit 1
fi
[[ $stages != *" ltx "* ]] || e2e "${MANIFEST_LTX:-benchmarks/manifests/e2e_family_ltx.yaml}" /tmp/e2e-ltx e2e_family_ltx_h200
[[ $stages != *" wan "* ]] || e2e "${MANIFEST_WAN:-benchmarks/manifests/e2e_family_wan.yaml}" /tmp/e2e-wan e2e_family_wan_h200
