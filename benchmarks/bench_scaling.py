"""Scale-out benchmark: jobs per hour with 1 worker and with N workers on one host.

Runs `batchgen render` twice on the same manifest (fresh OUT each time): once with one worker, once
with N (`--gpus LIST` on a GPU host, `--workers N` on the CPU), then reads the job timestamps from each
run's database. Two rates are printed for each run:
  - steady rate: jobs / (last finish - first start), which leaves out start-up (model loading);
  - wall rate:   jobs / whole command time, start-up included.
Efficiency = rate(N) / (N * rate(1)). Also checks every job was done exactly once and prints peak VRAM
per worker where the jobs recorded it.

  python benchmarks/bench_scaling.py --workers 2 --jobs 8                       # CPU, tiny model
  python benchmarks/bench_scaling.py --gpus all --model realsize --frames 25 --steps 50 --jobs-per-gpu 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_manifest(folder: Path, args, n_jobs: int) -> Path:
    lines = [
        f"model: {args.model}",
        "defaults:",
        f"  num_frames: {args.frames}",
        f"  height: {args.height}",
        f"  width: {args.width}",
        f"  num_inference_steps: {args.steps}",
        "jobs:",
    ]
    lines += [f'  - {{prompt: "scaling benchmark prompt number {i}", seed: {i}}}' for i in range(n_jobs)]
    if args.profile:
        lines.insert(1, f"profile: {args.profile}")
    path = folder / "scaling.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(manifest: Path, out: Path, extra: list[str]) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "batchgen", "render", str(manifest), "--out", str(out), "--no-progress", *extra],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"render failed with {proc.returncode}")
    conn = sqlite3.connect(out / "batchgen.db")
    rows = conn.execute(
        "select status, attempts, started_at, finished_at, worker, peak_vram_allocated from jobs"
    ).fetchall()
    conn.close()
    parse = lambda s: datetime.datetime.fromisoformat(s).timestamp()  # noqa: E731
    starts = [parse(r[2]) for r in rows]
    ends = [parse(r[3]) for r in rows]
    span = max(ends) - min(starts)
    peaks: dict[str, float] = {}
    for r in rows:
        if r[5]:
            key = r[4].rsplit(":", 1)[-1] if r[4] else "main"
            peaks[key] = max(peaks.get(key, 0.0), r[5] / 2**30)
    return {
        "jobs": len(rows),
        "done_once": all(r[0] == "done" and r[1] == 1 for r in rows),
        "wall_s": round(wall, 2),
        "steady_span_s": round(span, 2),
        "steady_jobs_per_hour": round(len(rows) / span * 3600, 1),
        "wall_jobs_per_hour": round(len(rows) / wall * 3600, 1),
        "workers_seen": len({r[4] for r in rows}),
        "peak_vram_gib_per_worker": {k: round(v, 2) for k, v in sorted(peaks.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", help="GPU list for the N-worker run ('all' or 0,1,...)")
    parser.add_argument("--workers", type=int, default=2, help="CPU workers for the N-worker run")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--profile")
    parser.add_argument("--frames", type=int, default=7)
    parser.add_argument("--height", type=int, default=32)
    parser.add_argument("--width", type=int, default=48)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=8, help="jobs in the N-worker run (CPU)")
    parser.add_argument("--jobs-per-gpu", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    if args.gpus:
        from batchgen.run.local_pool import parse_gpus

        gpus = parse_gpus(args.gpus)
        n, n_jobs = len(gpus), args.jobs_per_gpu * len(gpus)
        single, multi = ["--gpus", gpus[0]], ["--gpus", ",".join(gpus)]
        one_jobs = args.jobs_per_gpu
    else:
        n, n_jobs = args.workers, args.jobs
        single, multi = ["--workers", "1", "--device", "cpu"], ["--workers", str(n)]
        one_jobs = max(2, n_jobs // n)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "one").mkdir()
        (tmp / "many").mkdir()
        one = run(write_manifest(tmp / "one", args, one_jobs), tmp / "one" / "out", single)
        many = run(write_manifest(tmp / "many", args, n_jobs), tmp / "many" / "out", multi)
    result = {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "workers": n,
        "settings": {k: getattr(args, k) for k in ("model", "profile", "frames", "height", "width", "steps")},
        "one_worker": one,
        "n_workers": many,
        "efficiency_steady": round(many["steady_jobs_per_hour"] / (n * one["steady_jobs_per_hour"]), 3),
        "efficiency_wall": round(many["wall_jobs_per_hour"] / (n * one["wall_jobs_per_hour"]), 3),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
