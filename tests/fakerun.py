"""A finished-looking OUT folder in a fraction of a second: real MP4s and a real database, no model.

The gallery, sheet and export tests need many shapes of batch (failed jobs, odd prompts, repeated
prompts); rendering each with the tiny model would cost seconds apiece. The runner's own wiring is
tested once with a real render in test_gallery.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from batchgen.outputs import metadata_index
from batchgen.outputs.atomic import sha256_file
from batchgen.job import Job
from batchgen.outputs.naming import safe_file_stem
from batchgen.store import Store
from batchgen.outputs.video import write_mp4

FRAMES, HEIGHT, WIDTH, FPS = 7, 32, 48, 8


def frames_for(n: int, frames: int = FRAMES) -> np.ndarray:
    """A clip whose every frame differs: brightness ramps with the frame, hue with `n`."""
    video = np.zeros((frames, HEIGHT, WIDTH, 3), np.uint8)
    for f in range(frames):
        video[f, :, :, 0] = (40 * n) % 256
        video[f, :, :, 1] = int(255 * f / max(frames - 1, 1))
        video[f, :, : WIDTH // 2, 2] = 200
    return video


def make_run(out: Path, specs: list[dict], template: str = "{job_id}") -> Store:
    """specs: dicts with prompt, seed, optional index, status ('done' | 'failed' | 'pending') and error."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store = Store(out)
    jobs = []
    for spec in specs:
        job = Job(prompt=spec["prompt"], seed=spec.get("seed", 0), num_frames=FRAMES, height=HEIGHT, width=WIDTH,
                  num_inference_steps=2, fps=FPS, source=f"jobs.yaml:{len(jobs) + 1}", index=spec.get("index", 0))
        name = template.format(prompt=job.prompt, index=job.index, seed=job.seed, job_id=job.job_id)
        jobs.append(job.with_(output_name=safe_file_stem(name)))
    store.add_jobs(jobs)
    for n, (job, spec) in enumerate(zip(jobs, specs)):
        status = spec.get("status", "done")
        if status == "failed":
            store.mark_failed(job.job_id, spec.get("error", "RuntimeError: boom"))
        elif status == "done":
            rel = f"videos/{job.output_name}.mp4"
            write_mp4(frames_for(n), out / rel, FPS)
            sha = sha256_file(out / rel)
            row = {"file_name": rel, "job_id": job.job_id, "prompt": job.prompt, "negative_prompt": "",
                   "seed": job.seed, "num_frames": FRAMES, "height": HEIGHT, "width": WIDTH,
                   "num_inference_steps": 2, "guidance_scale": 4.5, "fps": FPS, "model": "tiny",
                   "precision": "fp32", "render_seconds": 1.5 + n, "sha256": sha,
                   "finished_at": f"2026-01-01T00:00:{n:02d}.000+00:00"}
            store.mark_done(job.job_id, {"output_path": rel, "sha256": sha, "render_seconds": 1.5 + n,
                                         "profile": "cpu", "finished_at": row["finished_at"],
                                         "metadata": json.dumps(row, ensure_ascii=False)})
    metadata_index.rebuild(out, store)
    return store
