"""Resume after a SIGKILL delivered at named moments and at random times, in real subprocesses."""

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchgen.outputs.atomic import sha256_file
from batchgen.outputs.metadata_index import read as read_index
from conftest import small_yaml

FAULT_POINTS = ["claimed", "video_written", "video_published", "marked_done", "indexed"]


def start(manifest: Path, out: Path, fault: str | None = None, write_behind: str = "1") -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", BATCHGEN_WRITE_BEHIND=write_behind)
    env.pop("BATCHGEN_FAULT", None)
    if fault:
        env["BATCHGEN_FAULT"] = fault
    return subprocess.Popen(
        [sys.executable, "-m", "batchgen", "render", str(manifest), "--out", str(out), "--no-progress"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def snapshot(out: Path) -> dict:
    """job_id -> (sha256, finished_at, mtime) of every done job."""
    conn = sqlite3.connect(out / "batchgen.db")
    rows = conn.execute("select job_id, sha256, finished_at, output_path from jobs where status='done'").fetchall()
    conn.close()
    return {jid: (sha, fin, (out / path).stat().st_mtime_ns) for jid, sha, fin, path in rows}


def assert_consistent(out: Path, total: int) -> None:
    conn = sqlite3.connect(out / "batchgen.db")
    assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
    statuses = dict(conn.execute("select status, count(*) from jobs group by status").fetchall())
    conn.close()
    assert statuses == {"done": total}
    rows = read_index(out)
    assert len(rows) == total and len({r["job_id"] for r in rows}) == total
    for row in rows:
        assert sha256_file(out / row["file_name"]) == row["sha256"]
    files = sorted(p.name for p in out.rglob("*") if p.is_file() and "cache" not in p.parts)
    assert not [f for f in files if "partial" in f], files
    assert len([f for f in files if f.endswith(".mp4")]) == total


@pytest.fixture
def manifest(tmp_path):
    return small_yaml(tmp_path, ["a red fox in snow", "waves on a rocky shore"], seeds=[1, 2, 3])


@pytest.mark.parametrize("write_behind", ["0", "1"])
@pytest.mark.parametrize("point", FAULT_POINTS)
def test_sigkill_at_each_moment_loses_nothing_and_renders_nothing_twice(manifest, tmp_path, point, write_behind):
    out = tmp_path / "out"
    killed = start(manifest, out, fault=f"{point}:2", write_behind=write_behind)
    killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL
    before = snapshot(out)
    if write_behind == "0":
        assert len(before) in (1, 2)  # the first job finished; the second at most reached "done"
    else:
        # The first video may still have been encoding behind the second job when the kill came.
        assert len(before) in (0, 1, 2)
    resumed = start(manifest, out, write_behind=write_behind)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert_consistent(out, 6)
    after = snapshot(out)
    for job_id, state in before.items():
        assert after[job_id] == state  # finished before the kill: never rendered again, never touched


def test_sigkill_at_random_times(manifest, tmp_path):
    rng = random.Random(1234)
    out = tmp_path / "out"
    trials = 0
    for _ in range(3):
        proc = start(manifest, out)
        time.sleep(rng.uniform(2.0, 6.0))
        proc.kill()
        proc.communicate(timeout=60)
        trials += 1
    final = start(manifest, out)
    output, _ = final.communicate(timeout=300)
    assert final.returncode == 0, output
    assert_consistent(out, 6)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, 128 + signal.SIGINT)])
def test_sigterm_and_ctrl_c_put_the_job_back_and_exit_interrupted(manifest, tmp_path, sig, code):
    out = tmp_path / "out"
    proc = start(manifest, out)
    # Wait until the first video exists, so the signal lands mid-batch.
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "videos").glob("*.mp4")):
        time.sleep(0.05)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the batch finished before the signal arrived")
    assert proc.returncode == code, output
    assert "interrupted" in output
    conn = sqlite3.connect(out / "batchgen.db")
    assert conn.execute("select count(*) from jobs where status='running'").fetchone()[0] == 0
    done = conn.execute("select count(*) from jobs where status='done'").fetchone()[0]
    conn.close()
    assert len(read_index(out)) == done
    resumed = start(manifest, out)
    assert resumed.communicate(timeout=300)[0] and resumed.returncode == 0
    assert_consistent(out, 6)


def test_a_second_render_on_the_same_folder_is_refused_naming_the_first(manifest, tmp_path):
    out = tmp_path / "out"
    first = start(manifest, out)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "batchgen.lock").exists():
        time.sleep(0.05)
    time.sleep(0.5)
    second = start(manifest, out)
    output, _ = second.communicate(timeout=120)
    first.communicate(timeout=300)
    assert second.returncode == 3, output
    assert f"pid {first.pid}" in output and "Traceback" not in output
    assert_consistent(out, 6)
