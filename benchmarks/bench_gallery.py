"""How long OUT/index.html takes to regenerate, and how big it gets, for batches of various sizes.

    python benchmarks/bench_gallery.py [N ...]

Builds a database of N finished jobs (no videos: the gallery only reads the database) and times
write_gallery, which the runner calls after every job up to gallery.BIG_BATCH jobs.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from batchgen.outputs import gallery
from batchgen.job import Job
from batchgen.store import Store


def build(out: Path, n: int) -> Store:
    store = Store(out)
    jobs = [Job(prompt=f"prompt number {i}: a red fox running through fresh snow at dawn, cinematic", seed=i,
                output_name=f"job-{i:06d}") for i in range(n)]
    store.add_jobs(jobs)
    with store.db.conn:
        for i, job in enumerate(jobs):
            row = {"file_name": f"videos/{job.output_name}.mp4", "job_id": job.job_id, "prompt": job.prompt}
            store.db["jobs"].update(job.job_id, {
                "status": "done" if i % 50 else "failed", "output_path": row["file_name"], "render_seconds": 90.0,
                "finished_at": f"2026-01-01T00:00:00.{i % 1000:03d}+00:00", "metadata": json.dumps(row),
                "error": None if i % 50 else "OutOfMemoryError: CUDA out of memory"})
    return store


def main(sizes: list[int]) -> None:
    print(f"{'jobs':>8} {'write_gallery s':>16} {'index.html MiB':>15}")
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            store = build(out, n)
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                path = gallery.write_gallery(out, store)
                best = min(best, time.perf_counter() - t)
            print(f"{n:>8} {best:>16.3f} {path.stat().st_size / 2**20:>15.2f}")
            store.close()


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [100, 2000, 10000, 50000])
