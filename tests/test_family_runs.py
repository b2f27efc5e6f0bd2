"""Issue 18 phase 2: a Wan batch through the queue, records, reproduce and a SIGKILL, keeping its family."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

import pytest

from batchgen.store.queue import row_to_job
from tests.conftest import run_cli, write_manifest
from tests.test_reproduce import _subprocess_render
from tests.test_reproduce import frames_by_name as _frames


def _rows(out: Path) -> list[dict]:
    conn = sqlite3.connect(out / "batchgen.db")
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("select * from jobs order by position")]
    finally:
        conn.close()


@pytest.fixture(scope="module")
def wan_batch(tmp_path_factory):
    base = tmp_path_factory.mktemp("wan")
    # 9 frames: Wan's 4k+1, which Mochi's 6k+1 refuses, so the whole path must carry the family.
    manifest = write_manifest(base / "jobs.yaml", """\
model: tiny-wan
defaults: {num_frames: 9, height: 32, width: 32, num_inference_steps: 2}
seeds: [1]
jobs:
  - prompt: a red fox in snow
  - prompt: waves on a rocky shore
""")
    out = base / "out"
    result = run_cli("render", manifest, "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    return manifest, out


def test_the_database_and_the_index_keep_the_family(wan_batch):
    _, out = wan_batch
    rows = _rows(out)
    assert [r["family"] for r in rows] == ["wan", "wan"]
    assert all(row_to_job(r).job_id == r["job_id"] for r in rows)  # read back, the id is the same
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["family"] for r in records] == ["wan", "wan"]
    assert all(r["num_frames"] == 9 and r["fps"] == 16 for r in records)  # Wan's default fps
    fp = records[0]["fingerprint"]
    assert fp["family"] == "wan" and "ftfy" in fp["prompt_cleaning"]


@pytest.mark.parametrize("records", ["metadata.jsonl", "batchgen.db"])
def test_records_recreate_the_wan_batch(wan_batch, tmp_path, records):
    _, out = wan_batch
    new = tmp_path / "new"
    result = run_cli("render", out / records, "--out", new, "--no-progress")
    assert result.exit_code == 0, result.output
    assert _frames(new) == _frames(out)
    assert [r["job_id"] for r in _rows(new)] == [r["job_id"] for r in _rows(out)]


def test_records_whose_family_contradicts_the_model_are_refused(wan_batch, tmp_path):
    _, out = wan_batch
    lines = (out / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[0])
    row["family"] = "ltx"
    edited = tmp_path / "metadata.jsonl"
    edited.write_text(json.dumps(row) + "\n", encoding="utf-8")
    result = run_cli("validate", edited)
    assert result.exit_code == 2 and f"{edited}:1: field 'family': model 'tiny-wan' is a Wan model" in result.output


def test_reproduce_a_wan_job_is_identical(wan_batch):
    _, out = wan_batch
    jid = _rows(out)[1]["job_id"]
    result = run_cli("reproduce", out, jid, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "identical" in result.output


def test_wan_batch_resumes_after_sigkill_with_the_same_frames(wan_batch, tmp_path):
    manifest, reference = wan_batch
    out = tmp_path / "out"
    killed = _subprocess_render(manifest, out, fault="video_published:2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(_frames(out)) == 1
    resumed = _subprocess_render(manifest, out)
    assert resumed.returncode == 0, resumed.stderr
    assert _frames(out) == _frames(reference)
    assert {r["family"] for r in _rows(out)} == {"wan"}


def test_renderer_refuses_a_job_of_another_family():
    from batchgen.engine.renderer import Renderer
    from batchgen.errors import BatchgenError
    from batchgen.job import Job

    job = Job(prompt="a fox", num_frames=9, height=32, width=32, num_inference_steps=2, model="tiny-wan", family="ltx")
    with pytest.raises(BatchgenError, match="'tiny-wan' is a Wan pipeline, but the job was made for the LTX-Video"):
        Renderer("tiny-wan", progress=False).render(job)


# ---------------------------------------------------------------- built-in names asked of the registry

@pytest.mark.parametrize("model", ["tiny", "tiny-wan", "tiny-ltx", "realsize-wan2.1-14b"])
def test_doctor_and_model_check_know_every_built_in_model(model):
    from batchgen.engine import doctor
    from batchgen.engine.families import family_for_model
    from batchgen.manifest.model_check import check_model

    check_model(model)  # no folder, no cache, no network: built in
    found = doctor.check_model(model, True)
    assert found.status == doctor.OK and family_for_model(model).title in found.detail


def test_only_tiny_models_are_cpu_sized():
    from batchgen.engine.families import is_tiny

    assert [is_tiny(m) for m in ("tiny", "tiny-wan", "tiny-ltx", "realsize", "realsize-ltx-2b", "genmo/mochi-1-preview")] == [
        True, True, True, False, False, False]


def test_a_tiny_wan_batch_on_the_cpu_is_not_warned_about(tmp_path):
    manifest = write_manifest(tmp_path / "jobs.yaml", "model: tiny-wan\ndefaults: {num_frames: 5, height: 16, width: 16, "
                              "num_inference_steps: 2}\njobs:\n  - a fox\n")
    result = run_cli("render", manifest, "--out", tmp_path / "out", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "hours per video" not in result.output


def test_a_wan_batch_exports_and_makes_a_sheet_and_a_gallery(wan_batch, tmp_path):
    import tarfile

    from batchgen.outputs.atomic import sha256_file
    from batchgen.outputs.metadata_index import read as read_index

    _, out = wan_batch
    rows = read_index(out)
    result = run_cli("sheet", out, "--output", tmp_path / "sheet.png")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sheet.png").stat().st_size > 0
    result = run_cli("export", out, tmp_path / "vbench", "--layout", "vbench")
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "vbench" / "batchgen_vbench.json").read_text(encoding="utf-8"))
    assert sorted(v["prompt"] for v in info.values()) == sorted(r["prompt"] for r in rows)
    assert all(sha256_file(tmp_path / "vbench" / name) == v["sha256"] for name, v in info.items())
    result = run_cli("export", out, tmp_path / "wds", "--layout", "webdataset")
    assert result.exit_code == 0, result.output
    with tarfile.open(next((tmp_path / "wds").glob("*.tar"))) as tar:
        metas = [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
    assert len(metas) == len(rows) and {m["family"] for m in metas} == {"wan"}
    page = (out / "index.html").read_text(encoding="utf-8")
    assert '"family": "wan"' in page or '"family":"wan"' in page
    assert all(r["file_name"] in page for r in rows)


@pytest.mark.slow
def test_a_wan_batch_on_ray_actors_gives_the_local_frames(wan_batch, tmp_path):
    import os
    import subprocess
    import sys

    from batchgen.outputs.metadata_index import read as read_index

    pytest.importorskip("ray")
    manifest, local = wan_batch
    remote = tmp_path / "ray"
    result = subprocess.run(
        [sys.executable, "-m", "batchgen", "render", str(manifest), "--out", str(remote), "--no-progress",
         "--ray", "local", "--ray-actors", "2"],
        env=dict(os.environ, RAY_ADDRESS=""), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    rows = read_index(remote)
    assert {r["family"] for r in rows} == {"wan"}
    assert {r["job_id"]: r["frames_sha256"] for r in rows} == {r["job_id"]: r["frames_sha256"] for r in read_index(local)}


def test_ltx_batch_resumes_after_sigkill_with_the_same_frames(tmp_path):
    # 17 frames: LTX's 8k+1, at its own 32-multiple size; fps is an input of the pipeline, so it is set.
    manifest = write_manifest(tmp_path / "jobs.yaml", """\
model: tiny-ltx
defaults: {num_frames: 17, height: 32, width: 64, num_inference_steps: 2, fps: 24}
seeds: [1]
jobs:
  - prompt: a red fox in snow
  - prompt: waves on a rocky shore
""")
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert run_cli("render", manifest, "--out", reference, "--no-progress").exit_code == 0
    killed = _subprocess_render(manifest, out, fault="video_published:2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(_frames(out)) == 1
    resumed = _subprocess_render(manifest, out)
    assert resumed.returncode == 0, resumed.stderr
    assert _frames(out) == _frames(reference) and len(_frames(out)) == 2
    assert {r["family"] for r in _rows(out)} == {"ltx"}
