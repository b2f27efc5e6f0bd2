"""The cheap check at the start of every render: a finished video gone or cut short renders again."""

import json

import pytest

from batchgen.outputs import verify
from batchgen.outputs.video import write_mp4
from conftest import render_small_batch, run_cli
from fakerun import FPS, frames_for, make_run


def done_rows(store):
    return {row["job_id"]: row for row in store.done_rows()}


def test_truncated_and_emptied_videos_are_quarantined_and_requeued_with_one_warning(tmp_path):
    out = tmp_path / "out"
    store = make_run(out, [{"prompt": f"p{i}", "seed": i} for i in range(3)])
    rows = store.done_rows()
    empty, cut, sound = (out / r["output_path"] for r in rows)
    empty.write_bytes(b"")
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    lines: list[str] = []
    assert verify.startup_check(out, store, lines.append) == 2
    assert len(lines) == 1 and "2 finished video(s)" in lines[0] and "missing or damaged" in lines[0]
    assert rows[0]["output_path"] in lines[0] and "0 bytes" in lines[0] and "cut short" in lines[0]
    left = done_rows(store)
    assert list(left) == [rows[2]["job_id"]]
    assert {r["status"] for r in store.rows("pending")} == {"pending"} and len(store.rows("pending")) == 2
    # Moved aside, never deleted: the half file is still there, byte for byte.
    quarantined = sorted((out / verify.QUARANTINE_DIR).iterdir())
    assert sorted(p.stat().st_size for p in quarantined) == [0, len(data) // 2]
    assert not empty.exists() and not cut.exists() and sound.exists()
    # The sound video's size is recorded now, for the next run's one-stat check.
    assert left[rows[2]["job_id"]]["video_bytes"] == sound.stat().st_size
    store.close()


def test_sound_videos_pass_and_a_second_start_stays_silent(tmp_path):
    out = tmp_path / "out"
    store = make_run(out, [{"prompt": f"p{i}", "seed": i} for i in range(3)])
    lines: list[str] = []
    assert verify.startup_check(out, store, lines.append) == 0
    assert verify.startup_check(out, store, lines.append) == 0
    assert lines == [] and len(store.done_rows()) == 3
    store.close()


def test_recorded_size_catches_a_whole_but_different_file(tmp_path):
    out = tmp_path / "out"
    store = make_run(out, [{"prompt": "p", "seed": 1}])
    verify.startup_check(out, store, lambda line: None)  # records the size
    row = store.done_rows()[0]
    path = out / row["output_path"]
    # A complete MP4 of other frames and another size: its boxes are whole, only the size tells.
    write_mp4(frames_for(5, frames=3), path, FPS)
    assert verify.mp4_damage(path, path.stat().st_size) is None
    assert path.stat().st_size != row["video_bytes"]
    lines: list[str] = []
    assert verify.startup_check(out, store, lines.append) == 1
    assert f"{row['video_bytes']} recorded" in lines[0]
    store.close()


def test_a_size_never_outlives_its_file(tmp_path):
    out = tmp_path / "out"
    store = make_run(out, [{"prompt": "p", "seed": 1}])
    verify.startup_check(out, store, lambda line: None)
    job_id = store.done_rows()[0]["job_id"]
    store.mark_pending(job_id, "again")
    assert store.get_row(job_id)["video_bytes"] is None
    # Done again without a size (a path that does not record it): the old size is not kept either.
    store.db.execute("update jobs set video_bytes=123 where job_id=?", [job_id])
    store.mark_done(job_id, {"output_path": "videos/x.mp4", "sha256": "0" * 64})
    assert store.get_row(job_id)["video_bytes"] is None
    store.mark_done(job_id, {"output_path": "videos/x.mp4", "sha256": "1" * 64, "video_bytes": 77})
    assert store.get_row(job_id)["video_bytes"] == 77
    store.close()


@pytest.mark.parametrize("body, why", [
    (b"\x00\x00\x00\x18ftypisom" + b"\x00" * 12, None),
    (b"\x00\x00\x00\x18ftypisom" + b"\x00" * 10, "boxes need 24"),
    (b"\x00\x00\x00\x18ftypisom" + b"\x00" * 12 + b"\x00\x00", "inside an MP4 box header"),
    (b"\x00\x00\x00\x18ftypisom" + b"\x00" * 12 + b"\x00\x00\x00\x00mdat" + b"x" * 5, None),
    (b"\x00\x00\x00\x01mdat" + (40).to_bytes(8, "big") + b"x" * 10, "boxes need 40"),
    (b"\x00\x00\x00\x03abcd", "not an MP4"),
])
def test_mp4_box_walk(tmp_path, body, why):
    path = tmp_path / "v.mp4"
    path.write_bytes(body)
    got = verify.mp4_damage(path, len(body))
    assert (got is None) if why is None else (why in got), got


@pytest.mark.slow
def test_render_renders_again_a_finished_video_truncated_to_zero_bytes(tmp_path):
    manifest, out = render_small_batch(tmp_path, ["a red fox in snow", "waves"], seeds=[1])
    index = [json.loads(line) for line in (out / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    victim = out / index[0]["file_name"]
    size = victim.stat().st_size
    victim.write_bytes(b"")
    result = run_cli("render", manifest, "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if "missing or damaged" in line]
    assert len(warnings) == 1 and index[0]["file_name"] in warnings[0], result.output
    assert "1 rendered" in result.output
    assert victim.stat().st_size == size
    assert [p.stat().st_size for p in (out / verify.QUARANTINE_DIR).iterdir()] == [0]
    again = [json.loads(line) for line in (out / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["job_id"]: r["frames_sha256"] for r in again} == {r["job_id"]: r["frames_sha256"] for r in index}
    assert run_cli("verify", out).exit_code == 0


def test_a_finished_job_records_its_video_size_when_it_is_marked_done(tmp_path):
    # Recorded with the job, not first at the next render's start: a same-shaped replacement file made
    # before that start is caught by the size.
    import sqlite3

    _, out = render_small_batch(tmp_path, ["a lighthouse at dusk"], seeds=[3])
    rows = sqlite3.connect(out / "batchgen.db").execute("select output_path, video_bytes from jobs").fetchall()
    assert rows and all(size == (out / path).stat().st_size for path, size in rows)
