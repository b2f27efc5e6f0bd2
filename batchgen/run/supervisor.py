"""The batch loop: claim a job, render it, write the video, mark it done, index it; again."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from batchgen.engine import approximate
from batchgen import faults
from batchgen.outputs import gallery
from batchgen.outputs import metadata_index as index
from batchgen import settings
from batchgen.engine import profile_registry, profiles
from batchgen.errors import BatchgenError
from batchgen.engine import determinism
from batchgen.engine import fingerprint
from batchgen.engine.environment import device_name, library_versions
from batchgen.outputs.atomic import remove_partials, sha256_file
from batchgen.job import Job
from batchgen.run.lock import FolderLock
from batchgen.run.progress import BatchProgress
from batchgen.manifest.parse import Manifest
from batchgen.store.queue import Store, now
from batchgen.outputs.video import publish_video, write_mp4
from batchgen.outputs import unwritable
from batchgen.outputs import verify
from batchgen.outputs.unwritable import OutputUnwritable

VIDEO_DIR = "videos"


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: the job in flight went back to pending."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by signal {signum}")


@dataclass
class RunSummary:
    out: Path
    total: int = 0
    added: int = 0
    rendered: int = 0
    failed: int = 0
    skipped: int = 0
    profile: str = ""
    profile_reason: str = ""
    failures: list[str] = field(default_factory=list)
    interrupted_by: int | None = None

    @property
    def exit_code(self) -> int:
        if self.interrupted_by is not None:
            return 128 + self.interrupted_by
        return 1 if self.failed else 0


def video_path(out: Path, job: Job) -> Path:
    return Path(out) / VIDEO_DIR / f"{job.output_name}.mp4"


def metadata_row(out: Path, job: Job, path: Path, rendered, renderer, sha256: str) -> dict:
    """The metadata.jsonl row of a finished job: file_name first, as VideoFolder expects."""
    loaded = renderer.load()
    gib = (lambda b: round(b / 2**30, 3) if b is not None else None)
    return {
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


class _SignalGuard:
    """Turn SIGTERM into an exception in the main thread, like Ctrl-C's KeyboardInterrupt."""

    def __enter__(self):
        self._old = signal.getsignal(signal.SIGTERM)

        def handler(signum, frame):
            raise Interrupted(signum)

        try:
            signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread: leave signals alone
            self._old = None
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def plan(
    manifest: Manifest, device: str | None = None, deterministic: bool = False
) -> tuple[profiles.ProfileChoice, str, list[Job]]:
    """Resolve the profile for this machine and expand the manifest at its precision."""
    # auto sizes its choice to this batch's biggest video, not to the longest Mochi can make.
    largest = max(
        ((e.fields["num_frames"], e.fields["height"], e.fields["width"]) for e in manifest.entries),
        key=lambda shape: profiles.latent_tokens(*shape),
        default=None,
    )
    choice = profiles.resolve(manifest.profile, device, largest=largest)
    refused = approximate.check_profile(manifest.approximate, choice.name)
    if refused:
        raise BatchgenError(f"{manifest.path}: field 'approximate': {refused}. Pick one of those with --profile "
                            "or profile: in the manifest.")
    precision = profiles.precision(choice.name, manifest.quality, deterministic, manifest.approximate)
    return choice, precision, manifest.expand(precision)


def render_manifest(
    manifest: Manifest,
    out: Path | None = None,
    *,
    device: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
    renderer_factory=None,
    workers: list[str] | None = None,
    deterministic: bool = False,
    ray_address: str | None = None,
    ray_actors: int | None = None,
) -> RunSummary:
    """Render every pending job of `manifest` into `out`, resuming whatever an earlier run left."""
    out = Path(out or manifest.out or "out")
    choice, precision, jobs = plan(manifest, device, deterministic)
    summary = RunSummary(out, profile=choice.name, profile_reason=choice.reason)
    with unwritable.guard(out):
        out.mkdir(parents=True, exist_ok=True)
    with unwritable.guard(out), determinism.settings(deterministic), FolderLock(out):
        store = Store(out)
        try:
            return _run(
                manifest, out, store, choice, precision, jobs, summary, device, progress, log, renderer_factory, workers,
                ray_address, ray_actors,
            )
        finally:
            store.close()


def _refuse_int8_kernel_switch(out: Path, store, model: str, precision: str) -> None:
    """A folder started under one int8 kernel would otherwise get every job again under the other's ids."""
    for recorded, count in store.precisions(model=model).items():
        if profiles.int8_kernel_switched(recorded, precision):
            raise BatchgenError(
                f"{out} holds {count} job(s) at precision {recorded}, and this run would render the same batch "
                f"again at {precision}{profiles.int8_hint(recorded)}. Or use another --out; nothing is overwritten."
            )


