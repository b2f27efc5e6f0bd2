"""Reproducibility as a checked guarantee: fingerprints, `batchgen reproduce`, re-creating a batch from its
records, and same seed -> same frames wherever and however a job renders."""

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from batchgen.engine import environment
from batchgen.engine import fingerprint
from batchgen.errors import ManifestError
from batchgen.outputs.metadata_index import read as read_index
from batchgen.manifest import load_manifest
from batchgen.store.migrations import MIGRATIONS
from batchgen.run.reproduce import reproduce
from batchgen.store import Store
from conftest import render_small_batch, small_yaml
from conftest import run_cli as run

PROMPTS = ["a red fox in snow", "waves on a rocky shore"]
SEEDS = [1, 2]




def frames_by_name(out: Path) -> dict:
    conn = sqlite3.connect(out / "batchgen.db")
    try:
        return dict(conn.execute("select output_name, frames_sha256 from jobs where status='done'").fetchall())
    finally:
        conn.close()


def snapshot(out: Path) -> dict:
    """Everything of OUT that reproduce must leave alone: the jobs rows, the index, the videos."""
    conn = sqlite3.connect(out / "batchgen.db")
    rows = conn.execute("select * from jobs order by job_id").fetchall()
    conn.close()
    files = {
        p.relative_to(out).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in [out / "metadata.jsonl", *sorted((out / "videos").iterdir())]
    }
    return {"rows": rows, "files": files}


def edit_row(out: Path, job_id: str, **changes) -> None:
    conn = sqlite3.connect(out / "batchgen.db")
    sets = ", ".join(f"{k}=?" for k in changes)
    conn.execute(f"update jobs set {sets} where job_id=?", [*changes.values(), job_id])
    conn.commit()
    conn.close()


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """One small batch (2 prompts x 2 seeds), rendered once; tests that edit it work on a copy."""
    return render_small_batch(tmp_path_factory.mktemp("rendered"), PROMPTS, SEEDS)


