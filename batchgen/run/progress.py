"""What a running batch tells its user: one object per run, fed by the job loop, the pool or Ray.

The lifecycle creates it and calls it from any thread (Ray drives one thread per actor), so every
method takes the lock.
"""

from __future__ import annotations

import threading

from batchgen.job import Job


class BatchProgress:
    """The batch's progress: today one tqdm bar of videos (disabled by --no-progress)."""

    def __init__(self, total: int, enabled: bool = True):
        from tqdm import tqdm

        self._lock = threading.Lock()
        self._bar = tqdm(total=total, desc="videos", unit="video", disable=not enabled, position=0,
                         dynamic_ncols=True)

    def phase(self, text: str) -> None:
        """A phase of the run starts (loading, encoding texts, compiling)."""

    def job_finished(self, job: Job, rendered) -> None:
        with self._lock:
            self._bar.update(1)

    def job_failed(self, job: Job, message: str) -> None:
        with self._lock:
            self._bar.update(1)

    def set_finished(self, count: int) -> None:
        """Worker processes report through the database: `count` jobs of this run are finished."""
        with self._lock:
            self._bar.n = count
            self._bar.refresh()

    def close(self) -> None:
        with self._lock:
            self._bar.close()
