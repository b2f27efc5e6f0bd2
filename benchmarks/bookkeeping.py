"""What the queue costs per job, without rendering: a 10,000-job manifest validated, then every job claimed,
given its output path, marked done with a real-sized metadata row and appended to the index.

    python benchmarks/bookkeeping.py            # 10,000 jobs
    python benchmarks/bookkeeping.py --jobs 2000

Prints seconds for the manifest and milliseconds per job for each bookkeeping step; the target is under
5 ms per job in all. tests/test_load.py runs the same and checks the result, not the time.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEEDS = 5

# A metadata row as a tiny-model render writes it (fingerprint included): about 2.2 kB of JSON.
ROW_TEMPLATE = {
    "file_name": "", "job_id": "", "prompt": "", "negative_prompt": "", "seed": 0, "num_frames": 7,
    "height": 32, "width": 48, "num_inference_steps": 2, "guidance_scale": 4.5, "fps": 8, "model": "tiny",
    "revision": None, "resolved_revision": "tiny-42e1d173dd455d93", "profile": "cpu", "precision": "fp32",
    "versions": {"torch": "2.13.0+cpu", "diffusers": "0.42.1", "transformers": "5.24.0", "accelerate": "1.15.0",
                 "bitsandbytes": None},
    "device": "cpu (x86_64)", "render_seconds": 0.332, "seconds_per_step": 0.0233, "peak_vram_allocated_gib": None,
    "peak_vram_reserved_gib": None, "sha256": "d3a035c92b2126398618820b9cf38014872abec40178fdbe045aee96a8c1d4b6",
    "frames_sha256": "e88921e9d9a65c903ef11ec16c678d3c6293c140257ae558d9324ff30b5632c7",
    "fingerprint": {
        "fingerprint_version": 1, "batchgen": "0.1.0", "model": "tiny", "revision": None,
        "resolved_revision": "tiny-42e1d173dd455d93", "profile": "cpu", "precision": "fp32", "quality": False,
        "dtypes": {"compute": "float32", "transformer": "float32", "text_encoder": "float32", "vae": "float32"},
        "vae_tiling": True, "decode_latent_frames": None, "max_sequence_length": 256,
        "scheduler": {"class": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 1.0,
                      "use_dynamic_shifting": False, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
                      "max_image_seq_len": 4096, "invert_sigmas": False, "shift_terminal": None,
                      "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
                      "time_shift_type": "exponential", "stochastic_sampling": False},
        "versions": {"torch": "2.13.0+cpu", "diffusers": "0.42.1", "transformers": "5.24.0", "accelerate": "1.15.0",
                     "bitsandbytes": None, "numpy": "2.4.6", "python": "3.11.7"},
        "cuda": None, "cudnn": None, "device_type": "cpu", "gpu": None, "cpu": "AMD EPYC", "cpu_capability": "AVX512",
        "cpu_threads": 2,
        "deterministic": {"deterministic_algorithms": False, "deterministic_warn_only": False,
                          "cublas_workspace_config": None, "cudnn_deterministic": False, "cudnn_benchmark": False,
                          "matmul_allow_tf32": False, "cudnn_allow_tf32": True, "float32_matmul_precision": "highest"},
    },
    "finished_at": "",
}


STAND_IN_VIDEO = b"not an mp4, sized like one"


def write_manifest(folder: Path, jobs: int) -> Path:
    """`jobs` distinct jobs: jobs/5 prompts in a prompts_file, five seeds each, tiny, 2 steps, small frames."""
    prompts = [f"prompt number {i}: a red fox running through fresh snow, shot {i % 7}" for i in range(jobs // SEEDS)]
    (folder / "prompts.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
    manifest = folder / "load.yaml"
    manifest.write_text(
        "model: tiny\n"
        "prompts_file: prompts.txt\n"
        f"seeds: [{', '.join(str(s) for s in range(SEEDS))}]\n"
        'output_name: "{prompt}-{index}"\n'
        "defaults: {num_frames: 7, height: 32, width: 48, num_inference_steps: 2, fps: 8}\n",
        encoding="utf-8",
    )
    return manifest


def run(folder: Path, jobs: int) -> dict:
    """Validate, then do every job's bookkeeping; returns timings (seconds) and what was written."""
    from batchgen.outputs import metadata_index
    from batchgen.outputs import verify
    from batchgen.manifest import load_manifest
    from batchgen.run.supervisor import video_path
    from batchgen.store import Store, now

    manifest_path = write_manifest(folder, jobs)
    t0 = time.perf_counter()
    manifest = load_manifest(manifest_path)
    t1 = time.perf_counter()
    expanded = manifest.expand("fp32")
    t2 = time.perf_counter()
    out = folder / "out"
    out.mkdir()
    store = Store(out)
    try:
        t3 = time.perf_counter()
        added = store.add_jobs(expanded)
        t4 = time.perf_counter()
        steps = {"claim": 0.0, "set_output_path": 0.0, "mark_done": 0.0, "index.append": 0.0}
        claimed: list[str] = []
        while True:
            a = time.perf_counter()
            job = store.claim(model="tiny", precision="fp32")
            b = time.perf_counter()
            steps["claim"] += b - a
            if job is None:
                break
            claimed.append(job.job_id)
            final = video_path(out, job)
            rel = final.relative_to(out).as_posix()
            store.set_output_path(job.job_id, rel)
            c = time.perf_counter()
            steps["set_output_path"] += c - b
            row = copy.deepcopy(ROW_TEMPLATE)
            row.update(file_name=rel, job_id=job.job_id, prompt=job.prompt, seed=job.seed, finished_at=now())
            store.mark_done(
                job.job_id,
                {"output_path": rel, "video_bytes": len(STAND_IN_VIDEO), "sha256": row["sha256"], "frames_sha256": row["frames_sha256"],
                 "render_seconds": 0.33, "seconds_per_step": 0.02, "profile": "cpu",
                 "fingerprint": json.dumps(row["fingerprint"]), "metadata": json.dumps(row, ensure_ascii=False)},
            )
            d = time.perf_counter()
            steps["mark_done"] += d - c
            metadata_index.append(out, row)
            steps["index.append"] += time.perf_counter() - d
        # What every run does once at its start and end, at this size (stand-in videos of the recorded size:
        # an empty one would rightly be taken for a truncated video and requeued).
        (out / "videos").mkdir(exist_ok=True)
        for row in store.done_rows():
            (out / row["output_path"]).write_bytes(STAND_IN_VIDEO)
        e = time.perf_counter()
        requeued = verify.startup_check(out, store, lambda s: None)
        f = time.perf_counter()
        rows = metadata_index.rebuild(out, store)
        g = time.perf_counter()
        counts = store.counts()
    finally:
        store.close()
    return {
        "jobs": len(expanded),
        "added": added,
        "claimed": claimed,
        "counts": counts,
        "index_rows": metadata_index.read(out),
        "requeued": requeued,
        "rebuilt_rows": rows,
        "seconds": {
            "load_manifest": t1 - t0,
            "expand": t2 - t1,
            "add_jobs": t4 - t3,
            **steps,
            "startup_check": f - e,
            "index.rebuild": g - f,
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bookkeeping-") as tmp:
        result = run(Path(tmp), args.jobs)
    s = result["seconds"]
    n = result["jobs"]
    assert result["counts"]["done"] == n and len(result["index_rows"]) == n
    print(f"manifest: {n} jobs; load_manifest {s['load_manifest']:.2f} s, expand (ids, names, collisions) "
          f"{s['expand']:.2f} s: validate {s['load_manifest'] + s['expand']:.2f} s")
    print(f"add_jobs: {s['add_jobs']:.2f} s ({1000 * s['add_jobs'] / n:.3f} ms/job)")
    per_job = 0.0
    for step in ("claim", "set_output_path", "mark_done", "index.append"):
        ms = 1000 * s[step] / n
        per_job += ms
        print(f"  {step:<16} {ms:7.3f} ms/job")
    print(f"bookkeeping per job (claim + set_output_path + mark_done + index.append): {per_job:.3f} ms "
          f"({'under' if per_job < 5 else 'OVER'} the 5 ms target)")
    print(f"once per run at {n} jobs: startup check (stat every video, compare the index) {s['startup_check']:.2f} s, "
          f"index rebuild {s['index.rebuild']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