def _run(manifest, out, store, choice, precision, jobs, summary, device, progress, log, renderer_factory, workers=None,
         ray_address=None, ray_actors=None):
    from batchgen.engine.renderer import Renderer

    _refuse_int8_kernel_switch(out, store, manifest.model, precision)
    summary.added = store.add_jobs(jobs)
    stale = store.reset_running()
    verify.startup_check(out, store, log)
    remove_partials(out / VIDEO_DIR)
    remove_partials(out)
    index.rebuild(out, store)
    gallery.maybe_write_gallery(out, store, force=True)
    if stale:
        log(f"batchgen: {stale} job(s) left running by an interrupted run go back to the queue")
    pending = store.pending_count(model=manifest.model, precision=precision)
    counts = store.counts()
    summary.total = counts["total"]
    summary.skipped = counts["done"]
    if pending == 0:
        log(f"batchgen: nothing to render in {out}: {counts['done']} done, {counts['failed']} failed")
        summary.failed = counts["failed"]
        return summary

    log(f"batchgen: profile '{choice.name}' ({choice.reason}); {pending} job(s) to render, {counts['done']} already done")
    if choice.device == "cpu" and manifest.model != "tiny":
        log(
            "batchgen: warning: no CUDA device; a full-size Mochi model on the CPU takes hours per video. "
            "Use `model: tiny` to try batchgen, or run on a CUDA machine."
        )
    if profile_registry.get(choice.name).compiles:
        # Inductor's cache beside the batch: a resumed run (and every worker) reuses the compiled kernels instead of rebuilding.
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(out / "cache" / "inductor"))
    if ray_address:
        from batchgen.run.ray_pool import run_on_ray

        return run_on_ray(manifest, out, store, choice, precision, pending, summary, ray_address, ray_actors,
                          progress, log)
    if workers:
        from batchgen.run.local_pool import run_workers

        return run_workers(manifest, out, store, choice, precision, pending, summary, workers, progress, log)
    factory = renderer_factory or Renderer
    renderer = factory(
        manifest.model,
        revision=manifest.revision,
        profile=choice.name,
        quality=manifest.quality,
        device=choice.device,
        cache_dir=out / "cache" / "embeddings",
        progress=progress,
        approximate=manifest.approximate,
    )
    run_id = store.start_run(
        manifest=str(manifest.path), model=manifest.model, profile=choice.name, profile_reason=choice.reason
    )
    exit_word = "finished"
    stopped: OutputUnwritable | None = None
    bar = BatchProgress(pending, progress)
    try:
        with _SignalGuard():
            try:
                renderer.encode(store.pending_texts(model=manifest.model, precision=precision))
                _warn_long_prompts(renderer, store, manifest, precision, log)
                work_loop(out, store, renderer, model=manifest.model, precision=precision, summary=summary, log=log, bar=bar)
            except KeyboardInterrupt:
                summary.interrupted_by = signal.SIGINT
            except Interrupted as exc:
                summary.interrupted_by = exc.signum
            except OutputUnwritable as exc:
                stopped = exc
    finally:
        bar.close()
        try:
            index.rebuild(out, store)
        except Exception as exc:
            # With the batch already stopping for a full disk, the index is rebuilt on the next run.
            if stopped is None and unwritable.unwritable_errno(exc, out) is None:
                raise
            stopped = stopped or OutputUnwritable(unwritable.describe(exc, out / index.INDEX_NAME))
        gallery.maybe_write_gallery(out, store, force=True)
        if summary.interrupted_by is not None:
            exit_word = "interrupted"
            log("batchgen: interrupted; the job in flight is back in the queue. Run the same command to resume.")
        if stopped is not None:
            exit_word = "stopped: output unwritable"
        try:
            store.finish_run(run_id, exit_word)
        except Exception:
            if stopped is None:  # the database may sit on the same full disk: the stop is what to report
                raise
    if stopped is not None:
        raise stopped
    summary.failed = store.counts()["failed"]
    return summary


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
    log,
    bar=None,
    worker: str = "",
    lease_seconds: float | None = None,
    on_claim: Callable[[tuple[str, ...]], None] | None = None,
    stop=None,
    write_behind: bool | None = None,
) -> None:
    """Claim and render jobs until none is left (or `stop` is set); an interrupted job goes back to pending.

    With write-behind, job k's MP4 is encoded on a thread while job k+1 denoises, and recorded as done
    from the main thread as soon as the file is whole (checked between denoising steps), so the GPU
    does not wait for x264. `on_claim` gets the ids of the jobs in hand (rendering, writing).
    """
    writer = _WriteBehind(out, store, summary, log, bar, write_behind_enabled() if write_behind is None else write_behind)

    def in_hand(*ids):
        if on_claim is not None:
            on_claim(tuple(i for i in ids + writer.writing() if i))

    try:
        while stop is None or not stop.is_set():
            job = store.claim(model=model, precision=precision, worker=worker, lease_seconds=lease_seconds)
            if job is None:
                writer.drain()  # its job is still running: a lease-waiting loop must not see it as another's
                # Another worker may yet die holding a job: stay until its lease lapses or it finishes.
                if lease_seconds and store.running_count(model=model, precision=precision):
                    time.sleep(min(1.0, lease_seconds / 4))
                    continue
                break
            in_hand(job.job_id)
            try:
                _render_one(out, store, renderer, job, summary, log, writer)
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


