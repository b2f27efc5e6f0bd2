"""Issue 18 phase 2: manifests follow the model's family (defaults, frame and size rules, `family:`), and the
store and records keep the family."""

from __future__ import annotations

import json

import pytest

from batchgen.engine.families import LTX, MOCHI, WAN
from batchgen.errors import ManifestError
from batchgen.manifest.parse import load_manifest
from tests.conftest import run_cli, write_manifest

# (family, a frame count its rule refuses but Mochi's allows or vice versa, the hint, a size it refuses, hint)
RULES = [
    (WAN, 19, "not 4k+1", "use 17 or 21", 40, "use 32 or 48"),
    (LTX, 19, "not 8k+1", "use 17 or 25", 48, "use 32 or 64"),
    (MOCHI, 17, "not 6k+1", "use 13 or 19", 40, "use 32 or 48"),
]


def _manifest(tmp_path, model: str, job: str, extra: str = "", name: str = "jobs.yaml"):
    return write_manifest(tmp_path / name, f"model: {model}\n{extra}jobs:\n  - prompt: a red fox\n{job}")


@pytest.mark.parametrize("family", [WAN, LTX, MOCHI], ids=lambda f: f.name)
def test_unset_fields_take_the_family_defaults(tmp_path, family):
    m = load_manifest(_manifest(tmp_path, family.tiny, ""))
    fields = m.entries[0].fields
    assert {k: fields[k] for k in family.defaults} == family.defaults
    assert m.family == family.name
    (job,) = m.expand("fp32")
    assert job.family == family.name and job.num_frames == family.defaults["num_frames"]


def test_wan_defaults_are_wans():
    # What diffusers' WanPipeline and the model card give: 81 frames of 480x832, 50 steps, guidance 5, 16 fps.
    assert WAN.defaults == {"num_frames": 81, "height": 480, "width": 832, "num_inference_steps": 50,
                            "guidance_scale": 5.0, "fps": 16}


@pytest.mark.parametrize("field", ["num_frames", "width"])
@pytest.mark.parametrize("family, frames, rule, hint, side, side_hint", RULES, ids=lambda v: getattr(v, "name", None))
def test_family_rules_name_file_line_and_field(tmp_path, field, family, frames, rule, hint, side, side_hint):
    value = frames if field == "num_frames" else side
    path = _manifest(tmp_path, family.tiny, f"    {field}: {value}\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    (msg,) = info.value.problems
    if field == "width":
        rule, hint = f"not a multiple of {family.size_multiple}", side_hint
    assert msg.startswith(f"{path}:4: field '{field}': {field} {value} is {rule}") and msg.endswith(hint)


@pytest.mark.parametrize("family", [WAN, LTX], ids=lambda f: f.name)
def test_too_few_frames_for_the_family(tmp_path, family):
    path = _manifest(tmp_path, family.tiny, "    num_frames: 3\n")
    with pytest.raises(ManifestError, match=f"{family.frame_step}k\\+1 frames with k >= 1; use {family.min_frames}"):
        load_manifest(path)


def test_csv_rows_follow_the_family_of_the_model_option(tmp_path):
    path = tmp_path / "jobs.csv"
    path.write_text("prompt,num_frames\na fox,17\na cat,19\n", encoding="utf-8")
    with pytest.raises(ManifestError) as info:
        load_manifest(path, model="tiny-wan")
    assert info.value.problems == [f"{path}:row 3: field 'num_frames': num_frames 19 is not 4k+1 (diffusers would "
                                   "silently drop frames); use 17 or 21"]
    with pytest.raises(ManifestError, match="row 2: field 'num_frames': num_frames 17 is not 6k\\+1"):
        load_manifest(path, model="tiny")


def test_txt_prompts_get_the_family_defaults(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a fox\na cat\n", encoding="utf-8")
    jobs = load_manifest(path, model="tiny-ltx").expand("fp32")
    assert [(j.family, j.num_frames, j.fps) for j in jobs] == [("ltx", 161, 25)] * 2


def test_model_option_wins_and_its_family_checks_the_entries(tmp_path):
    path = _manifest(tmp_path, "tiny", "    num_frames: 19\n")
    assert load_manifest(path).family == "mochi"
    with pytest.raises(ManifestError, match="num_frames 19 is not 4k\\+1"):
        load_manifest(path, model="tiny-wan")


def test_family_key_decides_for_a_hub_id_not_in_the_cache(tmp_path):
    path = _manifest(tmp_path, "someone/my-finetune", "    num_frames: 17\n", extra="family: wan\n")
    assert load_manifest(path).family == "wan"
    plain = _manifest(tmp_path, "someone/my-finetune", "    num_frames: 19\n", name="plain.yaml")
    assert load_manifest(plain).family == "mochi"  # as batchgen always assumed
    by_publisher = _manifest(tmp_path, "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "    num_frames: 17\n", name="pub.yaml")
    assert load_manifest(by_publisher).family == "wan"


def test_family_key_that_contradicts_the_model_is_refused(tmp_path):
    path = _manifest(tmp_path, "tiny-wan", "", extra="family: ltx\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    (msg,) = info.value.problems
    assert msg.startswith(f"{path}:1: field 'model': model 'tiny-wan' is a Wan model (wan), not LTX-Video")


def test_unknown_family_key_suggests(tmp_path):
    path = _manifest(tmp_path, "someone/x", "", extra="family: wna\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert info.value.problems == [f"{path}:2: field 'family': unknown model family 'wna'; did you mean 'wan'? "
                                   "(it is needed only for a hub id whose model_index.json is not in the local cache)"]


def test_folder_of_another_pipeline_class_is_reported_at_the_model_line(tmp_path):
    folder = tmp_path / "flux"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}), encoding="utf-8")
    path = _manifest(tmp_path, str(folder), "")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    (msg,) = info.value.problems
    assert msg.startswith(f"{path}:1: field 'model':") and "FluxPipeline" in msg


def test_folder_picks_its_family_from_model_index(tmp_path):
    folder = tmp_path / "wan"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}), encoding="utf-8")
    path = _manifest(tmp_path, str(folder), "    num_frames: 19\n")
    with pytest.raises(ManifestError, match="num_frames 19 is not 4k\\+1"):
        load_manifest(path)


@pytest.mark.parametrize("family, frames, rule, hint, side, side_hint", RULES[:2], ids=["wan", "ltx"])
def test_validate_and_render_refuse_with_exit_2(tmp_path, family, frames, rule, hint, side, side_hint):
    path = _manifest(tmp_path, family.tiny, f"    num_frames: {frames}\n    height: {side}\n")
    for args in (("validate", path), ("render", path, "--out", tmp_path / "out", "--no-progress")):
        result = run_cli(*args)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        assert f"{path}:4: field 'num_frames'" in result.output and hint in result.output
        assert f"{path}:5: field 'height'" in result.output and side_hint in result.output
    assert not (tmp_path / "out" / "batchgen.db").exists()
