"""A job that failed: recorded as failed, or, when the output cannot be written, the batch stops (exit 4)."""

from __future__ import annotations

import traceback
from pathlib import Path

from batchgen import settings
from batchgen.job import Job
from batchgen.outputs import gallery
from batchgen.outputs import unwritable
from batchgen.outputs.unwritable import OutputUnwritable
from batchgen.run.context import RunSummary
from batchgen.store.queue import Store


def job_failed(out: Path, store: Store, job: Job, final: Path, rel: str, exc: BaseException, summary: RunSummary,
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
    if is_oom(exc):
        free_cuda()
    if settings.debug():
        traceback.print_exc()


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
        message += f" Job {job.job_id} goes back to the queue."
    raise OutputUnwritable(message) from exc


def is_oom(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def free_cuda() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass
