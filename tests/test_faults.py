"""Faults an overnight batch meets: SIGKILL at every moment, a full or unwritable disk, videos deleted or
damaged by hand, an index edited by hand, a foreign database."""

import errno
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

import batchgen.outputs.metadata_index as index_module
import batchgen.outputs.video as video_module
from batchgen.outputs.atomic import sha256_file
from batchgen.outputs.metadata_index import read as read_index
from batchgen.run.lock import FolderLock
from conftest import render_small_batch, small_yaml
from conftest import run_cli as run

import crash_harness

PROMPTS = ["a red fox in snow", "waves on a rocky shore"]
SEEDS = [1, 2]
JOBS = len(PROMPTS) * len(SEEDS)
# The crash trials use a 2-job batch: every moment of the first and of the last job, at half the cost.
CRASH_PROMPTS = ["a red fox in snow"]
CRASH_JOBS = len(CRASH_PROMPTS) * len(SEEDS)
RANDOM_SEED = 20240607
RANDOM_TRIALS = 10




def db_rows(out: Path) -> list[dict]:
    conn = sqlite3.connect(out / "batchgen.db")
    conn.row_factory = sqlite3.Row
    rows = [dict(r) for r in conn.execute("select * from jobs order by position")]
    conn.close()
    return rows


def statuses(out: Path) -> dict:
    counts: dict = {}
    for row in db_rows(out):
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts


def leftovers(out: Path) -> list[str]:
    return [p.name for p in out.rglob("*") if p.is_file() and "partial" in p.name]


# -- SIGKILL at many moments, in real processes ---------------------------------------------------------
@pytest.fixture(scope="module")
def lab():
    lab = crash_harness.Lab()
    yield lab
    lab.close()


@pytest.fixture(scope="module")
def crash_manifest(tmp_path_factory):
    return small_yaml(tmp_path_factory.mktemp("crash"), CRASH_PROMPTS, seeds=SEEDS)


@pytest.fixture(scope="module")
def reference(lab, crash_manifest):
    """Checksums of an uninterrupted run (every video decoded once), and how long it took."""
    return crash_harness.reference_run(lab, crash_manifest, crash_manifest.parent / "reference")


def report(capsys, line: str) -> None:
    with capsys.disabled():
        print(f"\n{line}")


@pytest.mark.slow
def test_sigkill_at_every_fault_point_then_resume(lab, crash_manifest, reference, capsys):
    checksums, _seconds = reference
    moments = crash_harness.named_moments(CRASH_JOBS)
    trials = []
    for n, moment in enumerate(moments):
        out = crash_manifest.parent / f"named{n}"
        trials.append(crash_harness.crash_trial(lab, crash_manifest, out, checksums, fault=moment))
    # Every named moment comes up in a 4-job batch: each trial really was a kill at that moment.
    assert [t.moment for t in trials if not t.killed] == []
    report(
        capsys,
        f"crash trials, named fault points: {len(trials)} trials at {len(set(moments))} moments "
        f"({len(crash_harness.JOB_POINTS)} job points x jobs 1 and {CRASH_JOBS}, index rewrite at run start and end), "
        f"all killed, all resumed consistent",
    )


@pytest.mark.slow
def test_sigkill_at_seeded_random_times_then_resume(lab, crash_manifest, reference, capsys):
    checksums, seconds = reference
    trials = crash_harness.random_trials(
        lab, crash_manifest, crash_manifest.parent, checksums, seconds, count=RANDOM_TRIALS, seed=RANDOM_SEED
    )
    killed = [t for t in trials if t.killed]
    assert killed, "no random kill landed before the batch finished"
    report(
        capsys,
        f"crash trials, random times (seed {RANDOM_SEED}): {len(trials)} trials, {len(killed)} killed mid-run "
        f"(jobs done at the kill: {sorted(t.done_at_kill for t in killed)}), all resumed consistent; "
        f"moments: {', '.join(t.moment for t in trials)}",
    )


# -- a full or unwritable disk --------------------------------------------------------------------------
@pytest.fixture
def manifest(tmp_path):
    return small_yaml(tmp_path, PROMPTS, seeds=SEEDS)


