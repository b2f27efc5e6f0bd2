"""Write-behind: job k's MP4 is encoded while job k+1 renders, recorded as soon as it is whole, and its
failure is never blamed on job k+1."""

import sqlite3
import time

import pytest

from batchgen.run import job_loop, write_behind as runner
from batchgen.manifest import load_manifest
from batchgen.engine.renderer import Renderer
from batchgen.run.supervisor import render_manifest
from conftest import small_yaml


class SlowSteps(Renderer):
    """The tiny model, with denoising steps slow enough for an MP4 to be written behind them, noting at
    each step which jobs the database already holds as done."""

    seen: list[tuple[str, int, set]] = []

    def render(self, job, on_step=None):
        def step(i, n):
            conn = sqlite3.connect(self.cache_dir.parent.parent / "batchgen.db")
            done = {r[0] for r in conn.execute("select job_id from jobs where status='done'")}
            conn.close()
            SlowSteps.seen.append((job.job_id, i, done))
            time.sleep(0.15)
            if on_step is not None:
                on_step(i, n)

        return super().render(job, on_step=step)


def _manifest(tmp_path):
    return small_yaml(tmp_path, ["a red fox in snow", "waves on a rocky shore"], seeds=[1],
                      extra="").read_text().replace("num_inference_steps: 2", "num_inference_steps: 8")


