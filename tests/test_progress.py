"""--progress: bars for a terminal, plain lines (with the batch's ETA) for a log file, or nothing."""

import io
import time
from types import SimpleNamespace

import pytest

from batchgen.engine import progress_mode
from batchgen.engine.profiles import latent_tokens
from batchgen.job import Job
from batchgen.run.progress import BatchProgress, EtaModel, format_duration
from conftest import run_cli, small_yaml

SHAPE = (2, 7, 32, 48)  # steps, frames, height, width
LONG = (8, 7, 32, 48)  # four times SHAPE's work


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def job(shape, name):
    steps, frames, height, width = shape
    return Job(prompt=name, num_inference_steps=steps, num_frames=frames, height=height, width=width,
               output_name=name)


def rendered(seconds, steps):
    return SimpleNamespace(seconds=seconds, seconds_per_step=seconds / steps)


def lines_progress(total, shapes=None):
    clock, stream = Clock(), io.StringIO()
    wall = lambda: 1_800_000_000.0 + clock.t  # noqa: E731
    bar = BatchProgress(total, "lines", shapes, stream=stream, clock=clock, wall=wall, heartbeat_thread=False)
    return bar, clock, stream, wall


def finish_clock(wall, left):
    return time.strftime("%H:%M", time.localtime(wall() + left))


def test_the_eta_weighs_pending_jobs_by_steps_and_latent_size():
    bar, clock, stream, wall = lines_progress(3, [SHAPE, SHAPE, LONG])
    clock.t += 10
    bar.job_finished(job(SHAPE, "first"), rendered(10.0, 2))
    # Left: one job like the first (10 s) and one with four times its work (40 s); not 2 x 10 s.
    assert stream.getvalue().splitlines() == [
        f"[1/3] first done in 10.0 s (5.00 s/step); batch ETA 00:50, finishes ~{finish_clock(wall, 50)}"]
    clock.t += 10
    bar.job_failed(job(SHAPE, "second"), "RuntimeError: boom\nmore")
    assert stream.getvalue().splitlines()[-1] == (
        f"[2/3] second failed: RuntimeError: boom; batch ETA 00:40, finishes ~{finish_clock(wall, 40)}")
    clock.t += 45
    bar.job_finished(job(LONG, "third"), rendered(45.0, 8))
    assert stream.getvalue().splitlines()[-1] == "[3/3] third done in 45.0 s (5.62 s/step); batch done"


def test_eta_model_units_and_fallbacks():
    assert latent_tokens(*LONG[1:]) == latent_tokens(*SHAPE[1:])
    eta = EtaModel(4)  # no shapes: by job count
    assert eta.seconds_left() is None
    eta.job_done(SHAPE, 10.0)
    assert eta.seconds_left() == pytest.approx(30.0)
    eta = EtaModel(3, [job(SHAPE, "a"), {"num_inference_steps": 8, "num_frames": 7, "height": 32, "width": 48}])
    eta.job_done(SHAPE, 10.0)
    # The one known job left has four times the work; a third, unknown one counts as the average job.
    assert eta.seconds_left() == pytest.approx(40.0 + 10.0)
    assert format_duration(59.6) == "01:00" and format_duration(3 * 3600 + 12 * 60) == "3:12:00"


def test_the_heartbeat_speaks_at_most_once_a_minute_during_a_long_job():
    bar, clock, stream, wall = lines_progress(2, [SHAPE, SHAPE])
    clock.t += 10
    bar.job_finished(job(SHAPE, "first"), rendered(10.0, 2))
    clock.t += 59
    bar.tick()
    assert len(stream.getvalue().splitlines()) == 1
    clock.t += 2
    bar.tick()
    bar.tick()
    beat = stream.getvalue().splitlines()[1:]
    # The job in flight has run past its estimate: the ETA does not go negative.
    assert beat == [f"[1/2] still rendering, 01:01 since the last job finished; batch ETA 00:00, "
                    f"finishes ~{finish_clock(wall, 0)}"]
    clock.t += 60
    bar.tick()
    assert len(stream.getvalue().splitlines()) == 3


def test_worker_pools_report_counts_and_the_eta_is_their_throughput():
    bar, clock, stream, wall = lines_progress(5)
    clock.t += 20
    bar.set_finished(2)
    bar.set_finished(2)  # no news, no line
    assert stream.getvalue().splitlines() == [f"[2/5] done; batch ETA 00:30, finishes ~{finish_clock(wall, 30)}"]


def test_phases_are_lines_and_none_says_nothing():
    bar, clock, stream, wall = lines_progress(1)
    bar.phase("encoding 3 text(s)")
    assert stream.getvalue() == "batchgen: encoding 3 text(s)\n"
    quiet = io.StringIO()
    silent = BatchProgress(1, "none", stream=quiet)
    silent.phase("loading")
    silent.job_finished(job(SHAPE, "x"), rendered(1.0, 2))
    silent.close()
    assert quiet.getvalue() == ""


def test_auto_is_bars_on_a_terminal_and_lines_elsewhere():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert progress_mode.resolve("auto", Tty()) == "bars" and progress_mode.resolve(True, Tty()) == "bars"
    assert progress_mode.resolve("auto", io.StringIO()) == "lines"
    assert progress_mode.resolve(False) == "none" and progress_mode.resolve("lines", Tty()) == "lines"
    with pytest.raises(ValueError, match="bars"):
        progress_mode.resolve("fancy")


def test_the_steps_bar_redraws_every_step_and_stays_off_in_lines_mode():
    from batchgen.engine.renderer import Renderer

    bars = Renderer("tiny", profile="cpu", device="cpu", progress="bars")
    assert bars._steps_bar()["mininterval"] == 0 and not bars._steps_bar()["disable"]
    assert Renderer("tiny", profile="cpu", device="cpu", progress="lines")._steps_bar()["disable"]


def test_render_into_a_log_writes_plain_lines(tmp_path):
    manifest = small_yaml(tmp_path, ["a red fox in snow", "waves on a rocky shore"], seeds=[1])
    # CliRunner's stderr is not a terminal, as with `batchgen render ... 2> run.log`: auto means lines.
    result = run_cli("render", manifest, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    err = result.stderr
    assert "\r" not in err and "\x1b" not in err, repr(err)
    lines = err.splitlines()
    assert "batchgen: loading the pipeline (tiny)" in lines, lines
    assert "batchgen: encoding 3 text(s)" in lines  # two prompts and the (empty) negative prompt
    done = [line for line in lines if line.startswith("[")]
    assert len(done) == 2 and done[0].startswith("[1/2] ") and " done in " in done[0] and "batch ETA " in done[0]
    assert done[1].startswith("[2/2] ") and done[1].endswith("; batch done")
    again = run_cli("render", manifest, "--out", tmp_path / "again", "--progress", "none")
    assert again.exit_code == 0 and not [line for line in again.stderr.splitlines() if line.startswith("[")]
