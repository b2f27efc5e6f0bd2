"""Several worker processes on one host, one per GPU (or several on the CPU), sharing OUT/batchgen.db.

The parent holds the folder lock, plans the batch, and watches; each worker loads its own pipeline and
claims jobs with a lease it renews while it works. A worker that dies stops renewing, and once its lease
lapses another worker takes its job over, so no job is lost and none is claimed by two live workers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from batchgen import settings
from batchgen.outputs.unwritable import OutputUnwritable, filesystem_type
from batchgen.errors import BatchgenError

# Network filesystems whose locks and SQLite WAL cannot be trusted between hosts.
NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "sshfs", "glusterfs", "fuse.glusterfs",
              "lustre", "ceph", "fuse.ceph", "9p", "afs", "gpfs", "beegfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.rclone"}


def parse_gpus(spec: str) -> list[str]:
    """`all`, or a comma list of CUDA indices, as CUDA_VISIBLE_DEVICES values."""
    if spec.strip().lower() == "all":
        import torch

        count = torch.cuda.device_count()
        if count == 0:
            raise BatchgenError("--gpus all: no CUDA device is visible here. Drop --gpus to render on the CPU.")
        return [str(i) for i in range(count)]
    ids = [part.strip() for part in spec.split(",") if part.strip()]
    if not ids or not all(i.isdigit() for i in ids):
        raise BatchgenError(f"--gpus '{spec}': give 'all' or GPU indices separated by commas, e.g. 0,1,2,3")
    if len(set(ids)) != len(ids):
        raise BatchgenError(f"--gpus '{spec}': a GPU is listed twice; one worker per GPU")
    return ids


def refuse_network_filesystem(out: Path) -> None:
    fstype = filesystem_type(out)
    if fstype in NETWORK_FS:
        raise BatchgenError(
            f"{out} is on a network filesystem ({fstype}). batchgen's database and lock are for one host: "
            "workers on several hosts sharing OUT over a network filesystem can corrupt it or render jobs twice. "
            "Put OUT on a local disk; to use several hosts, run on a Ray cluster with --ray."
        )


class PoolRunner:
    """One worker process per entry of `workers` (a CUDA_VISIBLE_DEVICES value, or 'cpu'); this process
    watches them. Workers hold the folder lock through an inherited descriptor and die with this process."""

    def __init__(self, workers: list[str]):
        self.workers = workers

    def notes(self) -> list[str]:
        return [f"{len(self.workers)} workers"]

    def start(self, ctx) -> None:
        refuse_network_filesystem(ctx.out)

    def run(self, ctx) -> None:
        config = {
            "out": str(ctx.out),
            "model": ctx.manifest.model,
            "revision": ctx.manifest.revision,
            "profile": ctx.choice.name,
            "quality": ctx.manifest.quality,
            "approximate": ctx.manifest.approximate,
            "precision": ctx.precision,
            "checkpoint": ctx.checkpoint,
            "checkpoint_fields": ctx.manifest.checkpoint,
            "lease_seconds": settings.lease_seconds(),
            "parent": os.getpid(),
        }
        where = ", ".join("cpu" if w == "cpu" else "GPU " + w for w in self.workers)
        ctx.log(f"batchgen: {len(self.workers)} worker(s) on {where}")
        done_before = ctx.store.counts()["done"]
        procs = [_start_worker(config, w, n, len(self.workers), ctx.lock_fd) for n, w in enumerate(self.workers)]
        try:
            self._watch(ctx, procs, done_before)
        finally:
            for p in procs:  # never leave one behind, whatever stopped the watch
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait()
        self._report(ctx, procs)

    def _watch(self, ctx, procs: list[subprocess.Popen], done_before: int) -> None:
        while any(p.poll() is None for p in procs):
            if ctx.signals.received is not None:
                for p in procs:
                    if p.poll() is None:
                        p.send_signal(signal.SIGTERM)  # each puts its job back at its next safe point
                for p in procs:
                    p.wait()
                ctx.signals.check()
            time.sleep(0.2)
            ctx.progress.set_finished(ctx.store.counts()["done"] - done_before)

    def _report(self, ctx, procs: list[subprocess.Popen]) -> None:
        for n, p in enumerate(procs):
            if p.returncode not in (0, -signal.SIGTERM, 128 + signal.SIGTERM):
                ctx.log(f"batchgen: worker {n} ({self.workers[n]}) exited with status {p.returncode}")
        if any(p.returncode == OutputUnwritable.exit_code for p in procs):
            raise OutputUnwritable(
                f"A worker could not write to {ctx.out} (disk full, read-only or no permission; its message is "
                "above). The batch stopped; free space or fix permissions, then run the same command again."
            )
        ctx.store.reset_running()  # a worker that died may leave its job running; it is ours again
        left = ctx.store.pending_count(model=ctx.model, precision=ctx.precision, checkpoint=ctx.checkpoint)
        if left:
            ctx.summary.left_pending = left
            ctx.log(f"batchgen: {left} job(s) still pending after every worker stopped; run again to resume")


def _start_worker(config: dict, where: str, n: int, total: int, lock_fd: int | None) -> subprocess.Popen:
    env = dict(os.environ)
    if where == "cpu":
        device = "cpu"
        # Share the cores instead of every worker starting one thread per core.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // total)))
    else:
        env["CUDA_VISIBLE_DEVICES"] = where
        device = "cuda:0"
    payload = json.dumps(dict(config, device=device, worker=f"w{n}"))
    # Its own session: a Ctrl-C in the terminal reaches only this process, which stops the workers once.
    return subprocess.Popen([sys.executable, "-m", "batchgen.run.pool_worker", payload], env=env,
                            pass_fds=(lock_fd,) if lock_fd is not None else (), start_new_session=True)
