"""The run lifecycle: signals at any moment, workers that die with their render, unusable --out and --device,
a disk that fills up. Real subprocesses where the behaviour is the process's own (signals, exit codes)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchgen.outputs.unwritable import SpaceReserve
from conftest import run_cli, small_yaml


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHGEN_")}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def start(manifest: Path, out: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    # A fresh session: SIGINT is not ignored as it is for a shell's background job, and a kill of this
    # process group reaches nothing of the test's.
    return subprocess.Popen(
        [sys.executable, "-m", "batchgen", "render", str(manifest), "--out", str(out), "--no-progress", *extra],
        env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )


def statuses(out: Path) -> dict[str, int]:
    if not (out / "batchgen.db").exists():
        return {}
    conn = sqlite3.connect(out / "batchgen.db")
    try:
        return dict(conn.execute("select status, count(*) from jobs group by status").fetchall())
    except sqlite3.OperationalError:
        return {}
    finally:
        conn.close()


@pytest.fixture(scope="module")
def forty(tmp_path_factory):
    base = tmp_path_factory.mktemp("forty")
    prompts = [f"a small red fox number {i}" for i in range(20)]
    return small_yaml(base, prompts, seeds=[1, 2])


SWEEP = [(signal.SIGTERM, 0.3), (signal.SIGTERM, 1.5), (signal.SIGTERM, 2.5), (signal.SIGTERM, 3.0),
         (signal.SIGTERM, 3.5), (signal.SIGTERM, 5.0), (signal.SIGINT, 0.8), (signal.SIGINT, 2.8),
         (signal.SIGINT, 4.5)]


@pytest.mark.slow
@pytest.mark.parametrize("sig, after", SWEEP, ids=[f"{signal.Signals(s).name}-{t}s" for s, t in SWEEP])
def test_a_signal_at_any_moment_ends_the_run_with_its_code_and_no_traceback(forty, tmp_path, sig, after):
    out = tmp_path / "out"
    proc = start(forty, out)
    time.sleep(after)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode in (128 + sig, -sig), output  # -sig: killed by the default action before batchgen started
    assert "Traceback" not in output and "Exception ignored" not in output, output
    assert statuses(out).get("running", 0) == 0 or proc.returncode == -sig
    assert statuses(out).get("done", 0) < 40  # never swallowed: the batch did not run on to its end


@pytest.mark.slow
@pytest.mark.parametrize("gap", [0.0, 0.3])
def test_a_second_ctrl_c_exits_at_once_and_quietly(forty, tmp_path, gap):
    out = tmp_path / "out"
    proc = start(forty, out)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "videos").glob("*.mp4")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    time.sleep(gap)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    # -2: the second signal came while Python was already shutting down, which restores the default action:
    # still death by SIGINT (130 to a shell), at once and without a word.
    assert proc.returncode in (130, -signal.SIGINT), output
    assert "Traceback" not in output and "Exception ignored" not in output, output
    # Whatever the second signal cut short, the next run takes it back and finishes the batch.
    final = start(forty, out)
    output, _ = final.communicate(timeout=300)
    assert final.returncode == 0, output
    assert statuses(out) == {"done": 40}


def _children_rendering(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


def _worker_pids(parent: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == parent and b"batchgen.run.pool_worker" in cmdline:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
def test_workers_die_with_a_killed_render_and_hold_the_folder_until_then(tmp_path):
    # Long enough that orphans would still be rendering well after the kill.
    many = small_yaml(tmp_path, [f"a grey heron number {i}" for i in range(30)], seeds=[1, 2],
                      extra="")
    out = tmp_path / "out"
    proc = start(many, out, "--workers", "2")
    deadline = time.time() + 120
    workers: list[int] = []
    while time.time() < deadline and not (len(workers) == 2 and list((out / "videos").glob("*.mp4"))):
        workers = _worker_pids(proc.pid) or workers
        time.sleep(0.05)
    assert len(workers) == 2
    proc.kill()
    proc.communicate(timeout=30)
    # While a worker of the killed run lives, the folder is still taken.
    if _children_rendering(workers):
        second = start(many, out, "--workers", "2")
        output, _ = second.communicate(timeout=120)
        assert second.returncode == 3 or not _children_rendering(workers), output
    deadline = time.time() + 5
    while time.time() < deadline and _children_rendering(workers):
        time.sleep(0.1)
    assert _children_rendering(workers) == []
    assert statuses(out).get("done", 0) < 60  # they stopped; they did not finish the batch as orphans
    final = start(many, out, "--workers", "2")
    output, _ = final.communicate(timeout=600)
    assert final.returncode == 0, output
    assert statuses(out) == {"done": 60}


def test_out_under_a_regular_file_is_a_usage_error(small_manifest, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run_cli("render", small_manifest, "--out", blocker / "out", "--no-progress")
    assert result.exit_code == 2, result.output
    assert "--out" in result.output and str(blocker) in result.output


def test_out_under_proc_is_a_usage_error(small_manifest):
    result = run_cli("render", small_manifest, "--out", "/proc/batchgen-out", "--no-progress")
    assert result.exit_code == 2, result.output
    assert "--out" in result.output


@pytest.mark.parametrize("device", ["cuda", "cuda:7", "tpu"])
def test_a_device_torch_cannot_use_is_a_usage_error(small_manifest, tmp_path, device):
    import torch

    if torch.cuda.is_available() and device == "cuda":
        pytest.skip("this machine has CUDA")
    result = run_cli("render", small_manifest, "--out", tmp_path / "out", "--device", device, "--no-progress")
    assert result.exit_code == 2, result.output
    assert "--device" in result.output and device in result.output
    assert not (tmp_path / "out").exists()


def _tmpfs(path: Path, size: str):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")


@pytest.fixture
def tiny_disk(tmp_path):
    disk = tmp_path / "disk"
    _tmpfs(disk, "2m")
    yield disk
    subprocess.run(["umount", "-l", str(disk)])


def _fill(disk: Path, leave: int) -> None:
    """Fill the disk to `leave` bytes free."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def test_a_full_disk_at_database_creation_is_exit_4(small_manifest, tiny_disk):
    _fill(tiny_disk, 4096)
    result = run_cli("render", small_manifest, "--out", tiny_disk / "out", "--no-progress")
    assert result.exit_code == 4, result.output
    assert "disk is full" in result.output