def fail_nth(n: int, exc: OSError, real):
    calls = {"n": 0}

    def fake(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise exc
        return real(*args, **kwargs)

    return fake


def test_disk_full_while_writing_a_video_stops_the_batch_and_a_rerun_resumes(manifest, tmp_path, monkeypatch):
    out = tmp_path / "out"
    seen = []

    def publish(tmp, final):
        seen.append(tmp)
        assert tmp.exists()  # ffmpeg wrote it: the partial file that must not survive
        if len(seen) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(final))
        return real_publish(tmp, final)

    real_publish = video_module.publish
    monkeypatch.setattr(video_module, "publish", publish)
    result = run("render", manifest, "--out", out, "--no-progress")
    assert result.exit_code == 4, result.output
    assert "the disk is full" in result.output and "run the same command again" in result.output
    assert str(out / "videos") in result.output and "Traceback" not in result.output
    assert not seen[1].exists() and leftovers(out) == []
    rows = db_rows(out)
    # Stopped instead of failing job after job: one done, the one in flight back to pending with the
    # error recorded, the rest never tried.
    assert statuses(out) == {"done": 1, "pending": 3}
    in_flight = [r for r in rows if r["status"] == "pending" and r["attempts"]]
    assert len(in_flight) == 1 and "disk is full" in in_flight[0]["error"]
    assert len(read_index(out)) == 1
    assert len(list((out / "videos").iterdir())) == 1

    monkeypatch.setattr(video_module, "publish", real_publish)
    again = run("render", manifest, "--out", out, "--no-progress")
    assert again.exit_code == 0, again.output
    assert statuses(out) == {"done": JOBS}
    assert len(read_index(out)) == JOBS and leftovers(out) == []


def test_permission_denied_on_the_videos_folder_stops_the_batch(manifest, tmp_path, monkeypatch):
    out = tmp_path / "out"
    # Tests may run as root, where chmod does not stop writes: simulate what a read-only folder raises.
    real = video_module.publish
    monkeypatch.setattr(
        video_module,
        "publish",
        fail_nth(1, PermissionError(errno.EACCES, "Permission denied", str(out / "videos" / "x.mp4")), real),
    )
    result = run("render", manifest, "--out", out, "--no-progress")
    assert result.exit_code == 4, result.output
    assert "permission denied" in result.output and f"write permission on {out / 'videos'}" in result.output
    assert statuses(out) == {"pending": JOBS} and leftovers(out) == []


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
                    reason="root writes into read-only folders; the monkeypatched test covers it")
def test_a_read_only_videos_folder_stops_the_batch(manifest, tmp_path):
    out = tmp_path / "out"
    (out / "videos").mkdir(parents=True)
    (out / "videos").chmod(0o555)
    try:
        result = run("render", manifest, "--out", out, "--no-progress")
    finally:
        (out / "videos").chmod(0o755)
    assert result.exit_code == 4, result.output
    assert "permission denied" in result.output
    assert statuses(out) == {"pending": JOBS}
    assert run("render", manifest, "--out", out, "--no-progress").exit_code == 0


