"""The job loop: claim a job, render it, write its video, mark it done, index it; again until none is left.

It stops at safe points only (run/signals.py): between jobs, and between denoising steps through the
renderer's on_step callback; the job in flight then goes back to pending.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from batchgen import faults
from batchgen import settings
from batchgen.engine import fingerprint
from batchgen.engine.environment import device_name, library_versions
from batchgen.job import CHECKPOINT_FIELDS, Job
from batchgen.outputs.unwritable import OutputUnwritable
from batchgen.run.context import RunSummary, video_path
from batchgen.run.failures import free_cuda, is_oom, job_failed
from batchgen.run.signals import Interrupted, StopSignals
from batchgen.run.write_behind import WriteBehind
from batchgen.store.queue import Store, now


def metadata_row(out: Path, job: Job, path: Path, rendered, renderer, sha256: str) -> dict:
    """The metadata.jsonl row of a finished job: file_name first, as VideoFolder expects."""
    loaded = renderer.load()
    gib = (lambda b: round(b / 2**30, 3) if b is not None else None)
    row = {
        "file_name": path.relative_to(out).as_posix(),
        "job_id": job.job_id,
        "prompt": job.prompt,
        "negative_prompt": job.negative_prompt,
        "seed": job.seed,
        "num_frames": job.num_frames,
        "height": job.height,
        "width": job.width,
        "num_inference_steps": job.num_inference_steps,
        "guidance_scale": job.guidance_scale,
        "fps": job.fps,
        "model": job.model,
        "family": job.family,
        "revision": job.revision,
        "resolved_revision": loaded.revision,
        "profile": renderer.profile,
        "precision": job.precision,
        "versions": library_versions(),
        "device": getattr(renderer, "device_label", None) or device_name(renderer.device),
        "render_seconds": round(rendered.seconds, 3),
        "seconds_per_step": round(rendered.seconds_per_step, 4),
        "peak_vram_allocated_gib": gib(rendered.peak_vram_allocated),
        "peak_vram_reserved_gib": gib(rendered.peak_vram_reserved),
        "sha256": sha256,
        "frames_sha256": rendered.frames_sha256,
        "fingerprint": fingerprint.collect(renderer),
        "finished_at": now(),
    }
    row.update(_checkpoint_columns(job, loaded, rendered))
    return row


def _checkpoint_columns(job: Job, loaded, rendered) -> dict:
    """What was loaded beside the model and the job's LoRAs, in the record only when there are any."""
    extra: dict = {}
    if getattr(loaded, "variant", None):
        extra["variant_loaded"] = loaded.variant
    for name in CHECKPOINT_FIELDS:
        if getattr(job, name):
            extra[name] = getattr(job, name)
    if getattr(loaded, "transformer_revision", None):
        extra["resolved_transformer_revision"] = loaded.transformer_revision
    if job.loras:
        extra["loras"] = [lo.to_dict() for lo in job.loras]
        switch = getattr(rendered, "lora_switch_seconds", None)
        extra["lora_switch_seconds"] = round(switch, 3) if switch is not None else 0.0
    return extra


def write_behind_enabled() -> bool:
    """Encode each MP4 on a thread while the next job renders (BATCHGEN_WRITE_BEHIND=0 turns it off)."""
    return settings.write_behind()