def copy_of(out: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(out, dest)
    return dest


def job_ids(out: Path) -> list[str]:
    return [row["job_id"] for row in read_index(out)]


# ------------------------------------------------------------------------------ fingerprint recording
def test_every_finished_job_records_its_fingerprint_in_the_database_and_the_index(rendered):
    _, out = rendered
    conn = sqlite3.connect(out / "batchgen.db")
    db = dict(conn.execute("select job_id, fingerprint from jobs").fetchall())
    conn.close()
    for row in read_index(out):
        fp = row["fingerprint"]
        assert json.loads(db[row["job_id"]]) == fp
        assert fp["resolved_revision"] == row["resolved_revision"] and fp["resolved_revision"].startswith("tiny-")
        assert fp["profile"] == "cpu" and fp["precision"] == "fp32"
        assert fp["dtypes"]["transformer"] == "float32"
        assert fp["scheduler"]["class"] == "FlowMatchEulerDiscreteScheduler" and "shift" in fp["scheduler"]
        assert set(fp["versions"]) >= {"torch", "diffusers", "transformers", "accelerate", "bitsandbytes"}
        assert {"cuda", "cudnn", "gpu"} <= set(fp)
        assert fp["deterministic"]["deterministic_algorithms"] is False
        assert len(row["frames_sha256"]) == 64 and len(row["sha256"]) == 64


def test_fingerprint_diff_names_each_field_that_changed():
    recorded = {"profile": "resident", "versions": {"torch": "2.4.1", "diffusers": "0.42.1"}, "gpu": "H100"}
    now = {"profile": "resident", "versions": {"torch": "2.5.0", "diffusers": "0.42.1"}, "cuda": "12.4"}
    assert fingerprint.diff(recorded, now) == [
        "cuda: recorded (absent), now '12.4'",
        "gpu: recorded 'H100', now (absent)",
        "versions.torch: recorded '2.4.1', now '2.5.0'",
    ]
    assert fingerprint.diff(recorded, json.loads(json.dumps(recorded))) == []


def test_an_older_database_gains_the_fingerprint_column(tmp_path):
    import sqlite_utils

    db = sqlite_utils.Database(tmp_path / "batchgen.db")
    initial = MIGRATIONS[0]  # a database made before fingerprints existed
    initial(db)
    db["_batchgen_migrations"].insert({"name": initial.__name__, "applied_at": "then"}, pk="name")
    db.conn.close()
    Store(tmp_path).close()
    columns = {c.name for c in sqlite_utils.Database(tmp_path / "batchgen.db")["jobs"].columns}
    assert "fingerprint" in columns


# ------------------------------------------------------------------------------ batchgen reproduce
def test_reproduce_says_identical_and_leaves_out_untouched(rendered):
    _, out = rendered
    before = snapshot(out)
    jid = job_ids(out)[1]
    result = run("reproduce", out, jid, "--no-progress")
    assert result.exit_code == 0, result.output
    assert f"{jid} (videos/{jid}.mp4): identical" in result.output
    scratch = out / ".reproduce" / jid
    report = json.loads((scratch / "report.json").read_text())
    assert report["identical"] is True and report["fingerprint_diff"] == [] and report["video_sha256_matches"] is True
    assert (scratch / f"{jid}.mp4").is_file()
    assert snapshot(out) == before


def test_a_tampered_seed_differs_with_the_pixel_difference_and_exits_1(rendered, tmp_path):
    _, src = rendered
    out = copy_of(src, tmp_path)
    jid = job_ids(out)[0]
    edit_row(out, jid, seed="999")
    result = run("reproduce", out, jid[:8], "--no-progress")
    assert result.exit_code == 1, result.output
    line = next(l for l in result.output.splitlines() if l.startswith(jid))
    assert ": differs: max abs pixel difference " in line
    mad = int(line.split("max abs pixel difference ")[1].split(",")[0])
    psnr = float(line.split("PSNR ")[1].split(" dB")[0])
    assert mad > 0 and 0 < psnr < 100
    assert "no longer hash to this job id" in result.output


def test_a_tampered_frames_hash_differs_and_says_the_video_decodes_the_same(rendered, tmp_path):
    _, src = rendered
    out = copy_of(src, tmp_path)
    jid = job_ids(out)[0]
    edit_row(out, jid, frames_sha256="0" * 64)
    [result] = reproduce(out, [jid], log=lambda s: None)
    assert not result.identical and result.max_abs_diff == 0 and result.psnr == float("inf")
    assert "decode to the same pixels" in result.compared
    assert "differs" in result.report() and "PSNR inf dB" in result.report()


def test_reproduce_lists_the_fingerprint_fields_that_differ_from_now(rendered, monkeypatch):
    _, out = rendered
    jid = job_ids(out)[2]
    real = environment.library_versions()
    monkeypatch.setattr(environment, "library_versions", lambda: {**real, "torch": "0.0.0-elsewhere"})
    [result] = reproduce(out, [jid], log=lambda s: None)
    assert result.identical  # the frames decide identical; the fingerprint says what changed around them
    assert result.fingerprint_diff == [f"versions.torch: recorded {real['torch']!r}, now '0.0.0-elsewhere'"]
    assert "versions.torch" in result.report()


def test_reproduce_compares_what_an_older_metadata_row_holds(rendered, tmp_path):
    _, src = rendered
    out = copy_of(src, tmp_path)
    jid = job_ids(out)[0]
    conn = sqlite3.connect(out / "batchgen.db")
    meta = json.loads(conn.execute("select metadata from jobs where job_id=?", [jid]).fetchone()[0])
    conn.close()
    del meta["fingerprint"]
    meta["versions"]["diffusers"] = "0.30.0"
    edit_row(out, jid, fingerprint=None, metadata=json.dumps(meta))
    [result] = reproduce(out, [jid], log=lambda s: None)
    assert result.identical and not result.fingerprint_recorded
    assert result.fingerprint_diff == ["versions.diffusers: recorded '0.30.0', now '0.42.1'"]


def test_reproduce_renders_with_the_recorded_cpu_thread_count(tmp_path):
    # On the CPU the thread count changes how sums are split, and so the frames' last bits.
    manifest = small_yaml(tmp_path, [PROMPTS[0]], seeds=[1])
    out = tmp_path / "out"
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run("render", manifest, "--out", out, "--no-progress").exit_code == 0
    finally:
        torch.set_num_threads(old)
    [row] = read_index(out)
    assert row["fingerprint"]["cpu_threads"] == 1
    [result] = reproduce(out, [row["job_id"]], log=lambda s: None)
    assert result.identical and result.fingerprint_diff == []
    assert torch.get_num_threads() == old


def test_reproduce_header_and_fingerprint_agree_on_cpu_threads(rendered, monkeypatch):
    # BATCHGEN_CPU_THREADS=2 must not override the recorded count the header announces.
    _, out = rendered
    jid = job_ids(out)[0]
    monkeypatch.setenv("BATCHGEN_CPU_THREADS", "2")
    lines = []
    [result] = reproduce(out, [jid], log=lines.append)
    assert any("1 CPU thread" in line and "as recorded" in line for line in lines), lines
    assert not any(d.startswith("cpu_threads") for d in result.fingerprint_diff), result.fingerprint_diff
    assert result.identical


def test_reproduce_says_when_the_recorded_video_is_missing_or_damaged(rendered, tmp_path):
    _, src = rendered
    out = copy_of(src, tmp_path)
    gone, cut, whole = job_ids(out)[:3]
    rows = {r["job_id"]: r for r in read_index(out)}
    (out / rows[gone]["file_name"]).unlink()
    (out / rows[cut]["file_name"]).write_bytes(b"")
    result = run("reproduce", out, gone, cut, whole, "--json", "--no-progress")
    reports = {r["job_id"]: r for r in map(json.loads, (l for l in result.stdout.splitlines() if l.startswith("{")))}
    # The frames are still judged by the recorded frames_sha256 ...
    assert all(r["identical"] for r in reports.values()) and result.exit_code == 0, result.output
    # ... and the report says what happened to the file.
    assert "is missing" in reports[gone]["recorded_video_problem"]
    assert "is damaged: 0 bytes" in reports[cut]["recorded_video_problem"]
    assert reports[whole]["recorded_video_problem"] == ""
    assert "2 recorded video(s) missing or damaged" in result.stderr
    text = run("reproduce", out, gone, "--no-progress")
    assert "identical" in text.stdout and f"{rows[gone]['file_name']} is missing" in text.stdout, text.output


def test_reproduce_sample_draws_distinct_done_jobs(rendered):
    _, out = rendered
    result = run("reproduce", out, "--sample", 2, "--seed", 5, "--json", "--no-progress")
    assert result.exit_code == 0, result.output
    reports = [json.loads(l) for l in result.stdout.splitlines() if l.startswith("{")]
    assert len(reports) == 2 and len({r["job_id"] for r in reports}) == 2
    assert all(r["identical"] for r in reports) and {r["job_id"] for r in reports} <= set(job_ids(out))
    again = run("reproduce", out, "--sample", 2, "--seed", 5, "--json", "--no-progress")
    assert [json.loads(l)["job_id"] for l in again.stdout.splitlines() if l.startswith("{")] == [r["job_id"] for r in reports]


def test_reproduce_refuses_bad_requests_clearly(rendered, tmp_path):
    _, src = rendered
    for args, words in [
        ((src, "ffffffffffffffff"), "No job 'ffffffffffffffff'"),
        ((src,), "--sample"),
        ((src, job_ids(src)[0], "--sample", 1), "not both"),
        ((src, job_ids(src)[0], "--profile", "nf4"), "precision"),
        ((tmp_path, "abc"), "No batchgen database"),
    ]:
        result = run("reproduce", *args)
        assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output, result.output
    out = copy_of(src, tmp_path)
    jid = job_ids(out)[0]
    edit_row(out, jid, status="failed")
    result = run("reproduce", out, jid)
    assert result.exit_code == 2 and "failed, not done" in result.output


# ------------------------------------------------------------------------------ re-creating a batch
@pytest.mark.parametrize("records", ["metadata.jsonl", "batchgen.db"])
def test_render_from_records_recreates_the_same_files_and_frames(rendered, tmp_path, records):
    _, out = rendered
    new = tmp_path / "new"
    result = run("render", out / records, "--out", new, "--no-progress")
    assert result.exit_code == 0, result.output
    assert frames_by_name(new) == frames_by_name(out)
    assert sorted(p.name for p in (new / "videos").iterdir()) == sorted(p.name for p in (out / "videos").iterdir())
    assert sorted(job_ids(new)) == sorted(job_ids(out))


def test_records_keep_names_that_no_template_could_make(rendered, tmp_path):
    _, out = rendered
    rows = read_index(out)
    rows[0]["file_name"] = "videos/fox, take 1.mp4"
    rows[1]["file_name"] = "videos/other.name.v2.mp4"
    path = tmp_path / "metadata.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    m = load_manifest(path, out=tmp_path / "new")
    jobs = m.expand("fp32")
    assert [j.output_name for j in jobs] == ["fox, take 1", "other.name.v2"]
    assert [j.job_id for j in jobs] == [rows[0]["job_id"], rows[1]["job_id"]]
    assert m.model == "tiny" and m.profile == "cpu" and m.out == tmp_path / "new"


def test_bad_records_are_named_by_file_and_line(rendered, tmp_path):
    _, out = rendered
    lines = (out / "metadata.jsonl").read_text().splitlines()
    bad = tmp_path / "metadata.jsonl"
    bad.write_text("\n".join([lines[0], "{not json", lines[1]]) + "\n")
    with pytest.raises(ManifestError) as err:
        load_manifest(bad)
    assert f"{bad}:2: not valid JSON" in str(err.value)

    rows = [json.loads(l) for l in lines]
    rows[2]["model"] = "genmo/mochi-1-preview"
    del rows[3]["seed"]
    rows[1]["num_frames"] = 8
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ManifestError) as err:
        load_manifest(mixed)
    text = str(err.value)
    assert f"{mixed}:4: field 'seed' is missing" in text
    assert f"{mixed}:2: field 'num_frames': num_frames 8 is not 6k+1" in text
    assert "disagree on 'model'" in text and f"{mixed}:1" in text and f"{mixed}:3" in text

    not_db = tmp_path / "batchgen.db"
    not_db.write_bytes(b"not a database" * 100)
    result = run("render", not_db, "--out", tmp_path / "x")
    assert result.exit_code == 2 and str(not_db) in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------------------ same seed, same frames
