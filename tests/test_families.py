"""Model families (batchgen.engine.families): declarations, detection, rules and tiny pipelines."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from batchgen.engine.families import (
    FAMILIES,
    LTX,
    MOCHI,
    WAN,
    FamilyRuleError,
    UnknownFamily,
    family_for_class,
    family_for_model,
)
from batchgen.errors import BatchgenError, ManifestError
from tests.conftest import write_manifest

NEW = (WAN, LTX)


# ---------------------------------------------------------------- detection

@pytest.mark.parametrize("family", FAMILIES.values(), ids=lambda f: f.name)
def test_family_for_class(family):
    for name in family.pipeline_classes:
        assert family_for_class(name) is family
    assert family_for_class("FluxPipeline") is None


@pytest.mark.parametrize("family", FAMILIES.values(), ids=lambda f: f.name)
def test_builtin_names_pick_their_family(family):
    for name in family.names():
        assert family_for_model(name) is family


@pytest.mark.parametrize("class_name, family", [("MochiPipeline", MOCHI), ("WanPipeline", WAN), ("LTXPipeline", LTX)])
def test_family_from_model_index_of_a_folder(tmp_path, class_name, family):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": class_name}), encoding="utf-8")
    assert family_for_model(str(tmp_path)) is family


def test_unknown_pipeline_class_names_it_and_the_known_ones(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}), encoding="utf-8")
    with pytest.raises(UnknownFamily) as info:
        family_for_model(str(tmp_path))
    text = str(info.value)
    assert isinstance(info.value, BatchgenError)
    assert "FluxPipeline" in text and "WanPipeline" in text and "LTXPipeline" in text and str(tmp_path) in text


def test_unreadable_model_index_is_a_user_error(tmp_path):
    (tmp_path / "model_index.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(UnknownFamily, match="model_index.json"):
        family_for_model(str(tmp_path))


@pytest.mark.parametrize(
    "model, family",
    [
        ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", WAN),
        ("Lightricks/LTX-Video", LTX),
        ("genmo/mochi-1-preview", MOCHI),
        ("someone/their-mochi-finetune", MOCHI),
        # A folder without model_index.json keeps today's path (MochiPipeline, whose loader explains the error).
        ("./not-there", MOCHI),
    ],
)
def test_hub_ids_not_in_the_cache_by_publisher(model, family):
    assert family_for_model(model) is family


def test_declarations_are_torch_free():
    # manifest/ reads these before anything is loaded; importing them must not import torch at run time
    # either (the import-linter contract checks the static imports).
    code = (
        "import sys; import batchgen.engine.families as f; f.family_for_model('tiny-wan'); "
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------- rules

@pytest.mark.parametrize(
    "family, good, bad, hint",
    [
        (MOCHI, (7, 13, 163), 8, "num_frames 8 is not 6k+1 (diffusers would silently drop frames); use 7 or 13"),
        (WAN, (5, 9, 81), 8, "num_frames 8 is not 4k+1 (diffusers would silently drop frames); use 5 or 9"),
        (LTX, (9, 17, 161), 12, "num_frames 12 is not 8k+1 (diffusers would silently drop frames); use 9 or 17"),
    ],
    ids=lambda v: v.name if hasattr(v, "name") else None,
)
def test_frame_rule(family, good, bad, hint):
    for n in good:
        family.check_frames(n)
    with pytest.raises(FamilyRuleError) as info:
        family.check_frames(bad)
    assert str(info.value) == hint


@pytest.mark.parametrize("family", FAMILIES.values(), ids=lambda f: f.name)
def test_too_few_frames_says_the_smallest(family):
    low, step = family.min_frames, family.frame_step
    problem = family.frames_problem(low - 1)
    assert f"{family.title} needs {step}k+1 frames with k >= 1; use {low} or more" in problem
    assert f"({low}, {low + step}, " in problem
    assert family.frames_problem(1) is not None


@pytest.mark.parametrize(
    "family, good, bad, hint",
    [
        (MOCHI, 480, 470, "height 470 is not a multiple of 16 (Mochi's transformer needs it); use 464 or 480"),
        (WAN, 480, 40, "height 40 is not a multiple of 16 (Wan's VAE and 2x2 patches need it); use 32 or 48"),
        (LTX, 512, 500, "height 500 is not a multiple of 32 (LTX-Video's 32x VAE needs it); use 480 or 512"),
    ],
    ids=lambda v: v.name if hasattr(v, "name") else None,
)
def test_size_rule(family, good, bad, hint):
    family.check_size(good, good)
    with pytest.raises(FamilyRuleError) as info:
        family.check_size(bad, good)
    assert str(info.value) == hint
    with pytest.raises(FamilyRuleError, match="^width "):
        family.check_size(good, bad)
    assert family.size_problem("width", 0).startswith(f"width 0 must be a positive multiple of {family.size_multiple}")
    assert family.size_problem("width", 8).endswith(f"use {family.size_multiple}")


@pytest.mark.parametrize("field, value", [("num_frames", 8), ("num_frames", 4), ("height", 470), ("width", 0)])
def test_mochi_rules_are_the_manifests(tmp_path, field, value):
    # The manifest's messages today are Mochi's family's: moving the manifest onto the hook changes no text.
    path = write_manifest(tmp_path / "jobs.yaml", f"model: tiny\njobs:\n  - prompt: a fox\n    {field}: {value}\n")
    from batchgen.manifest import load_manifest

    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    rule = MOCHI.frames_problem(value) if field == "num_frames" else MOCHI.size_problem(field, value)
    assert any(p.endswith(rule) for p in info.value.problems), (rule, info.value.problems)


@pytest.mark.parametrize("family", FAMILIES.values(), ids=lambda f: f.name)
def test_defaults_follow_the_rules(family):
    family.check_frames(family.defaults["num_frames"])
    family.check_size(family.defaults["height"], family.defaults["width"])
    assert family.defaults["num_inference_steps"] >= 2 and family.defaults["guidance_scale"] >= 1
    assert family.max_tokens > 0 and family.allows_profile("cpu")


def test_only_new_families_tag_job_ids():
    assert not MOCHI.tags_job_ids
    assert all(f.tags_job_ids for f in NEW)


# ---------------------------------------------------------------- published-size configs (shapes only)

@pytest.mark.parametrize("family", NEW, ids=lambda f: f.name)
def test_published_configs_match_their_memory_model(family):
    # Built on the meta device: the published shapes without allocating a byte; the declared parameter
    # counts and compressions (what `auto` and doctor will use) must be those of the config built.
    for name in family.realsize:
        pipe = family.builders().build_realsize(name, device="meta")
        memory = family.memory[name]
        for part, declared in (("transformer", memory.denoiser_params_b), ("text_encoder", memory.text_encoder_params_b),
                               ("vae", memory.vae_params_b)):
            count = sum(p.numel() for p in getattr(pipe, part).parameters()) / 1e9
            assert count == pytest.approx(declared, abs=0.001), (name, part)
        assert _compression(pipe) == (memory.temporal_compression, memory.spatial_compression), name


def _compression(pipe) -> tuple[int, int]:
    """(temporal, spatial x patch) of a built pipeline: what its frame and size rules come from."""
    if hasattr(pipe, "vae_scale_factor_temporal"):  # WanPipeline
        return pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial * pipe.transformer.config.patch_size[1]
    return pipe.vae_temporal_compression_ratio, pipe.vae_spatial_compression_ratio * pipe.transformer_spatial_patch_size


# ---------------------------------------------------------------- tiny pipelines

@pytest.fixture(scope="module", params=NEW, ids=lambda f: f.name)
def tiny(request):
    family = request.param
    return family, family.builders().build_tiny()


def test_tiny_pipeline_keeps_the_family_rules(tiny):
    family, pipe = tiny
    assert type(pipe).__name__ in family.pipeline_classes
    assert _compression(pipe) == (family.frame_step, family.size_multiple)
    for part in ("transformer", "text_encoder", "vae"):
        assert not getattr(pipe, part).training, part


def test_tiny_build_is_deterministic_and_leaves_the_global_rng(tiny):
    import torch

    from batchgen.engine.loading import weights_hash

    family, pipe = tiny
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    again = family.builders().build_tiny()
    assert torch.equal(torch.rand(3), before)
    assert weights_hash(again) == weights_hash(pipe)


def _render(pipe, family, seed=0, prompt="a red fox in snow"):
    import torch

    frames = family.min_frames + family.frame_step
    side = family.size_multiple
    out = pipe(prompt=prompt, negative_prompt="", num_frames=frames, height=side, width=2 * side,
               num_inference_steps=2, guidance_scale=family.defaults["guidance_scale"], output_type="np",
               generator=torch.Generator("cpu").manual_seed(seed), max_sequence_length=16)
    return np.asarray(out.frames[0])


def test_tiny_pipeline_round_trips_through_save_pretrained(tiny, tmp_path):
    from batchgen.engine.loading import load_pipeline

    family, pipe = tiny
    pipe.save_pretrained(tmp_path)
    assert family_for_model(str(tmp_path)) is family
    results = [load_pipeline(str(tmp_path)) for _ in range(2)]  # the real loading path, as `model:` a folder
    assert {r.family for r in results} == {family.name}
    assert results[0].revision.startswith("sha256-") and results[0].max_sequence_length == family.max_tokens
    loaded = [r.pipe for r in results]
    assert all(type(p) is type(pipe) for p in loaded)
    for p in (pipe, *loaded):
        p.set_progress_bar_config(disable=True)
    frames = _render(loaded[0], family)
    side = family.size_multiple
    assert frames.shape == (family.min_frames + family.frame_step, side, 2 * side, 3)
    assert np.array_equal(_render(loaded[1], family), frames)
    # Not bit for bit: CPU matrix kernels take another path for the memory-mapped (unaligned) weights of a
    # loaded folder than for freshly allocated ones; the folder itself always renders the same frames.
    np.testing.assert_allclose(_render(pipe, family), frames, atol=1e-4)


# ---------------------------------------------------------------- through batchgen's renderer

def _job(family, **changes):
    from batchgen.job import Job

    fields = dict(prompt="a red fox in snow", negative_prompt="blurry", seed=3, num_frames=family.min_frames + family.frame_step,
                  height=family.size_multiple, width=2 * family.size_multiple, num_inference_steps=2,
                  guidance_scale=family.defaults["guidance_scale"], fps=24, model=family.tiny, family=family.name)
    return Job(**{**fields, **changes})


@pytest.fixture(scope="module", params=NEW, ids=lambda f: f.name)
def renderer(request):
    from batchgen.engine.renderer import Renderer

    family = request.param
    return family, Renderer(family.tiny, progress=False)


def test_renderer_gives_the_frames_of_diffusers_own_call(renderer):
    # batchgen encodes each text once, denoises from the embeddings and decodes the latents itself: the
    # frames must be those of the pipeline called with the prompt, as diffusers' documentation does.
    import torch

    from batchgen.engine.renderer import to_uint8

    family, r = renderer
    job = _job(family)
    rendered = r.render(job)
    assert r.load().family == family.name and r.load().revision.startswith(family.tiny + "-")
    extra = {"frame_rate": job.fps} if family.fps_is_input else {}
    out = r.pipe(prompt=job.prompt, negative_prompt=job.negative_prompt, num_frames=job.num_frames, height=job.height,
                 width=job.width, num_inference_steps=job.num_inference_steps, guidance_scale=job.guidance_scale,
                 generator=torch.Generator("cpu").manual_seed(job.seed), output_type="np",
                 max_sequence_length=family.max_tokens, **extra)
    assert rendered.frames.shape == (job.num_frames, job.height, job.width, 3)
    assert np.array_equal(rendered.frames, to_uint8(np.asarray(out.frames[0])))


def test_same_job_alone_and_in_a_batch(renderer):
    from batchgen.engine.renderer import Renderer

    family, r = renderer
    batch = [_job(family, prompt="waves on a rocky shore"), _job(family), _job(family, seed=9, guidance_scale=1.0)]
    r.encode([t for j in batch for t in (j.prompt, j.negative_prompt)])
    in_batch = [r.render(j).frames for j in batch]
    alone = Renderer(family.tiny, progress=False).render(batch[1]).frames
    assert np.array_equal(in_batch[1], alone)
    assert not np.array_equal(in_batch[0], in_batch[1])


def test_ltx_frame_rate_decides_pixels():
    from batchgen.engine.renderer import Renderer

    r = Renderer(LTX.tiny, progress=False)
    assert not np.array_equal(r.render(_job(LTX, fps=24)).frames, r.render(_job(LTX, fps=25)).frames)


def test_profiles_a_family_has_not_got_are_refused():
    from batchgen.engine.renderer import Renderer

    assert MOCHI.profile_problem("fp8-attn") is None and WAN.profile_problem("group-offload") is None
    problem = WAN.profile_problem("fp8-fast")
    assert "fp8-fast" in problem and "Wan" in problem and "'resident'" in problem
    r = Renderer("tiny-wan", progress=False)
    r.profile = "fp8-attn"  # as if chosen on a GPU machine: refused before anything is placed
    with pytest.raises(BatchgenError, match="'fp8-attn' does not apply to Wan"):
        r.load()


# ---------------------------------------------------------------- job ids

def test_mochi_job_ids_are_unchanged():
    from batchgen.job import Job

    # Ids of these jobs before families existed (commit f79659b): a Mochi job's id must never move.
    assert Job(prompt="a red fox in snow").job_id == "d53a79dc5f9dec49"
    job = Job(prompt="waves", negative_prompt="blurry", seed=2**63, num_frames=25, height=320, width=576,
              num_inference_steps=8, guidance_scale=1, fps=24, model="genmo/mochi-1-preview", revision="main",
              precision="bf16")
    assert job.job_id == "70e503349faa1432"
    assert job.with_(family="mochi").job_id == job.job_id and "family" not in job.settings()


def test_other_families_carry_theirs_in_the_id():
    from batchgen.job import Job

    job = Job(prompt="a red fox in snow", model="some/folder")
    ids = {job.with_(family=f.name).job_id for f in FAMILIES.values()}
    assert len(ids) == len(FAMILIES)
    wan = job.with_(family="wan")
    assert wan.settings()["family"] == "wan"
    assert Job.from_dict(wan.to_dict()).job_id == wan.job_id


# ---------------------------------------------------------------- end to end

@pytest.mark.slow
@pytest.mark.parametrize("family, frames, width", [(WAN, 17, 48), (LTX, 17, 64)], ids=["wan", "ltx"])
def test_cli_renders_a_tiny_family_batch(tmp_path, family, frames, width):
    # 17 frames: the family's rule (4k+1, 8k+1) but not Mochi's 6k+1, so the manifest checks the family's.
    from tests.conftest import run_cli

    manifest = write_manifest(tmp_path / "jobs.yaml", f"""\