def test_previous_video_is_recorded_while_the_next_job_denoises(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHGEN_WRITE_BEHIND", "1")
    path = tmp_path / "jobs.yaml"
    path.write_text(_manifest(tmp_path))
    SlowSteps.seen = []
    summary = render_manifest(load_manifest(path), tmp_path / "out", progress=False, renderer_factory=SlowSteps)
    assert summary.rendered == 2 and summary.failed == 0
    order = list(dict.fromkeys(job_id for job_id, _, _ in SlowSteps.seen))
    first, second = order
    during_second = [done for job_id, _, done in SlowSteps.seen if job_id == second]
    # Not yet done when the second job started, done before it finished: written behind its denoising.
    assert first not in during_second[0]
    assert first in during_second[-1]
    assert second not in during_second[-1]


def test_a_failed_write_fails_its_own_job_not_the_next(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHGEN_WRITE_BEHIND", "1")
    path = small_yaml(tmp_path, ["a red fox in snow", "waves on a rocky shore", "a lighthouse at night"], seeds=[1])
    real_write = runner.write_mp4
    calls = []

    def flaky(frames, final, fps):
        calls.append(final.name)
        if len(calls) == 1:
            time.sleep(0.3)  # still encoding while the next job renders
            raise RuntimeError("encoder crashed")
        return real_write(frames, final, fps)

    monkeypatch.setattr(runner, "write_mp4", flaky)
    summary = render_manifest(load_manifest(path), tmp_path / "out", progress=False)
    assert summary.rendered == 2 and summary.failed == 1
    conn = sqlite3.connect(tmp_path / "out" / "batchgen.db")
    rows = conn.execute("select output_path, status, error from jobs").fetchall()
    conn.close()
    failed = [r for r in rows if r[1] == "failed"]
    assert len(failed) == 1 and "encoder crashed" in failed[0][2]
    assert failed[0][0].endswith(calls[0])  # the job whose write failed, not the one rendering then
    assert not (tmp_path / "out" / failed[0][0]).exists()


def test_both_modes_give_the_same_videos(tmp_path, monkeypatch):
    hashes = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("BATCHGEN_WRITE_BEHIND", flag)
        base = tmp_path / flag
        base.mkdir()
        path = small_yaml(base, ["a red fox in snow", "waves on a rocky shore"], seeds=[1, 2])
        summary = render_manifest(load_manifest(path), base / "out", progress=False)
        assert summary.rendered == 4
        conn = sqlite3.connect(base / "out" / "batchgen.db")
        hashes[flag] = sorted(conn.execute("select job_id, frames_sha256 from jobs where status='done'").fetchall())
        conn.close()
    assert len(hashes["1"]) == 4 and hashes["0"] == hashes["1"]


def _statuses(out):
    conn = sqlite3.connect(out / "batchgen.db")
    rows = dict(conn.execute("select job_id, status from jobs").fetchall())
    conn.close()
    return rows


def test_a_job_is_recorded_with_the_profile_it_rendered_under(tmp_path, monkeypatch):
    """The next job may step the renderer down (OOM) before the previous video is recorded."""
    monkeypatch.setenv("BATCHGEN_WRITE_BEHIND", "1")

    class StepsDown(Renderer):
        def render(self, job, on_step=None):
            def step(i, n):
                if self._jobs_seen == 2:
                    self.profile = "group-offload"  # what step_down would leave behind
                time.sleep(0.1)
                if on_step is not None:
                    on_step(i, n)

            self._jobs_seen = getattr(self, "_jobs_seen", 0) + 1
            try:
                return super().render(job, on_step=step)
            finally:
                self.profile = "cpu"

    path = tmp_path / "jobs.yaml"
    path.write_text(_manifest(tmp_path))
    render_manifest(load_manifest(path), tmp_path / "out", progress=False, renderer_factory=StepsDown)
    conn = sqlite3.connect(tmp_path / "out" / "batchgen.db")
    profiles = [r[0] for r in conn.execute("select profile from jobs where status='done'")]
    conn.close()
    assert profiles == ["cpu", "cpu"]


def test_ctrl_c_between_jobs_sends_the_written_behind_job_back_to_pending(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHGEN_WRITE_BEHIND", "1")
    path = small_yaml(tmp_path, ["a red fox in snow", "waves on a rocky shore"], seeds=[1])

    def killed_ffmpeg(frames, final, fps):
        time.sleep(0.3)  # Ctrl-C reaches ffmpeg too: its write breaks
        raise BrokenPipeError("ffmpeg went away")

    real_claim = runner.Store.claim
    calls = []

    def claim(self, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_claim(self, **kwargs)

    monkeypatch.setattr(runner, "write_mp4", killed_ffmpeg)
    monkeypatch.setattr(runner.Store, "claim", claim)
    summary = render_manifest(load_manifest(path), tmp_path / "out", progress=False)
    assert summary.interrupted_by is not None
    statuses = _statuses(tmp_path / "out")
    assert sorted(statuses.values()) == ["pending", "pending"], statuses  # not failed, not running


def test_the_previous_jobs_bookkeeping_error_is_not_blamed_on_the_next_job(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHGEN_WRITE_BEHIND", "1")
    path = small_yaml(tmp_path, ["a red fox in snow", "waves on a rocky shore"], seeds=[1])

    def broken(frames, final, fps):
        raise RuntimeError("encoder crashed")

    real_mark_failed = runner.Store.mark_failed
    tries = []

    def locked(self, job_id, message):
        tries.append(job_id)
        if len(tries) == 1:  # recording the first job's failure fails once; later calls work
            raise sqlite3.OperationalError("database is locked")
        return real_mark_failed(self, job_id, message)

    monkeypatch.setattr(runner, "write_mp4", broken)
    monkeypatch.setattr(runner.Store, "mark_failed", locked)
    with pytest.raises(sqlite3.OperationalError):
        render_manifest(load_manifest(path), tmp_path / "out", progress=False)
    assert "failed" not in _statuses(tmp_path / "out").values()


def test_a_job_whose_record_cannot_be_built_fails_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHGEN_WRITE_BEHIND", "1")
    path = small_yaml(tmp_path, ["a red fox in snow", "waves on a rocky shore"], seeds=[1])
    real_row = job_loop.metadata_row
    calls = []

    def flaky_row(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("fingerprint unavailable")
        return real_row(*args, **kwargs)

    monkeypatch.setattr(job_loop, "metadata_row", flaky_row)
    summary = render_manifest(load_manifest(path), tmp_path / "out", progress=False)
    assert summary.rendered == 1 and summary.failed == 1
    assert sorted(_statuses(tmp_path / "out").values()) == ["done", "failed"]
