"""Several worker processes sharing one database: every job done exactly once, even when one dies."""

import os
import sqlite3
import subprocess
import sys

import pytest

from batchgen.errors import BatchgenError
from batchgen.outputs.atomic import sha256_file
from batchgen.outputs.metadata_index import read as read_index
from batchgen.run.local_pool import parse_gpus, refuse_network_filesystem
from conftest import small_yaml


def render(manifest, out, *extra, env=None):
    return subprocess.run(
        [sys.executable, "-m", "batchgen", "render", str(manifest), "--out", str(out), "--no-progress", *extra],
        env=dict(os.environ, **(env or {})),
        capture_output=True,
        text=True,
        timeout=600,
    )


def rows(out):
    conn = sqlite3.connect(out / "batchgen.db")
    result = conn.execute("select job_id, status, attempts, worker from jobs").fetchall()
    conn.close()
    return result


def assert_each_done_once(out, total):
    index = read_index(out)
    assert len(index) == total and len({r["job_id"] for r in index}) == total
    for row in index:
        assert sha256_file(out / row["file_name"]) == row["sha256"]
    assert [r for r in rows(out) if r[1] != "done"] == []
    assert len(list((out / "videos").glob("*.mp4"))) == total


def test_three_workers_share_the_queue(tmp_path):
    manifest = small_yaml(tmp_path, ["fox", "waves", "city", "forest"], seeds=[1, 2])
    out = tmp_path / "out"
    result = render(manifest, out, "--workers", "3")
    assert result.returncode == 0, result.stderr
    assert_each_done_once(out, 8)
    table = rows(out)
    assert all(attempts == 1 for _, _, attempts, _ in table)  # nobody rendered a job twice
    assert len({worker.rsplit(":", 1)[-1] for *_, worker in table}) >= 2  # the work really was shared


@pytest.mark.parametrize("write_behind", ["0", "1"])
def test_a_worker_killed_mid_job_has_its_job_taken_over(tmp_path, write_behind):
    manifest = small_yaml(tmp_path, ["fox", "waves", "city"], seeds=[1, 2])
    out = tmp_path / "out"
    env = {"BATCHGEN_FAULT": "video_written:1", "BATCHGEN_FAULT_WORKER": "w1", "BATCHGEN_LEASE_SECONDS": "3",
           "BATCHGEN_WRITE_BEHIND": write_behind}
    result = render(manifest, out, "--workers", "2", env=env)
    assert "worker 1" in result.stderr and "-9" in result.stderr, result.stderr
    assert result.returncode == 0, result.stderr
    assert_each_done_once(out, 6)
    attempts = sorted(a for _, _, a, _ in rows(out))
    if write_behind == "0":
        assert attempts == [1, 1, 1, 1, 1, 2]  # only the killed job was rendered again
    else:
        # The kill came while the video was being written behind the worker's next job, which it also held:
        # those two, and only those, were taken over.
        assert attempts in ([1, 1, 1, 1, 1, 2], [1, 1, 1, 1, 2, 2])
    assert not [p for p in out.rglob("*partial*")]


def test_gpu_list_parsing():
    assert parse_gpus("0,1, 3") == ["0", "1", "3"]
    for bad in ("", "a,b", "0,0"):
        with pytest.raises(BatchgenError):
            parse_gpus(bad)


def test_network_filesystems_are_refused(tmp_path, monkeypatch):
    import batchgen.run.local_pool as workers

    monkeypatch.setattr(workers, "filesystem_type", lambda path: "nfs4")
    with pytest.raises(BatchgenError, match="network filesystem"):
        refuse_network_filesystem(tmp_path)
    monkeypatch.setattr(workers, "filesystem_type", lambda path: "ext4")
    refuse_network_filesystem(tmp_path)
