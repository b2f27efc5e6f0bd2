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
from batchgen.outputs import gallery
from batchgen.outputs import metadata_index
from batchgen.outputs.atomic import remove_partials
from batchgen.outputs.unwritable import OutputUnwritable
from batchgen.run.progress import BatchProgress
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


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem holding `path`, from /proc/mounts (Linux); None where unknown."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best, fstype = "", None
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1].replace("\\040", " ")
        if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
            best, fstype = mount, parts[2]
    return fstype


def refuse_network_filesystem(out: Path) -> None:
    fstype = filesystem_type(out)
    if fstype in NETWORK_FS:
        raise BatchgenError(
            f"{out} is on a network filesystem ({fstype}). batchgen's database and lock are for one host: "
            "workers on several hosts sharing OUT over a network filesystem can corrupt it or render jobs twice. "
            "Put OUT on a local disk; to use several hosts, run on a Ray cluster with --ray."
        )


def run_workers(manifest, out: Path, store, choice, precision: str, pending: int, summary, workers: list[str],
                progress: bool, log) -> object:
    """Start one worker per entry of `workers` (a CUDA_VISIBLE_DEVICES value, or 'cpu'), wait for them."""
    from batchgen.run.supervisor import VIDEO_DIR, Interrupted, _SignalGuard

    refuse_network_filesystem(out)
    lease = settings.lease_seconds()
    config = {
        "out": str(out),
        "model": manifest.model,
        "revision": manifest.revision,
        "profile": choice.name,
        "quality": manifest.quality,
        "approximate": manifest.approximate,
        "precision": precision,
        "lease_seconds": lease,
    }
    run_id = store.start_run(manifest=str(manifest.path), model=manifest.model, profile=choice.name,
                             profile_reason=f"{choice.reason}; {len(workers)} workers")
    log(f"batchgen: {len(workers)} worker(s) on {', '.join('cpu' if w == 'cpu' else 'GPU ' + w for w in workers)}")
    done_before = store.counts()["done"]
    procs = [_start_worker(config, w, n, len(workers)) for n, w in enumerate(workers)]
    bar = BatchProgress(pending, progress)
    exit_word = "finished"
    try:
        with _SignalGuard():
            try:
                while any(p.poll() is None for p in procs):
                    time.sleep(0.5)
                    bar.set_finished(store.counts()["done"] - done_before)
            except KeyboardInterrupt:
                summary.interrupted_by = signal.SIGINT
            except Interrupted as exc:
                summary.interrupted_by = exc.signum
            if summary.interrupted_by is not None:
                exit_word = "interrupted"
                for p in procs:
                    if p.poll() is None:
                        p.send_signal(signal.SIGTERM)
                for p in procs:
                    p.wait()
    finally:
        bar.close()
        # A worker that died (or was stopped) may leave its job running; it is ours again.
        store.reset_running()
        # Every worker has stopped: no temporary file is still being written.
        remove_partials(out / VIDEO_DIR)
        metadata_index.rebuild(out, store)
        gallery.maybe_write_gallery(out, store, force=True)
        store.finish_run(run_id, exit_word)
    for n, p in enumerate(procs):
        if p.returncode not in (0, -signal.SIGTERM, 128 + signal.SIGTERM) and summary.interrupted_by is None:
            log(f"batchgen: worker {n} ({workers[n]}) exited with status {p.returncode}")
    unwritable = [p for p in procs if p.returncode == OutputUnwritable.exit_code]
    if unwritable and summary.interrupted_by is None:
        raise OutputUnwritable(
            f"A worker could not write to {out} (disk full, read-only or no permission; its message is above). "
            "The batch stopped; free space or fix permissions, then run the same command again."
        )
    counts = store.counts()
    summary.rendered = counts["done"] - done_before
    summary.failed = counts["failed"]
    if summary.interrupted_by is None and counts["pending"]:
        log(f"batchgen: {counts['pending']} job(s) still pending after every worker stopped; run again to resume")
        summary.failed = summary.failed or counts["pending"]
    return summary


def _start_worker(config: dict, where: str, n: int, total: int) -> subprocess.Popen:
    env = dict(os.environ)
    if where == "cpu":
        device = "cpu"
        # Share the cores instead of every worker starting one thread per core.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // total)))
    else:
        env["CUDA_VISIBLE_DEVICES"] = where
        device = "cuda:0"
    payload = json.dumps(dict(config, device=device, worker=f"w{n}"))
    return subprocess.Popen([sys.executable, "-m", "batchgen.run.pool_worker", payload], env=env)
