#!/usr/bin/env bash
# H100 run 5: the end-to-end fast batch again, now with write-behind MP4 encoding (batchgen/runner.py), and
# the profiles' setup time with precomputed modulation's single pinned buffer. Writes $OUT/*.json, $OUT/log.txt.
set -o pipefail
bash "$(dirname "$0")/e2e_fast.sh" e2e_fast_h100_run5.json
echo "### bench_profiles resident,fp8 (setup with one pinned buffer)" | tee -a "$OUT/log.txt"
python3 benchmarks/bench_profiles.py --steps 4 --jobs 3 --frames 25 --recipes resident,fp8 --tag run5-25f --out "$OUT/h100-25f-run5.json" 2>&1 | grep -v "truncated because" | tee -a "$OUT/log.txt"
