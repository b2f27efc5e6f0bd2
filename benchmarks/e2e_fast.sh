#!/usr/bin/env bash
# The end-to-end batch through the CLI (profile $2, default fast; realsize model, 4 x 25 frames, 50 steps),
# reported by e2e_report.py into $OUT/$1 (default e2e_fast_h100.json) and appended to $OUT/log.txt.
set -o pipefail
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor}
name=${1:-e2e_fast_h100.json}
profile=${2:-fast}
log() { tee -a "$OUT/log.txt"; }
echo "### batchgen render ${MANIFEST:-benchmarks/manifests/e2e_realsize_25f.yaml} --profile $profile" | log
start=$(date +%s.%N)
python3 -m batchgen render ${MANIFEST:-benchmarks/manifests/e2e_realsize_25f.yaml} --profile "$profile" --out "/tmp/e2e_$profile" --no-progress 2>&1 | grep -v "truncated because" | log
end=$(date +%s.%N)
python3 benchmarks/e2e_report.py "/tmp/e2e_$profile" --command-seconds "$(python3 -c "print($end - $start)")" | tee "$OUT/$name" | log