class _WriteBehind:
    """At most one video being encoded on a background thread; its bookkeeping stays on the caller's thread
    (SQLite connections are not shared between threads)."""

    def __init__(self, out: Path, store: Store, summary: RunSummary, log, bar, enabled: bool):
        self.out, self.store, self.summary, self.log, self.bar = out, store, summary, log, bar
        self.executor = None
        if enabled:
            from concurrent.futures import ThreadPoolExecutor

            self.executor = ThreadPoolExecutor(1, thread_name_prefix="batchgen-mp4")
        self.pending = None  # (job, final, rel, rendered, row, future)
        self.deferred: BaseException | None = None
        # Set on Ctrl-C/SIGTERM: ffmpeg shares the terminal's process group and may have been stopped too,
        # which is no fault of the job's, so a failed write then sends it back to pending, not to failed.
        self.interrupted = False

    def writing(self) -> tuple[str, ...]:
        return (self.pending[0].job_id,) if self.pending else ()

    def submit(self, job: Job, final: Path, rel: str, rendered, row: dict) -> None:
        """Write the video of a rendered job whose output path is recorded; record it when whole. `row` is
        its metadata, taken when it finished rendering (the file's sha256 and finish time come later)."""
        self.drain()
        if self.executor is None:
            from concurrent.futures import Future

            done: Future = Future()
            try:
                publish_video(rendered, final, job.fps, write_mp4)
                done.set_result(None)
            except Exception as exc:
                done.set_exception(exc)
            self._finish((job, final, rel, rendered, row, done))
            return
        future = self.executor.submit(publish_video, rendered, final, job.fps, write_mp4)
        self.pending = (job, final, rel, rendered, row, future)

    def poll(self, *_step) -> None:
        """Between denoising steps of the next job: record the previous video if it is written. A full
        disk stops the batch at once; other errors wait for drain(), outside the rendering job's own
        error handling, so they are never taken for its failure."""
        if self.pending is None or not self.pending[-1].done():
            return
        pending, self.pending = self.pending, None
        try:
            self._finish_or_release(pending)
        except (KeyboardInterrupt, Interrupted, OutputUnwritable):
            raise
        except BaseException as exc:
            self.deferred = exc

    def drain(self) -> None:
        """Wait for the video in flight and record it; raise what an earlier poll() could not."""
        pending, self.pending = self.pending, None
        if pending is not None:
            self._finish_or_release(pending)
        if self.deferred is not None:
            exc, self.deferred = self.deferred, None
            raise exc

    def close(self) -> None:
        try:
            self.drain()
        finally:
            if self.executor is not None:
                self.executor.shutdown(wait=True)

    def _finish_or_release(self, pending) -> None:
        """_finish, with the job sent back to pending if an interruption cuts its bookkeeping short."""
        try:
            self._finish(pending)
        except (KeyboardInterrupt, Interrupted):
            self.store.release(pending[0].job_id)
            raise

    def _finish(self, pending) -> None:
        job, final, rel, rendered, row, future = pending
        try:
            future.result()
        except (KeyboardInterrupt, Interrupted):
            raise
        except Exception as exc:
            if self.interrupted:
                self.store.release(job.job_id)
                return
            _job_failed(self.out, self.store, job, final, rel, exc, self.summary, self.log, self.bar)
        else:
            self._record(job, final, rel, rendered, row)

    def _record(self, job: Job, final: Path, rel: str, rendered, row: dict) -> None:
        try:
            faults.point("video_published")
            sha = sha256_file(final)
            row = dict(row, sha256=sha, finished_at=now())
            self.store.mark_done(
                job.job_id,
                {
                    "output_path": rel,
                    "sha256": sha,
                    "video_bytes": final.stat().st_size,
                    "frames_sha256": rendered.frames_sha256,
                    "render_seconds": rendered.seconds,
                    "seconds_per_step": rendered.seconds_per_step,
                    "peak_vram_allocated": rendered.peak_vram_allocated,
                    "peak_vram_reserved": rendered.peak_vram_reserved,
                    "profile": row["profile"],
                    "fingerprint": json.dumps(row["fingerprint"]),
                    "metadata": json.dumps(row, ensure_ascii=False),
                },
            )
            faults.point("marked_done")
            index.append(self.out, row)
            faults.point("indexed")
            gallery.maybe_write_gallery(self.out, self.store)
            self.summary.rendered += 1
        except (KeyboardInterrupt, Interrupted):
            raise
        except Exception as exc:
            _job_failed(self.out, self.store, job, final, rel, exc, self.summary, self.log, self.bar)
            return
        if self.bar is not None:
            self.bar.job_finished(job, rendered)