def test_disk_full_while_appending_to_the_index_keeps_the_job_and_stops(manifest, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = index_module.append
    monkeypatch.setattr(
        index_module, "append", fail_nth(1, OSError(errno.ENOSPC, "No space left on device", str(out / "metadata.jsonl")), real)
    )
    result = run("render", manifest, "--out", out, "--no-progress")
    assert result.exit_code == 4, result.output
    assert "metadata.jsonl" in result.output and "rendered and recorded" in result.output
    # The video is whole and recorded; the index is rewritten from the database at the end of the run.
    assert statuses(out) == {"done": 1, "pending": JOBS - 1}
    assert [r["job_id"] for r in read_index(out)] == [r["job_id"] for r in db_rows(out) if r["status"] == "done"]
    monkeypatch.setattr(index_module, "append", real)
    assert run("render", manifest, "--out", out, "--no-progress").exit_code == 0
    assert statuses(out) == {"done": JOBS} and len(read_index(out)) == JOBS


def test_a_full_database_after_the_video_landed_lets_the_rerun_replace_its_own_file(manifest, tmp_path, monkeypatch):
    from batchgen.store import Store

    out = tmp_path / "out"
    real = Store.mark_done
    monkeypatch.setattr(Store, "mark_done", fail_nth(2, sqlite3.OperationalError("database or disk is full"), real))
    result = run("render", manifest, "--out", out, "--no-progress")
    assert result.exit_code == 4, result.output
    assert "the disk is full" in result.output and "went back to the queue" in result.output
    # The second video was published before the database filled up: it stays, recorded as the job's own.
    assert statuses(out) == {"done": 1, "pending": JOBS - 1}
    assert len(list((out / "videos").iterdir())) == 2
    monkeypatch.setattr(Store, "mark_done", real)
    again = run("render", manifest, "--out", out, "--no-progress")
    assert again.exit_code == 0, again.output
    assert statuses(out) == {"done": JOBS} and len(read_index(out)) == JOBS
    for row in db_rows(out):
        assert sha256_file(out / row["output_path"]) == row["sha256"]


def test_a_read_only_output_at_the_start_is_reported_before_anything_renders(manifest, tmp_path, monkeypatch):
    out = tmp_path / "out"

    def read_only(final, text):
        raise OSError(errno.EROFS, "Read-only file system", str(final))

    monkeypatch.setattr(index_module, "write_text_atomic", read_only)
    result = run("render", manifest, "--out", out, "--no-progress")
    assert result.exit_code == 4, result.output
    assert "read-only" in result.output and "metadata.jsonl" in result.output and "Traceback" not in result.output


def test_a_half_written_index_line_is_cut_off(tmp_path, monkeypatch):
    out = tmp_path
    index_module.append(out, {"file_name": "videos/a.mp4", "job_id": "a"})
    before = (out / "metadata.jsonl").read_bytes()
    real_write = index_module.os.write

    def half_then_full(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(index_module.os, "write", half_then_full)
        with pytest.raises(OSError):
            index_module.append(out, {"file_name": "videos/b.mp4", "job_id": "b"})
    assert (out / "metadata.jsonl").read_bytes() == before


def test_a_video_ffmpeg_could_not_finish_is_never_published(tmp_path, monkeypatch):
    """imageio-ffmpeg ignores ffmpeg's exit status: a full disk silently leaves a truncated file."""
    import numpy as np

    frames = np.random.default_rng(0).integers(0, 255, (7, 32, 48, 3), dtype=np.uint8)
    whole = tmp_path / "whole.mp4"
    video_module.write_mp4(frames, whole, 8)
    truncated = tmp_path / ".short.partial"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    final = tmp_path / "short.mp4"
    full_disk = type("Usage", (), {"free": 0})
    monkeypatch.setattr(video_module.shutil, "disk_usage", lambda path: full_disk)
    with pytest.raises(OSError) as info:
        video_module._check_whole(truncated, final, 7)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(final)
    monkeypatch.setattr(video_module.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 2**40}))
    with pytest.raises(RuntimeError, match="frames decode"):
        video_module._check_whole(truncated, final, 7)
    video_module._check_whole(whole, final, 7)  # a whole file passes


# -- videos and index changed by hand; verify and index --------------------------------------------------
@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """A finished 4-job batch, rendered once and copied by each test that changes it."""
    return render_small_batch(tmp_path_factory.mktemp("rendered"), PROMPTS, SEEDS)


@pytest.fixture
def batch(rendered, tmp_path):
    manifest, out = rendered
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    return manifest, copy


def test_verify_passes_a_whole_batch(batch):
    _manifest, out = batch
    result = run("verify", out, "--decode")
    assert result.exit_code == 0, result.output
    assert f"{JOBS} finished video(s) checked (sha256 and decoded): {JOBS} ok, 0 bad" in result.output
    assert run("index", out).exit_code == 0


