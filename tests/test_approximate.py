"""Opt-in approximate accelerators: off by default, in the job id, recorded, reproducible."""

import json

import pytest

from batchgen.engine import approximate
from batchgen.engine import profiles
from conftest import run_cli, small_yaml, write_manifest


@pytest.mark.parametrize(
    "value,spec",
    [(None, None), ("none", None), ("", None), ("pab", "pab"), ("PAB", "pab"),
     ("first-block-cache", "fbc0.05"), ("first-block-cache:0.1", "fbc0.1"), ("first-block-cache:0.25", "fbc0.25")],
)
def test_parse_accepts(value, spec):
    assert approximate.parse(value) == spec


@pytest.mark.parametrize("value,words", [("fbc", "unknown accelerator"), ("faster-cache", "unknown accelerator"),
                                         ("first-block-cache:2", "between 0.000001 and 1"), ("first-block-cache:x", "between 0.000001 and 1"),
                                         ("first-block-cache:0.0000001", "between 0.000001 and 1"),
                                         (3, "must be one of")])
def test_parse_refuses_with_a_message(value, words):
    with pytest.raises(ValueError, match=words):
        approximate.parse(value)


def test_precision_carries_the_accelerator_and_parses_back():
    p = profiles.precision("resident", quality=True, deterministic=True, approximate="fbc0.05")
    assert p == "bf16+quality+fbc0.05+deterministic"
    assert approximate.from_precision(p) == "fbc0.05"
    assert approximate.strip(p) == "bf16+quality+deterministic"
    assert approximate.from_precision("bf16+quality") is None
    assert profiles.precision("resident") == "bf16"  # exact stays as it was: old job ids do not move


def test_only_eager_profiles_take_an_accelerator():
    for name in ("fast", "group-offload", "offload"):
        assert "not '" + name + "'" in approximate.check_profile("pab", name)
    for name in ("resident", "fp8", "nf4", "int8", "cpu"):
        assert approximate.check_profile("pab", name) is None
    assert approximate.check_profile(None, "fast") is None


def _record(out):
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]


def test_render_with_an_accelerator_gets_its_own_ids_and_reproduces(tmp_path):
    manifest = small_yaml(tmp_path, ["a red fox in snow"], seeds=[1])
    manifest.write_text(manifest.read_text().replace("num_inference_steps: 2", "num_inference_steps: 8"))
    exact_out, pab_out = tmp_path / "exact", tmp_path / "pab"
    assert run_cli("render", manifest, "--out", exact_out, "--no-progress").exit_code == 0
    result = run_cli("render", manifest, "--out", pab_out, "--no-progress", "--approximate", "pab")
    assert result.exit_code == 0, result.output
    exact, pab = _record(exact_out)[0], _record(pab_out)[0]
    assert exact["precision"] == "fp32" and pab["precision"] == "fp32+pab"
    assert exact["job_id"] != pab["job_id"]
    assert pab["fingerprint"]["approximate"] == "pab" and exact["fingerprint"]["approximate"] is None
    assert exact["frames_sha256"] != pab["frames_sha256"]  # it did skip work
    again = run_cli("reproduce", pab_out, pab["job_id"], "--no-progress")
    assert again.exit_code == 0, again.output
    assert "1 of 1 job(s) identical" in again.output
    # A batch re-created from the records renders the same accelerated jobs.
    copy = tmp_path / "copy"
    assert run_cli("render", pab_out / "metadata.jsonl", "--out", copy, "--no-progress").exit_code == 0
    assert _record(copy)[0]["job_id"] == pab["job_id"]
    assert _record(copy)[0]["frames_sha256"] == pab["frames_sha256"]


def test_manifest_field_and_its_errors(tmp_path):
    good = write_manifest(tmp_path / "good.yaml", "model: tiny\napproximate: first-block-cache:0.1\njobs:\n  - prompt: x\n")
    result = run_cli("validate", good)
    assert result.exit_code == 0, result.output
    bad = write_manifest(tmp_path / "bad.yaml", "model: tiny\napproximate: fast-please\njobs:\n  - prompt: x\n")
    result = run_cli("validate", bad)
    assert result.exit_code != 0
    assert "bad.yaml:2: field 'approximate': unknown accelerator 'fast-please'" in result.output
    assert "Traceback" not in result.output
    result = run_cli("render", good, "--out", tmp_path / "o", "--approximate", "first-block-cache:7")
    assert result.exit_code != 0 and "--approximate: first-block-cache:THRESHOLD" in result.output


def test_a_job_that_failed_mid_denoise_leaves_no_cache_state_behind():
    from batchgen.job import Job
    from batchgen.engine.renderer import Renderer

    job = Job("a red fox in snow", "blurry", seed=4, num_frames=7, height=32, width=48, num_inference_steps=8)

    def fresh():
        r = Renderer("tiny", profile="cpu", device="cpu", progress=False, approximate="pab")
        r.encode([job.prompt, job.negative_prompt])
        return r

    clean = fresh().render(job).frames
    renderer = fresh()

    def crash(step, total):
        if step == 3:
            raise RuntimeError("out of memory (simulated)")

    with pytest.raises(RuntimeError, match="simulated"):
        renderer.render(job, on_step=crash)
    assert (renderer.render(job).frames == clean).all()