def _render_one(out: Path, store: Store, renderer, job: Job, summary: RunSummary, log, writer: _WriteBehind) -> None:
    final = video_path(out, job)
    rel = final.relative_to(out).as_posix()

    def failed(exc: Exception) -> None:
        _job_failed(out, store, job, final, rel, exc, summary, log, writer.bar)

    try:
        faults.point("claimed")
        on_step = writer.poll if writer.executor is not None else None
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


def _job_failed(out: Path, store: Store, job: Job, final: Path, rel: str, exc: BaseException, summary: RunSummary,
                log, bar=None) -> None:
    """Record a job's failure; a full or read-only output stops the batch instead (OutputUnwritable)."""
    if unwritable.unwritable_errno(exc, out) is not None:
        _stop_unwritable(store, job, final, rel, exc)
    message = f"{type(exc).__name__}: {exc}"
    store.mark_failed(job.job_id, message)
    summary.failed += 1
    summary.failures.append(f"{job.source or job.job_id}: {message}")
    log(f"batchgen: job {job.job_id} ({job.source}) failed: {message}")
    if bar is not None:
        bar.job_failed(job, message)
    gallery.maybe_write_gallery(out, store)
    if _is_oom(exc):
        _free_cuda()
    if settings.debug():
        traceback.print_exc()


def _render_stepping_down(renderer, job: Job, store: Store, log, on_step=None):
    """Render; on a CUDA out-of-memory error free memory, move to the next lower-memory profile of the same
    precision (same job id, same pixels) and try again, for as long as there is a lower one."""
    while True:
        try:
            return renderer.render(job, on_step=on_step) if on_step is not None else renderer.render(job)
        except Exception as exc:
            if not _is_oom(exc) or not hasattr(renderer, "step_down"):
                raise
            old = renderer.profile
            _free_cuda()
            new = renderer.step_down()
            if new is None:
                raise
            log(f"batchgen: job {job.job_id} ran out of GPU memory under '{old}'; retrying with '{new}' "
                "for the rest of the batch")
            store.note(job.job_id, f"out of GPU memory under {old}; stepped down to {new}")


def _stop_unwritable(store: Store, job: Job, final: Path, rel: str, exc: BaseException) -> None:
    """The output cannot take more (disk full, read-only, no permission): every later job would fail the
    same way, so stop the batch. The job goes back to pending with the message recorded, so the same
    command resumes it once there is room; its partial file is already gone (write_mp4 cleans up)."""
    message = unwritable.describe(exc, final)
    try:
        row = store.get_row(job.job_id)
        if row and row["status"] == "done":
            # Only the index row failed to land: the video and its record are whole, and the next run
            # rewrites metadata.jsonl from the database.
            message += f" Job {job.job_id} is rendered and recorded."
        else:
            store.mark_pending(job.job_id, message)
            if final.exists():  # published before the failure: still this job's own file, to replace
                store.set_output_path(job.job_id, rel)
            message += f" Job {job.job_id} ({job.source or 'no source'}) went back to the queue."
    except Exception:
        # The database is on the same full disk: the job stays `running`, and the next run requeues it.
        message += f" Job {job.job_id} goes back to the queue on the next run."
    raise OutputUnwritable(message) from exc


def _is_oom(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def _free_cuda() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


def _warn_long_prompts(renderer, store: Store, manifest, precision: str, log) -> None:
    limit = renderer.load().max_sequence_length
    for row in store.rows("pending"):
        if row["model"] != manifest.model or row["precision"] != precision:
            continue
        n = renderer.count_tokens(row["prompt"])
        if n > limit:
            log(f"batchgen: warning: {row['source']} (job {row['job_id']}): prompt is {n} tokens; T5 reads only the first {limit}")

