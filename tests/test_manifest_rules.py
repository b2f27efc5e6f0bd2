"""Issue 15: manifests that cannot lie. Every row read or refused, YAML 1.2 scalars, bounded aliases, one
integer rule, upper bounds, output_name templates, the model checked up front, edited manifests against OUT."""

from __future__ import annotations

import json
import textwrap
import tracemalloc
from pathlib import Path

import pytest

from batchgen.errors import ManifestError, ModelLoadError
from batchgen.manifest import fields
from batchgen.manifest.model_check import check_model
from batchgen.manifest.parse import load_manifest
from batchgen.manifest.yaml_loader import MAX_EXPANDED_NODES
from conftest import render_small_batch, run_cli, small_yaml


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8", newline="")
    return path


def problems(path) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    return info.value.problems


def the_problem(path) -> str:
    found = problems(path)
    assert len(found) == 1, found
    return found[0]


def job_fields(tmp_path, body: str) -> dict:
    return load_manifest(write(tmp_path, "j.yaml", body)).entries[0].fields


# ---------------------------------------------------------------- CSV: every row read or refused


def test_csv_unterminated_quote_names_the_row_where_it_opened(tmp_path):
    path = write(tmp_path, "j.csv", 'prompt,seed\na bird,0\n"a fox,1\na cat,2\na dog,3\n')
    msg = the_problem(path)
    assert msg.startswith(f"{path}:row 3") and "never closed" in msg


def test_csv_stray_quote_refused(tmp_path):
    msg = the_problem(write(tmp_path, "j.csv", 'prompt,seed\n"a"b,1\n'))
    assert ":row 2" in msg and "quote" in msg


def test_csv_short_row_names_the_missing_columns(tmp_path):
    msg = the_problem(write(tmp_path, "j.csv", "prompt,seed,num_inference_steps\na fox,1,4\na cat,2\n"))
    assert ":row 3" in msg and "'num_inference_steps'" in msg and "'seed'" not in msg


def test_csv_empty_cell_still_means_default(tmp_path):
    entries = load_manifest(write(tmp_path, "j.csv", "prompt,seed,num_inference_steps\na fox,,\na cat,2,4\n")).entries
    assert [(e.fields["seed"], e.fields["num_inference_steps"]) for e in entries] == [(0, 64), (2, 4)]


def test_csv_bom_crlf_and_spaces_after_commas(tmp_path):
    path = tmp_path / "j.csv"
    path.write_bytes(b'\xef\xbb\xbfprompt, seed\r\na fox, 3\r\n"a cat, grey", 4\r\n')
    entries = load_manifest(path).entries
    assert [(e.fields["prompt"], e.fields["seed"]) for e in entries] == [("a fox", 3), ("a cat, grey", 4)]


def test_csv_quoted_newline_is_one_row_and_later_rows_keep_their_number(tmp_path):
    path = write(tmp_path, "j.csv", 'prompt,seed\n"two\nlines",1\nbad,x\n')
    entries_problem = the_problem(path)
    assert ":row 3 (line 4)" in entries_problem and "'seed'" in entries_problem


# ---------------------------------------------------------------- YAML 1.2 core schema


def test_exponent_float_is_a_float(tmp_path):
    assert job_fields(tmp_path, "jobs:\n  - {prompt: x, guidance_scale: 5e0}\n")["guidance_scale"] == 5.0


@pytest.mark.parametrize("written, seed", [("010", 10), ("0o10", 8), ("0x10", 16), ("+7", 7)])
def test_yaml12_integers(tmp_path, written, seed):
    assert job_fields(tmp_path, f"jobs:\n  - {{prompt: x, seed: {written}}}\n")["seed"] == seed


@pytest.mark.parametrize("written", ["1:30", "1_000", "0b101", "yes", "on"])
def test_yaml11_numbers_are_text_and_the_message_says_what_to_write(tmp_path, written):
    msg = the_problem(write(tmp_path, "j.yaml", f"jobs:\n  - prompt: x\n    seed: {written}\n"))
    assert "j.yaml:3" in msg and "field 'seed'" in msg and "YAML 1.2" in msg and "write e.g. 0" in msg


@pytest.mark.parametrize("written", ["yes", "no", "on", "off"])
def test_yaml11_booleans_are_text(tmp_path, written):
    assert job_fields(tmp_path, f"jobs:\n  - prompt: {written}\n")["prompt"] == written
    msg = the_problem(write(tmp_path, "k.yaml", f"quality: {written}\njobs: [x]\n"))
    assert "field 'quality'" in msg and "write true or false" in msg


def test_dates_are_text(tmp_path):
    assert job_fields(tmp_path, "jobs:\n  - prompt: 2024-01-01\n")["prompt"] == "2024-01-01"