def test_a_disk_that_fills_mid_batch_leaves_no_job_running(tmp_path, tiny_disk):
    manifest = small_yaml(tmp_path, [f"a fox number {i}" for i in range(8)], seeds=[1])
    out = tiny_disk / "out"
    result = run_cli("render", manifest, "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    outcomes = []
    # Several fill levels, so the disk fills at different moments: the database, a video, the gallery. (The
    # database's own growth per write decides which level lands where: the wider rows and the LoRA claim
    # index of m007 moved the first mid-batch stop past 150 kB.)
    for leave in (30_000, 60_000, 90_000, 120_000, 150_000, 250_000, 400_000):
        conn = sqlite3.connect(out / "batchgen.db")
        conn.execute("update jobs set status='pending', output_path=null")
        conn.commit()
        conn.close()
        for video in (out / "videos").glob("*.mp4"):
            video.unlink()
        # The run keeps a reserve for its last bookkeeping; a run that stopped gave it up.
        reserve = SpaceReserve(out)
        _fill(tiny_disk, leave + (0 if reserve.path.exists() else reserve.SIZE))
        result = run_cli("render", manifest, "--out", out, "--no-progress")
        os.unlink(tiny_disk / "filler")
        assert result.exit_code in (0, 4), result.output
        assert "Traceback" not in result.output
        assert statuses(out).get("running", 0) == 0, (leave, result.output)
        outcomes.append((result.exit_code, statuses(out).get("done", 0)))
    assert any(code == 4 and done > 0 for code, done in outcomes), outcomes  # some stopped in mid-batch
    result = run_cli("render", manifest, "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    assert statuses(out) == {"done": 8}
    assert not [p for p in out.rglob("*partial*")]


def test_partial_files_in_the_embeddings_cache_are_swept(small_manifest, tmp_path):
    out = tmp_path / "out"
    result = run_cli("render", small_manifest, "--out", out, "--no-progress")
    assert result.exit_code == 0
    cache = out / "cache" / "embeddings"
    left = cache / ".abc.pt.123-456.partial"
    left.write_bytes(b"half")
    result = run_cli("render", small_manifest, "--out", out, "--no-progress")
    assert result.exit_code == 0
    assert not left.exists()