model: {family.tiny}
defaults: {{num_frames: {frames}, height: 32, width: {width}, num_inference_steps: 2, fps: 24}}
seeds: [1]
jobs:
  - prompt: a red fox in snow
""")
    out = tmp_path / "out"
    result = run_cli("render", manifest, "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(records) == 1 and records[0]["resolved_revision"].startswith(family.tiny + "-")
    assert records[0]["family"] == family.name and records[0]["num_frames"] == frames
    assert (out / records[0]["file_name"]).stat().st_size > 0
    again = run_cli("render", manifest, "--out", out, "--no-progress")
    assert again.exit_code == 0 and "1 already done" in again.output


def test_rules_for_a_model_take_its_own_size_multiple(tmp_path):
    from batchgen.engine.families import rules_for_model

    assert rules_for_model("realsize-wan2.2-5b").size_multiple == 32
    assert rules_for_model("realsize-wan2.1-14b") is WAN and rules_for_model("tiny") is MOCHI
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}), encoding="utf-8")
    for part, config in (("vae", {"scale_factor_spatial": 16}), ("transformer", {"patch_size": [1, 2, 2]})):
        (tmp_path / part).mkdir()
        (tmp_path / part / "config.json").write_text(json.dumps(config), encoding="utf-8")
    rules = rules_for_model(str(tmp_path))
    assert rules.name == "wan" and rules.size_multiple == 32
    assert rules.size_problem("width", 48).startswith("width 48 is not a multiple of 32 (this Wan model's")
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"scale_factor_spatial": 8}), encoding="utf-8")
    assert rules_for_model(str(tmp_path)) is WAN
