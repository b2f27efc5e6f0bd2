"""Write-behind: job k's MP4 is encoded on a thread while job k+1 denoises; its bookkeeping stays here.

The GPU then does not wait for x264. The file is recorded as done from the job loop's own thread as soon
as it is whole (polled between denoising steps), since SQLite connections are not shared between threads.
"""

from __future__ import annotations

import json
from pathlib import Path

from batchgen import faults
from batchgen.job import Job
from batchgen.outputs import gallery
from batchgen.outputs import metadata_index
from batchgen.outputs.atomic import sha256_file
from batchgen.outputs.unwritable import OutputUnwritable
from batchgen.outputs.video import publish_video, write_mp4
from batchgen.run.context import RunSummary
from batchgen.run.failures import job_failed
from batchgen.run.signals import Interrupted, StopSignals
from batchgen.store.queue import Store, now


class WriteBehind:
    """At most one video being encoded on a background thread; its bookkeeping stays on the caller's thread
    (SQLite connections are not shared between threads)."""

    def __init__(self, out: Path, store: Store, summary: RunSummary, log, bar, enabled: bool,
                 signals: StopSignals | None = None):
        self.out, self.store, self.summary, self.log, self.bar = out, store, summary, log, bar
        self.signals = signals
        self.executor = None
        if enabled:
            from concurrent.futures import ThreadPoolExecutor

            self.executor = ThreadPoolExecutor(1, thread_name_prefix="batchgen-mp4")
        self.pending = None  # (job, final, rel, rendered, row, future)
        self.deferred: BaseException | None = None
        # Set on Ctrl-C/SIGTERM: ffmpeg shares the terminal's process group and may have been stopped too,
        # which is no fault of the job's, so a failed write then sends it back to pending, not to failed.
        self._interrupted = False

    @property
    def interrupted(self) -> bool:
        return self._interrupted or (self.signals is not None and self.signals.received is not None)

    @interrupted.setter
    def interrupted(self, value: bool) -> None:
        self._interrupted = value

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
            job_failed(self.out, self.store, job, final, rel, exc, self.summary, self.log, self.bar)
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
            metadata_index.append(self.out, row)
            faults.point("indexed")
            gallery.maybe_write_gallery(self.out, self.store)
            self.summary.rendered += 1
        except (KeyboardInterrupt, Interrupted):
            raise
        except Exception as exc:
            job_failed(self.out, self.store, job, final, rel, exc, self.summary, self.log, self.bar)
            return
        if self.bar is not None:
            self.bar.job_finished(job, rendered)