def work_loop(
    out: Path,
    store: Store,
    renderer,
    *,
    model: str,
    precision: str,
    summary: RunSummary,
    checkpoint: str | None = None,
    log,
    bar=None,
    worker: str = "",
    lease_seconds: float | None = None,
    on_claim: Callable[[tuple[str, ...]], None] | None = None,
    stop=None,
    write_behind: bool | None = None,
    signals: StopSignals | None = None,
) -> None:
    """Claim and render jobs until none is left (or `stop` is set); an interrupted job goes back to pending.

    `signals` is checked at the safe points (between jobs and between denoising steps); a loop driven from
    another thread (Ray's) passes None and is stopped through `stop` by the thread that owns the signals.
    With write-behind (run/write_behind.py) a video is encoded while the next job denoises. `on_claim`
    gets the ids of the jobs in hand (rendering, writing).
    """
    enabled = write_behind_enabled() if write_behind is None else write_behind
    writer = WriteBehind(out, store, summary, log, bar, enabled, signals)

    def in_hand(*ids):
        if on_claim is not None:
            on_claim(tuple(i for i in ids + writer.writing() if i))

    try:
        while stop is None or not stop.is_set():
            if signals is not None:
                signals.check()
            job = store.claim(model=model, precision=precision, worker=worker, lease_seconds=lease_seconds,
                                checkpoint=checkpoint)
            if job is None:
                writer.drain()  # its job is still running: a lease-waiting loop must not see it as another's
                # Another worker may yet die holding a job: stay until its lease lapses or it finishes.
                if lease_seconds and store.running_count(model=model, precision=precision, checkpoint=checkpoint):
                    time.sleep(min(1.0, lease_seconds / 4))
                    continue
                break
            in_hand(job.job_id)
            try:
                _render_one(out, store, renderer, job, summary, log, writer, _step_hook(writer, signals))
            except (KeyboardInterrupt, Interrupted):
                writer.interrupted = True
                store.release(job.job_id)
                raise
            except OutputUnwritable:
                store.release(job.job_id)  # no-op if it was this job's own write that found the disk full
                raise
            finally:
                in_hand()
    except (KeyboardInterrupt, Interrupted):
        writer.interrupted = True  # also between jobs (claiming): ffmpeg got the same Ctrl-C
        raise
    finally:
        # Whatever stops the loop (Ctrl-C, a full disk, the end), a video already rendered is finished and
        # recorded rather than lost; if even that is interrupted its job goes back to pending.
        writer.close()


def _step_hook(writer: WriteBehind, signals: StopSignals | None) -> Callable[[int, int], None] | None:
    """What runs between denoising steps: the stop check, and recording the video written behind."""
    polling = writer.executor is not None
    if signals is None and not polling:
        return None

    def on_step(*step) -> None:
        if signals is not None:
            signals.check()
        if polling:
            writer.poll(*step)

    return on_step


def _render_one(out: Path, store: Store, renderer, job: Job, summary: RunSummary, log, writer: WriteBehind,
                on_step: Callable[[int, int], None] | None) -> None:
    final = video_path(out, job)
    rel = final.relative_to(out).as_posix()

    def failed(exc: Exception) -> None:
        job_failed(out, store, job, final, rel, exc, summary, log, writer.bar)

    try:
        faults.point("claimed")
        rendered = _render_stepping_down(renderer, job, store, log, on_step)
    except (KeyboardInterrupt, Interrupted, OutputUnwritable):
        raise
    except Exception as exc:
        writer.drain()  # the previous job's record first, outside this job's error handling
        failed(exc)
        return
    # The previous job's video first: its record (or its failure) must not wait for this one's, and an
    # error in it propagates as its own, never as this job's.
    writer.drain()
    try:
        if final.exists() and store.get_row(job.job_id)["output_path"] != rel:
            # Not an orphan of this job's own crashed publish: the user's file, or another job's. Keep it.
            raise FileExistsError(f"{final} already exists and is not batchgen's; batchgen never overwrites a video")
        # Recorded before the rename, so a crash between rename and done marks the file as ours to redo.
        store.set_output_path(job.job_id, rel)
        # What rendered it is taken now: by the time the file is whole the next job may have stepped the
        # renderer down to another profile.
        row = metadata_row(out, job, final, rendered, renderer, sha256="")
    except (KeyboardInterrupt, Interrupted, OutputUnwritable):
        raise
    except Exception as exc:
        failed(exc)
        return
    writer.submit(job, final, rel, rendered, row)


def _render_stepping_down(renderer, job: Job, store: Store, log, on_step=None):
    """Render; on a CUDA out-of-memory error free memory, move to the next lower-memory profile of the same
    precision (same job id, same pixels) and try again, for as long as there is a lower one."""
    while True:
        try:
            return renderer.render(job, on_step=on_step) if on_step is not None else renderer.render(job)
        except Exception as exc:
            if not is_oom(exc) or not hasattr(renderer, "step_down"):
                raise
            old = renderer.profile
            free_cuda()
            new = renderer.step_down()
            if new is None:
                raise
            log(f"batchgen: job {job.job_id} ran out of GPU memory under '{old}'; retrying with '{new}' "
                "for the rest of the batch")
            store.note(job.job_id, f"out of GPU memory under {old}; stepped down to {new}")