def test_verify_requeues_deleted_and_damaged_videos_and_a_render_restores_them(batch):
    manifest, out = batch
    rows = db_rows(out)
    deleted, damaged = out / rows[0]["output_path"], out / rows[1]["output_path"]
    deleted.unlink()
    damaged.write_bytes(damaged.read_bytes()[:-10] + b"0123456789")
    result = run("verify", out)
    assert result.exit_code == 1, result.output
    assert f"missing     {rows[0]['output_path']} (job {rows[0]['job_id']}" in result.output
    assert f"corrupt     {rows[1]['output_path']} (job {rows[1]['job_id']}" in result.output
    assert "back to pending" in result.output
    # The damaged file is kept aside, not deleted, and not as a video a loader would pick up.
    moved = out / "quarantine" / f"{damaged.name}.corrupt"
    assert moved.is_file() and not damaged.exists()
    assert statuses(out) == {"done": JOBS - 2, "pending": 2}
    assert len(read_index(out)) == JOBS - 2
    again = run("render", manifest, "--out", out, "--no-progress")
    assert again.exit_code == 0, again.output
    assert run("verify", out, "--decode").exit_code == 0
    for row in db_rows(out):
        assert sha256_file(out / row["output_path"]) == row["sha256"]


def test_index_edited_by_hand_is_explained_and_rebuilt(batch):
    _manifest, out = batch
    path = out / "metadata.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[1])
    row["prompt"] = "edited by hand"
    lines[1] = json.dumps(row)
    del lines[2]
    lines.append('{"file_name": "videos/extra.mp4", "job_id": "nope"}')
    lines.append("not json")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    check = run("index", out)
    assert check.exit_code == 1
    assert f"line 2: job {row['job_id']}: field(s) prompt differ from the database" in check.output
    assert "line 4: videos/extra.mp4 (job nope) is not a done job" in check.output
    assert "unreadable: line 5" in check.output and "missing rows for 1 done job(s)" in check.output
    assert "--rebuild" in check.output
    rebuilt = run("index", out, "--rebuild")
    assert rebuilt.exit_code == 0 and f"{JOBS} row(s) (it had 5)" in rebuilt.output
    assert run("index", out).exit_code == 0
    assert [json.loads(r["metadata"]) for r in db_rows(out)] == read_index(out)


def test_render_requeues_a_video_deleted_by_hand_and_keeps_a_hand_edited_index(batch):
    manifest, out = batch
    rows = db_rows(out)
    (out / rows[2]["output_path"]).unlink()
    path = out / "metadata.jsonl"
    path.write_text(path.read_text(encoding="utf-8").replace('"seed": 1', '"seed": 99', 1), encoding="utf-8")
    result = run("render", manifest, "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    assert f"1 finished video(s) are missing from {out} ({rows[2]['output_path']})" in result.output
    assert "edited by hand?" in result.output
    backups = list(out.glob("metadata.jsonl.edited-*.bak"))
    assert len(backups) == 1 and '"seed": 99' in backups[0].read_text(encoding="utf-8")
    assert "1 rendered" in result.output
    assert run("verify", out).exit_code == 0


def test_verify_and_rebuild_wait_for_a_running_render(batch):
    _manifest, out = batch
    with FolderLock(out):
        for args in (("verify", out), ("index", out, "--rebuild")):
            result = run(*args)
            assert result.exit_code == 3 and "Another batchgen render is already working" in result.output


def test_verify_refuses_a_folder_without_a_batch_and_a_foreign_database(tmp_path):
    result = run("verify", tmp_path)
    assert result.exit_code == 2 and "No batchgen database" in result.output
    conn = sqlite3.connect(tmp_path / "batchgen.db")
    conn.execute("create table photos (id integer)")
    conn.commit()
    conn.close()
    for args in (("verify", tmp_path), ("index", tmp_path, "--rebuild")):
        result = run(*args)
        assert result.exit_code == 2 and "not batchgen's" in result.output and "Traceback" not in result.output


def test_a_corrupt_database_is_explained(batch):
    _manifest, out = batch
    (out / "batchgen.db").write_bytes(b"this is not a database" * 100)
    for args in (("verify", out), ("index", out), ("status", out)):
        result = run(*args)
        assert result.exit_code == 2 and "is not a usable batchgen database" in result.output, result.output


def test_the_crash_harness_server_runs_the_real_cli(lab, tmp_path):
    """The trials above are only as good as the forked process: it must be batchgen's own CLI."""
    manifest = small_yaml(tmp_path, ["x"], seeds=[0])
    code, output, _ = lab.render(manifest, tmp_path / "out")
    assert code == 0 and "1 rendered" in output
