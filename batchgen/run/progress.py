"""What a running batch tells its user: one object per run, fed by the job loop, the pool or Ray.

Three modes (engine/progress_mode.py): `bars`, one tqdm bar of videos for a terminal; `lines`, plain
lines a log file can hold (one per finished or failed job with the batch's ETA, one per phase, a
heartbeat during a long job); `none`. The lifecycle creates it and calls it from any thread (Ray drives
one thread per actor), so every method takes the lock.

The ETA weighs the jobs still to render by their work, steps x latent tokens: a batch that mixes 7-frame
previews with 163-frame videos would be mispredicted by counting jobs.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from batchgen.engine import progress_mode
from batchgen.engine.profiles import latent_tokens
from batchgen.job import Job

Shape = tuple[int, int, int, int]  # num_inference_steps, num_frames, height, width

HEARTBEAT_SECONDS = 60.0


def shape_of(item: Job | Mapping | tuple) -> Shape:
    """(steps, frames, height, width) of a Job, a job row of the database, or such a tuple."""
    if isinstance(item, tuple):
        return tuple(int(x) for x in item)  # type: ignore[return-value]
    get = item.__getitem__ if isinstance(item, Mapping) else (lambda k: getattr(item, k))
    return (int(get("num_inference_steps")), int(get("num_frames")), int(get("height")), int(get("width")))


def pending_shapes(store, model: str, precision: str) -> list[Shape]:
    """The shapes of the jobs this run will render, for the ETA (a Store's pending rows of one pipeline)."""
    return [shape_of(r) for r in store.rows("pending") if r["model"] == model and r["precision"] == precision]


def _work(shape: Shape) -> float:
    steps, frames, height, width = shape
    return float(steps * latent_tokens(frames, height, width))


def format_duration(seconds: float) -> str:
    """MM:SS under an hour, H:MM:SS above."""
    whole = max(0, int(round(seconds)))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class EtaModel:
    """Seconds left in a batch, from the measured cost of a unit of work (one step of one latent token)."""

    def __init__(self, total: int, shapes: Iterable[Job | Mapping | tuple] | None = None):
        self.total = total
        self.remaining: list[Shape] | None = [shape_of(s) for s in shapes] if shapes is not None else None
        self.finished = 0
        self._seconds = 0.0  # measured render seconds of the jobs counted below
        self._work = 0.0
        self._jobs = 0

    def job_done(self, shape: Shape | None, seconds: float | None = None) -> None:
        """One job left the queue (rendered or failed); `seconds` is its render time when it was measured."""
        self.finished += 1
        if shape is not None and self.remaining is not None and shape in self.remaining:
            self.remaining.remove(shape)
        if seconds is not None and shape is not None:
            self._seconds += seconds
            self._work += _work(shape)
            self._jobs += 1

    def seconds_left(self) -> float | None:
        """None until a job has been measured; 0 when nothing is left."""
        left = max(0, self.total - self.finished)
        if left == 0:
            return 0.0
        if not self._jobs:
            return None
        if self.remaining is not None and self._work > 0:
            # Jobs not in the shape list (added by another process) count as the average measured job.
            unknown = max(0, left - len(self.remaining))
            work = sum(_work(s) for s in self.remaining) + unknown * self._work / self._jobs
            return work * self._seconds / self._work
        return left * self._seconds / self._jobs


class BatchProgress:
    """The batch's progress in one of three modes; `progress` is a mode string or a bool (True: auto)."""

    def __init__(self, total: int, progress: bool | str = True, shapes: Iterable | None = None, *,
                 stream=None, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 heartbeat_seconds: float = HEARTBEAT_SECONDS, heartbeat_thread: bool = True):
        self._lock = threading.Lock()
        self.total = total
        self._stream = stream
        self.mode = progress_mode.resolve(progress, self.stream)
        self.eta = EtaModel(total, shapes)
        self._clock, self._wall = clock, wall
        self._heartbeat = heartbeat_seconds
        self._started = self._last_event = self._last_line = clock()
        self._bar = None
        self._pool_left: float | None = None  # set_finished's estimate, when the workers report
        self._stop = threading.Event()
        if self.mode == "bars":
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc="videos", unit="video", position=0, dynamic_ncols=True,
                             file=self.stream)
        elif self.mode == "lines" and heartbeat_thread:
            threading.Thread(target=self._beat, name="batchgen-heartbeat", daemon=True).start()

    @property
    def stream(self):
        return self._stream if self._stream is not None else sys.stderr

    # -- events --------------------------------------------------------------------------------------
    def phase(self, text: str) -> None:
        """A phase of the run starts (loading, encoding texts, compiling)."""
        with self._lock:
            if self.mode == "bars":
                self._bar.write(f"batchgen: {text}", file=self.stream)
            elif self.mode == "lines":
                self._line(f"batchgen: {text}")

    def job_finished(self, job: Job, rendered) -> None:
        with self._lock:
            self._event(shape_of(job), rendered.seconds)
            if self.mode == "lines":
                self._line(f"[{self.eta.finished}/{self.total}] {_name(job)} done in {rendered.seconds:.1f} s "
                           f"({rendered.seconds_per_step:.2f} s/step); {self._eta_text()}")

    def job_failed(self, job: Job, message: str) -> None:
        with self._lock:
            self._event(shape_of(job), None)
            if self.mode == "lines":
                first = message.splitlines()[0] if message else ""
                self._line(f"[{self.eta.finished}/{self.total}] {_name(job)} failed: {first}; {self._eta_text()}")

    def set_finished(self, count: int) -> None:
        """Worker processes report through the database: `count` jobs of this run are finished. Their
        render times stay in the workers, so the ETA is the pool's throughput so far."""
        with self._lock:
            if count <= self.eta.finished:
                return
            now = self._clock()
            self.eta.finished = count
            self._last_event = now
            self._pool_left = max(0, self.total - count) * (now - self._started) / count
            if self._bar is not None:
                self._bar.n = count
                self._bar.refresh()
            elif self.mode == "lines":
                self._line(f"[{count}/{self.total}] done; {self._eta_text()}")

    def tick(self) -> None:
        """The heartbeat: in lines mode, a line when none was written for `heartbeat_seconds` (a long job)."""
        with self._lock:
            now = self._clock()
            if self.mode != "lines" or now - self._last_line < self._heartbeat or self.eta.finished >= self.total:
                return
            since = format_duration(now - self._last_event)
            self._line(f"[{self.eta.finished}/{self.total}] still rendering, {since} since the last job finished; "
                       f"{self._eta_text()}")

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            if self._bar is not None:
                self._bar.close()

    # -- helpers (the lock is held) --------------------------------------------------------------------
    def _event(self, shape: Shape, seconds: float | None) -> None:
        self.eta.job_done(shape, seconds)
        self._last_event = self._clock()
        if self._bar is not None:
            self._bar.update(1)

    def _eta_text(self) -> str:
        left = self.eta.seconds_left()
        if left is None:
            left = self._pool_left
        if left is not None:
            # Time already spent on the jobs in flight is part of what the estimate counted.
            left = max(0.0, left - (self._clock() - self._last_event))
        if self.eta.finished >= self.total:
            return "batch done"
        if left is None:
            return "batch ETA unknown until a job finishes"
        finish = time.strftime("%H:%M", time.localtime(self._wall() + left))
        return f"batch ETA {format_duration(left)}, finishes ~{finish}"

    def _line(self, text: str) -> None:
        self._last_line = self._clock()
        try:
            print(text, file=self.stream, flush=True)
        except (OSError, ValueError):  # a closed log or terminal must not fail the batch
            pass

    def _beat(self) -> None:
        while not self._stop.wait(min(self._heartbeat, 60.0) / 4):
            self.tick()


def _name(job: Job) -> str:
    return job.output_name or job.source or job.job_id