def _subprocess_render(manifest: Path, out: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("BATCHGEN_FAULT", None)
    if fault:
        env["BATCHGEN_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "batchgen", "render", str(manifest), "--out", str(out), "--no-progress"],
        env=env, capture_output=True, text=True, timeout=300,
    )


def _frames_of(out: Path, prompt: str, seed: int) -> str:
    conn = sqlite3.connect(out / "batchgen.db")
    try:
        return conn.execute(
            "select frames_sha256 from jobs where prompt=? and seed=? and status='done'", (prompt, str(seed))
        ).fetchone()[0]
    finally:
        conn.close()


def test_same_job_same_frames_first_or_last_in_different_batches_in_two_processes(rendered, tmp_path):
    _, reference = rendered
    common = PROMPTS[0]
    first = small_yaml(tmp_path, [common, "a quiet harbour at dawn"], seeds=[1], name="first.yaml")
    last = small_yaml(
        tmp_path, ["a city street", "rain on a window", common], seeds=[1], name="last.yaml",
        extra="""
        output_name: "{prompt}-{seed}"
        """,
    )
    # other neighbours: guidance off and a negative prompt, so the batches hold different texts and modes
    text = last.read_text().replace('  - prompt: "rain on a window"', '  - {prompt: "rain on a window", guidance_scale: 1}')
    text = text.replace('  - prompt: "a city street"', '  - {prompt: "a city street", negative_prompt: "blurry"}')
    last.write_text(text)
    a = _subprocess_render(first, tmp_path / "a")
    b = _subprocess_render(last, tmp_path / "b")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    positions = sqlite3.connect(tmp_path / "b" / "batchgen.db").execute("select prompt from jobs order by position").fetchall()
    assert positions[-1][0] == common
    expected = _frames_of(reference, common, 1)
    assert _frames_of(tmp_path / "a", common, 1) == expected
    assert _frames_of(tmp_path / "b", common, 1) == expected


def test_same_frames_after_a_crash_and_resume(rendered, tmp_path):
    manifest, reference = rendered
    out = tmp_path / "out"
    killed = _subprocess_render(manifest, out, fault="video_published:2")
    assert killed.returncode == -signal.SIGKILL
    assert len(frames_by_name(out)) == 1
    resumed = _subprocess_render(manifest, out)
    assert resumed.returncode == 0, resumed.stderr
    assert frames_by_name(out) == frames_by_name(reference)


# ------------------------------------------------------------------------------ --deterministic
def test_deterministic_render_says_what_it_costs_records_it_and_gives_the_same_frames(rendered, tmp_path, monkeypatch):
    _, reference = rendered
    # The flag sets CUBLAS_WORKSPACE_CONFIG for the process; undo it after the test (set, then delete:
    # monkeypatch restores the variable's absence).
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "unset-by-test")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    manifest = small_yaml(tmp_path, [PROMPTS[1]], seeds=[2])
    out = tmp_path / "det"
    result = run("render", manifest, "--out", out, "--deterministic", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "--deterministic" in result.output and "costs" in result.output
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") in (":4096:8", ":16:8")
    assert not torch.are_deterministic_algorithms_enabled()  # the process is left as it was
    [row] = read_index(out)
    assert row["fingerprint"]["deterministic"]["deterministic_algorithms"] is True
    assert row["fingerprint"]["deterministic"]["cudnn_benchmark"] is False
    assert _frames_of(out, PROMPTS[1], 2) == _frames_of(reference, PROMPTS[1], 2)
    # reproduce turns deterministic mode on for a job that was rendered with it
    [again] = reproduce(out, [row["job_id"]], log=lambda s: None)
    assert again.identical and again.fingerprint_diff == []


def test_gpu_repro_benchmark_runs_on_the_cpu_with_tiny(capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import gpu_repro
    finally:
        sys.path.pop(0)
    results = gpu_repro.main(["--tiny", "--frames", "7", "--height", "32", "--width", "48", "--steps", "2"])
    assert [r["profile"] for r in results] == ["cpu"] and results[0]["identical"] is True
    assert "cpu" in capsys.readouterr().out