def test_merge_keys_override(tmp_path):
    path = write(
        tmp_path,
        "j.yaml",
        """
        defaults: &base {seed: 1, num_frames: 13}
        jobs:
          - {<<: *base, prompt: a, seed: 2}
          - <<: [{seed: 5}, {seed: 6, fps: 8}]
            prompt: b
        """,
    )
    entries = load_manifest(path).entries
    assert (entries[0].fields["seed"], entries[0].fields["num_frames"]) == (2, 13)
    assert (entries[1].fields["seed"], entries[1].fields["fps"]) == (5, 8)


def test_key_written_twice_is_still_refused(tmp_path):
    msg = the_problem(write(tmp_path, "j.yaml", "jobs:\n  - {<<: {fps: 8}, prompt: a, seed: 1, seed: 2}\n"))
    assert "'seed' appears twice" in msg


def _bomb(levels: int = 12) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\njobs:\n  - prompt: *a{levels - 1}\n"


def test_alias_bomb_refused_at_once_in_little_memory(tmp_path):
    path = write(tmp_path, "bomb.yaml", _bomb())
    tracemalloc.start()
    try:
        msg = the_problem(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert f"{MAX_EXPANDED_NODES:,} nodes" in msg and "bomb.yaml:" in msg
    assert peak < 20 * 2**20  # a few MB at most, where the expansion would be 9**12 nodes
    result = run_cli("validate", path)
    assert result.exit_code == 2 and "Traceback" not in result.output and "lol" not in result.output


def test_alias_within_the_limit_is_expanded(tmp_path):
    path = write(tmp_path, "j.yaml", "defaults: &d {num_frames: 13}\njobs:\n  - {<<: *d, prompt: a}\n  - {<<: *d, prompt: b}\n")
    assert [e.fields["num_frames"] for e in load_manifest(path).entries] == [13, 13]


def test_recursive_alias_refused(tmp_path):
    assert "refers to the mapping or list that contains it" in the_problem(write(tmp_path, "j.yaml", "jobs: &j [*j]\n"))


def test_huge_values_are_never_shown_whole(tmp_path):
    big = "x" * 5000
    msg = the_problem(write(tmp_path, "j.yaml", f"jobs:\n  - prompt: [{big}, {big}]\n"))
    assert "field 'prompt'" in msg and len(msg) < 300


def test_list_prompt_message_has_no_internal_type_names(tmp_path):
    msg = the_problem(write(tmp_path, "j.yaml", "jobs:\n  - prompt: [a, b]\n"))
    assert "a list of 2 item(s)" in msg and "_Line" not in msg and "list)" not in msg


def test_number_with_hundreds_of_digits_refused_with_its_line(tmp_path):
    msg = the_problem(write(tmp_path, "j.yaml", "jobs:\n  - prompt: x\n    seed: " + "9" * 5000 + "\n"))
    assert "j.yaml:3" in msg and "out of range" in msg


# ---------------------------------------------------------------- one integer rule, upper bounds


@pytest.mark.parametrize("name, value", [("seed", 2), ("num_frames", 7), ("height", 32), ("width", 48),
                                         ("num_inference_steps", 4), ("fps", 8)])
def test_integral_floats_one_rule_for_every_integer_field(tmp_path, name, value):
    assert job_fields(tmp_path, f"jobs:\n  - {{prompt: x, {name}: {value}.0}}\n")[name] == value
    assert load_manifest(write(tmp_path, "j.csv", f"prompt,{name}\nx,{value}.0\n")).entries[0].fields[name] == value
    msg = the_problem(write(tmp_path, "k.yaml", f"jobs:\n  - {{prompt: x, {name}: {value}.5}}\n"))
    assert f"{name} {value}.5 is not a whole number" in msg


def test_float_seed_too_large_to_be_exact_refused(tmp_path):
    assert "too large to be exact" in the_problem(write(tmp_path, "j.yaml", "jobs:\n  - {prompt: x, seed: 1.0e19}\n"))


@pytest.mark.parametrize(
    "name, limit, over",
    [("num_frames", fields.MAX_FRAMES, 6000001), ("height", fields.MAX_SIDE, 160000), ("width", fields.MAX_SIDE, 4096),
     ("num_inference_steps", fields.MAX_STEPS, 10**8), ("fps", fields.MAX_FPS, 241)],
)
def test_upper_bounds_name_the_field_and_the_limit(tmp_path, name, limit, over):
    msg = the_problem(write(tmp_path, "j.yaml", f"jobs:\n  - prompt: x\n    {name}: {over}\n"))
    assert "j.yaml:3" in msg and f"field '{name}'" in msg and str(limit) in msg
    assert job_fields(tmp_path, f"jobs:\n  - {{prompt: x, {name}: {limit}}}\n")[name] == limit


def test_prompt_length_bound(tmp_path):
    path = write(tmp_path, "j.txt", "x" * (fields.MAX_TEXT_CHARS + 1) + "\n")
    msg = the_problem(path)
    assert "j.txt:line 1" in msg and f"{fields.MAX_TEXT_CHARS}" in msg


def test_bounds_are_documented_in_the_readme():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    for limit in (fields.MAX_FRAMES, fields.MAX_SIDE, fields.MAX_STEPS, fields.MAX_FPS, f"{fields.MAX_TEXT_CHARS:,}",
                  f"{MAX_EXPANDED_NODES:,}"):
        assert str(limit) in readme


# ---------------------------------------------------------------- output_name


def _names(tmp_path, template: str) -> list[str]:
    path = write(tmp_path, "j.yaml", f"output_name: {json.dumps(template)}\nseeds: [7, 8]\njobs: [a fox]\n")
    return [job.output_name for job in load_manifest(path).expand("fp32")]


def test_output_name_ending_in_mp4_does_not_double_it(tmp_path):
    assert _names(tmp_path, "{prompt}-{index}.mp4") == ["a fox-0", "a fox-1"]


def test_output_name_format_specs(tmp_path):
    assert _names(tmp_path, "{seed:05d}-{prompt:.3}") == ["00007-a f", "00008-a f"]


def test_output_name_conversions_refused(tmp_path):
    msg = the_problem(write(tmp_path, "j.yaml", 'output_name: "{prompt!r}"\njobs: [a]\n'))
    assert "j.yaml:1" in msg and "field 'output_name'" in msg and "'{prompt}'" in msg


# ---------------------------------------------------------------- the model, before anything is written


def _pipeline_folder(root: Path, *, drop: str | None = None) -> Path:
    folder = root / "pipe"
    index = {"_class_name": "MochiPipeline", "transformer": ["diffusers", "MochiTransformer3DModel"],
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"], "safety": [None, None]}
    (folder / "transformer").mkdir(parents=True)
    (folder / "transformer" / "config.json").write_text("{}")
    (folder / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"0")
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text("{}")
    (folder / "model_index.json").write_text(json.dumps(index))
    if drop:
        target = folder / drop
        if target.is_dir():
            for child in target.iterdir():
                child.unlink()
            target.rmdir()
        else:
            target.unlink()
    return folder


def test_complete_local_folder_and_built_in_names_pass(tmp_path):
    check_model(str(_pipeline_folder(tmp_path)))
    check_model("tiny")
    check_model("realsize")


@pytest.mark.parametrize("drop, needle", [
    ("model_index.json", "no model_index.json"),
    ("scheduler", "no folder scheduler/"),
    ("transformer/diffusion_pytorch_model.safetensors", "no weights"),
])
def test_incomplete_local_folder_refused(tmp_path, drop, needle):
    with pytest.raises(ModelLoadError, match=needle):
        check_model(str(_pipeline_folder(tmp_path, drop=drop)))


def test_missing_shard_refused(tmp_path):
    folder = _pipeline_folder(tmp_path)
    (folder / "transformer" / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "diffusion_pytorch_model-00001-of-00002.safetensors"}}))
    with pytest.raises(ModelLoadError, match="lacks 1 weight shard"):
        check_model(str(folder))


