"""What one run of a batch shares between its lifecycle (run/supervisor.py) and its runner.

A runner (in-process, the local worker pool, Ray) gets a RunContext and only renders: the supervisor
alone owns signals, the folder lock, the `runs` row, progress, cleanup and the summary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from batchgen.run.signals import StopSignals

VIDEO_DIR = "videos"


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
    left_pending: int = 0  # jobs no runner finished though nobody stopped it (every worker died, say)

    @property
    def exit_code(self) -> int:
        if self.interrupted_by is not None:
            return 128 + self.interrupted_by
        return 1 if self.failed or self.left_pending else 0


@dataclass
class RunContext:
    """One run: the batch's plan and the services its runner may use."""

    out: Path
    store: object  # batchgen.store.queue.Store, opened by the supervisor
    manifest: object  # batchgen.manifest.parse.Manifest
    choice: object  # batchgen.engine.profiles.ProfileChoice
    precision: str
    pending: int
    summary: RunSummary
    log: Callable[[str], None]
    progress: object  # batchgen.run.progress.BatchProgress
    signals: StopSignals
    show_bars: bool | str = True  # progress mode: auto, bars, lines, none (a bool: auto or none)
    lock_fd: int | None = None  # the folder lock's descriptor, inherited by worker processes
    notes: list[str] = field(default_factory=list)  # added to the runs row's reason (e.g. "3 workers")

    @property
    def model(self) -> str:
        return self.manifest.model

    @property
    def checkpoint(self) -> str | None:
        """The store's key for what the batch loads beside the model (batchgen.job.checkpoint_key)."""
        from batchgen.job import checkpoint_key

        return checkpoint_key(self.manifest)


def video_path(out: Path, job) -> Path:
    return Path(out) / VIDEO_DIR / f"{job.output_name}.mp4"
