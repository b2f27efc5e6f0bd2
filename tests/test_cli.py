import json

import pytest
from click.testing import CliRunner

from batchgen.engine import renderer as render_module
from batchgen.cli.app import cli
from batchgen.outputs.atomic import sha256_file
from batchgen.outputs.metadata_index import read as read_index
from batchgen.outputs.video import read_mp4
from conftest import run_cli as run
from conftest import small_yaml




def test_render_writes_videos_and_a_matching_index(small_manifest, tmp_path):
    out = tmp_path / "out"
    result = run("render", small_manifest, "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    rows = read_index(out)
    assert len(rows) == 4
    assert list(rows[0])[0] == "file_name"
    for row in rows:
        path = out / row["file_name"]
        assert path.exists() and sha256_file(path) == row["sha256"]
        assert read_mp4(path).shape == (7, 32, 48, 3)
        for key in ("job_id", "prompt", "seed", "num_frames", "model", "resolved_revision", "precision",
                    "versions", "device", "render_seconds", "frames_sha256"):
            assert key in row
    assert sorted(p.name for p in (out / "videos").iterdir()) == sorted(p.split("/")[-1] for p in (r["file_name"] for r in rows))
    status = run("status", out, "--json")
    assert json.loads(status.output) == {"total": 4, "pending": 0, "running": 0, "done": 4, "failed": 0}


def test_rerun_skips_done_jobs_without_loading_the_model(small_manifest, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert run("render", small_manifest, "--out", out, "--no-progress").exit_code == 0
    before = {p.name: p.stat().st_mtime_ns for p in (out / "videos").iterdir()}

    def no_load(*a, **k):
        raise AssertionError("the model must not be loaded when nothing is left")

    monkeypatch.setattr(render_module, "load_pipeline", no_load)
    result = run("render", small_manifest, "--out", out, "--no-progress")
    assert result.exit_code == 0
    assert "nothing to render" in result.output
    assert {p.name: p.stat().st_mtime_ns for p in (out / "videos").iterdir()} == before


def test_new_entries_are_added_on_rerun(tmp_path):
    out = tmp_path / "out"
    first = small_yaml(tmp_path, ["one"], seeds=[1])
    assert run("render", first, "--out", out, "--no-progress").exit_code == 0
    second = small_yaml(tmp_path, ["one", "two"], seeds=[1])
    result = run("render", second, "--out", out, "--no-progress")
    assert "1 rendered, 1 already done" in result.output
    assert len(read_index(out)) == 2


def test_identical_entries_render_once(tmp_path):
    out = tmp_path / "out"
    manifest = small_yaml(tmp_path, ["same prompt", "same prompt"], seeds=[4])
    assert run("render", manifest, "--out", out, "--no-progress").exit_code == 0
    assert len(read_index(out)) == 1


def test_a_failing_job_does_not_stop_the_batch_and_retry_requeues_it(small_manifest, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = render_module.Renderer.render

    def flaky(self, job, on_step=None):
        if job.seed == 2 and job.prompt.startswith("waves"):
            raise RuntimeError("simulated failure")
        return real(self, job, on_step)

    monkeypatch.setattr(render_module.Renderer, "render", flaky)
    result = run("render", small_manifest, "--out", out, "--no-progress")
    assert result.exit_code == 1
    assert "simulated failure" in result.output
    counts = json.loads(run("status", out, "--json").output)
    assert counts == {"total": 4, "pending": 0, "running": 0, "done": 3, "failed": 1}
    assert "simulated failure" in run("status", out).output
    assert "1 failed job(s) back to pending" in run("retry", out).output
    monkeypatch.setattr(render_module.Renderer, "render", real)
    assert run("render", small_manifest, "--out", out, "--no-progress").exit_code == 0
    assert json.loads(run("status", out, "--json").output)["done"] == 4


def test_a_foreign_file_in_the_way_is_never_overwritten(tmp_path):
    out = tmp_path / "out"
    manifest = small_yaml(tmp_path, ["mine"], seeds=[1], extra='output_name: "clip-{seed}"')
    (out / "videos").mkdir(parents=True)
    (out / "videos" / "clip-1.mp4").write_bytes(b"the user's own file")
    result = run("render", manifest, "--out", out, "--no-progress")
    assert result.exit_code == 1
    assert "never overwrites" in result.output
    assert (out / "videos" / "clip-1.mp4").read_bytes() == b"the user's own file"


def test_validate_counts_jobs_and_renders_nothing(small_manifest, tmp_path):
    result = run("validate", small_manifest)
    assert result.exit_code == 0
    assert "4 job(s)" in result.output


@pytest.mark.parametrize(
    "body, expected",
    [
        ("model: tiny\njobs:\n  - prompt: a\n    num_frames: 24\n", ["jobs.yaml:4", "num_frames", "19", "25"]),
        ("model: tiny\njobs:\n  - prompt: a\n    heigth: 64\n", ["heigth", "height"]),
        ("model: tiny\njobs:\n  - prompt: a\n    num_inference_steps: 1\n", ["num_inference_steps"]),
        ("model: tiny\njobs: [\n", ["jobs.yaml:3", "YAML syntax error"]),
    ],
)
def test_bad_manifests_exit_nonzero_with_a_message_and_no_traceback(tmp_path, body, expected):
    path = tmp_path / "jobs.yaml"
    path.write_text(body)
    for command in ("validate", "render"):
        result = CliRunner().invoke(cli, [command, str(path), "--out", str(tmp_path / "o")] if command == "render" else [command, str(path)])
        assert result.exit_code != 0
        assert "Traceback" not in result.output
        for text in expected:
            assert text in result.output
    assert not (tmp_path / "o").exists()


def test_status_of_a_folder_that_is_not_a_batch(tmp_path):
    result = CliRunner().invoke(cli, ["status", str(tmp_path)])
    assert result.exit_code != 0 and "No batchgen database" in result.output


def test_cli_turns_on_expandable_cuda_segments_unless_the_user_chose(monkeypatch):
    import os

    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    assert run("validate", "--help").exit_code == 0
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128")
    assert run("validate", "--help").exit_code == 0
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:128"


def test_cli_output_has_no_bitsandbytes_cpu_kernel_noise(tmp_path):
    """bitsandbytes' warning about an optional CPU 4-bit kernel is not shown (batchgen never uses it)."""
    import subprocess
    import sys

    pytest.importorskip("bitsandbytes")
    # doctor imports diffusers, which imports bitsandbytes whenever it is installed.
    result = subprocess.run([sys.executable, "-m", "batchgen", "doctor"], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert "Traceback" not in result.stderr and "CUDA" in result.stdout
    assert "gemm_4bit_forward" not in result.stdout + result.stderr