def test_hub_id_offline_must_be_cached(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelLoadError, match="not in the Hugging Face cache"):
        check_model("someone/not-downloaded")
    repo = tmp_path / "cache" / "models--someone--cached"
    snapshot = _pipeline_folder(repo / "snapshots" / ("a" * 40)).rename(repo / "snapshots" / ("b" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("b" * 40)
    check_model("someone/cached")
    (snapshot / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(ModelLoadError, match="the folder scheduler/ is empty"):
        check_model("someone/cached")


def test_validate_checks_the_model(tmp_path):
    path = write(tmp_path, "j.yaml", f"model: {tmp_path / 'nowhere'}\njobs: [x]\n")
    result = run_cli("validate", path)
    assert result.exit_code == 2 and "does not exist" in result.output and "Traceback" not in result.output


# ---------------------------------------------------------------- an edited manifest against OUT


def test_status_counts_this_manifests_jobs_apart_and_reports_renamed(tmp_path):
    manifest, out = render_small_batch(tmp_path, ["a fox", "a cat"], seeds=[0])
    edited = small_yaml(tmp_path, ["a fox", "a dog"], seeds=[0], extra='output_name: "{prompt}"', name="edited.yaml")
    result = run_cli("status", out, "--manifest", edited)
    assert result.exit_code == 0, result.output
    assert "1/2 of its jobs done" in result.output and "1 not queued yet" in result.output
    assert "1 job(s) that are no job of this manifest" in result.output and "kept, never deleted" in result.output
    assert "'a fox.mp4'" in result.output and "batchgen export" in result.output
    data = json.loads(run_cli("status", out, "--manifest", edited, "--json").output)
    assert data["total"] == 2 and data["manifest"]["others"] == 1 and data["manifest"]["renamed"] == 1
    same = run_cli("status", out, "--manifest", manifest)
    assert "2/2 of its jobs done" in same.output and "no job of this manifest" not in same.output
