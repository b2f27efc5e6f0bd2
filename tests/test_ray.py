"""A local Ray cluster with 2 CPU actors: every job done once, the same frames as a local run,
and an actor killed mid-job is restarted by Ray and its job retried."""

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from batchgen.outputs.atomic import sha256_file
from batchgen.outputs.metadata_index import read as read_index
from conftest import small_yaml

pytest.importorskip("ray")


def render(manifest, out, *extra, env=None):
    return subprocess.run(
        [sys.executable, "-m", "batchgen", "render", str(manifest), "--out", str(out), "--no-progress", *extra],
        env=dict(os.environ, RAY_ADDRESS="", **(env or {})),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_ray_actors_render_each_job_once_with_local_frames(tmp_path):
    manifest = small_yaml(tmp_path, ["fox", "waves", "city"], seeds=[1, 2])
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert render(manifest, local).returncode == 0
    once = tmp_path / "fault-fired"
    result = render(manifest, remote, "--ray", "local", "--ray-actors", "2",
                    env={"BATCHGEN_FAULT": "actor_render:2", "BATCHGEN_FAULT_ONCE": str(once)})
    assert result.returncode == 0, result.stderr
    assert once.exists()  # an actor really was killed mid-job
    rows = read_index(remote)
    assert len(rows) == 6 and len({r["job_id"] for r in rows}) == 6
    for row in rows:
        assert sha256_file(remote / row["file_name"]) == row["sha256"]
    local_frames = {r["job_id"]: r["frames_sha256"] for r in read_index(local)}
    assert {r["job_id"]: r["frames_sha256"] for r in rows} == local_frames
    conn = sqlite3.connect(remote / "batchgen.db")
    statuses = conn.execute("select status, count(*), max(attempts) from jobs group by status").fetchall()
    assert statuses == [("done", 6, 1)]  # the retried call stayed one claim: nobody rendered a job twice
    # Issue 19: a Ray run is a run like any other: its runs row, no warning, a whole gallery page.
    runs = conn.execute("select profile, exit, profile_reason from runs").fetchall()
    assert len(runs) == 1 and runs[0][1] == "finished" and "Ray at local" in runs[0][2], runs
    assert "batchgen: warning" not in result.stderr and "could not write" not in result.stderr, result.stderr
    page = (remote / "index.html").read_text()
    assert page.rstrip().endswith("</html>") and all(r["file_name"] in page for r in rows)
    assert json.loads(rows[0]["fingerprint"] if isinstance(rows[0].get("fingerprint"), str) else json.dumps(rows[0].get("fingerprint", {}))) is not None
