"""One worker process: its own pipeline, claiming jobs from the shared database under a renewed lease.

Started by batchgen.run.local_pool with a JSON config as its only argument; not a user command.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
from pathlib import Path

from batchgen import settings
from batchgen.run.signals import STOP, Interrupted


class Heartbeat(threading.Thread):
    """Renews the lease of the job in hand every third of the lease, on a connection of its own."""

    def __init__(self, out: Path, worker: str, lease_seconds: float):
        super().__init__(daemon=True)
        self.out, self.worker, self.lease = out, worker, lease_seconds
        self.job_ids: tuple[str, ...] = ()  # rendering, and writing behind
        self._halt = threading.Event()

    def run(self) -> None:
        from batchgen.store.queue import Store

        store = Store(self.out)
        try:
            while not self._halt.wait(min(1.0, self.lease / 3)):
                _stop_if_orphaned()
                for job_id in self.job_ids:
                    store.renew(job_id, self.worker, self.lease)
        finally:
            store.close()

    def stop(self) -> None:
        self._halt.set()


_PARENT: int | None = None
PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """SIGTERM from the kernel the moment the render that started us dies (even by SIGKILL), and a check
    of the parent's pid where prctl is missing: a worker never renders on for a dead render."""
    global _PARENT
    _PARENT = parent
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the heartbeat's parent check below stands in
    _stop_if_orphaned()  # the parent may have died before prctl took effect


def _stop_if_orphaned() -> None:
    if _PARENT is not None and os.getppid() != _PARENT:
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str]) -> int:
    config = json.loads(argv[0])
    # Before the heavy imports: a signal while they run ends this worker at once (it holds no job yet).
    STOP.install(exit_outside_runs=True)
    die_with_parent(config["parent"])
    from batchgen.engine.renderer import Renderer
    from batchgen.run.context import RunSummary
    from batchgen.run.job_loop import work_loop
    from batchgen.store.queue import Store

    from batchgen.engine.environment import quiet_library_logs

    quiet_library_logs()
    # Fault-injection tests aim BATCHGEN_FAULT at one worker only.
    only = settings.fault_worker()
    if only and only != config["worker"]:
        os.environ.pop("BATCHGEN_FAULT", None)
    out = Path(config["out"])
    worker = f"{socket.gethostname()}:{os.getpid()}:{config['worker']}"
    store = Store(out)
    summary = RunSummary(out)
    renderer = Renderer.from_config(config, cache_dir=out / "cache" / "embeddings")
    heartbeat = Heartbeat(out, worker, config["lease_seconds"])
    heartbeat.start()

    def on_claim(job_ids):
        heartbeat.job_ids = job_ids

    def log(text: str) -> None:
        print(f"[{config['worker']}] {text}", file=sys.stderr, flush=True)

    from batchgen.engine import determinism
    from batchgen.outputs.unwritable import OutputUnwritable

    code = 0
    try:
        with determinism.settings(determinism.requested()):
            renderer.encode(store.pending_texts(model=config["model"], precision=config["precision"],
                                                checkpoint=config.get("checkpoint")))
            try:
                with STOP.acting():
                    work_loop(out, store, renderer, model=config["model"], precision=config["precision"],
                              checkpoint=config.get("checkpoint"),
                              summary=summary, log=log, worker=worker, lease_seconds=config["lease_seconds"],
                              on_claim=on_claim, signals=STOP)
            except OutputUnwritable as exc:
                # The disk is full for every worker alike: say so once, and let the parent stop the batch.
                log(f"Error: {exc}")
                code = exc.exit_code
            except KeyboardInterrupt:
                code = 128 + signal.SIGINT
            except Interrupted as exc:
                code = 128 + exc.signum
    finally:
        heartbeat.stop()
        store.close()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
