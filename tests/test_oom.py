"""A CUDA out-of-memory error steps the renderer down and retries the job; the batch goes on."""

import json

from click.testing import CliRunner

from batchgen.engine import renderer as render_module
from batchgen.cli.app import cli
from batchgen.store import Store


class OutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError, which the runner recognises by name."""


def test_oom_steps_down_retries_and_records_it(small_manifest, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_render = render_module.Renderer.render
    state = {"profile": "resident-like", "ooms": 0}

    def render(self, job, on_step=None):
        if state["profile"] == "resident-like":
            state["ooms"] += 1
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_render(self, job, on_step)

    def step_down(self):
        if state["profile"] != "resident-like":
            return None
        state["profile"] = "smaller"
        return "smaller"

    monkeypatch.setattr(render_module.Renderer, "render", render)
    monkeypatch.setattr(render_module.Renderer, "step_down", step_down)
    result = CliRunner().invoke(cli, ["render", str(small_manifest), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "ran out of GPU memory" in result.output and "retrying with 'smaller'" in result.output
    assert state["ooms"] == 1  # the profile stays stepped down for the rest of the batch
    store = Store(out)
    notes = [r["notes"] for r in store.rows() if r["notes"]]
    assert len(notes) == 1 and "stepped down to smaller" in notes[0]
    assert json.loads(CliRunner().invoke(cli, ["status", str(out), "--json"]).output)["done"] == 4


def test_oom_with_nothing_lower_fails_the_job_and_the_batch_goes_on(small_manifest, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_render = render_module.Renderer.render

    def render(self, job, on_step=None):
        if job.seed == 1 and job.prompt.startswith("waves"):
            raise OutOfMemoryError("CUDA out of memory")
        return real_render(self, job, on_step)

    monkeypatch.setattr(render_module.Renderer, "render", render)
    result = CliRunner().invoke(cli, ["render", str(small_manifest), "--out", str(out), "--no-progress"])
    assert result.exit_code == 1
    counts = json.loads(CliRunner().invoke(cli, ["status", str(out), "--json"]).output)
    assert counts["done"] == 3 and counts["failed"] == 1
