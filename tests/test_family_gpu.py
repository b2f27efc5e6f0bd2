"""The Wan and LTX-Video families under every GPU profile they take, on their tiny pipelines: what
tests/test_family_profiles.py cannot check without a GPU. Skipped where there is no CUDA device."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

from batchgen.engine.families import LTX, WAN  # noqa: E402

NEW = (WAN, LTX)
# Profiles whose weights are as loaded (bf16); int8 and nf4 quantize on load, from a saved folder below.
PLACED = ("resident", "group-offload", "offload", "fast", "fp8")


def _job(family, seed=3, prompt="a red fox in snow", model=None):
    from batchgen.job import Job

    return Job(prompt=prompt, negative_prompt="blurry", seed=seed, num_frames=family.min_frames + family.frame_step,
               height=2 * family.size_multiple, width=3 * family.size_multiple, num_inference_steps=3,
               guidance_scale=family.defaults["guidance_scale"], fps=24, model=model or family.tiny,
               family=family.name)


def _render(model, family, profile, jobs):
    from batchgen.engine.renderer import Renderer

    r = Renderer(model, profile=profile, device="cuda", progress=False)
    assert r.profile == profile
    # As a batch does: every text first, then the text encoder is freed for the denoiser.
    r.encode([text for job in jobs for text in (job.prompt, job.negative_prompt)])
    return r, [r.render(job) for job in jobs]


@pytest.fixture(scope="module", params=NEW, ids=lambda f: f.name)
def by_profile(request):
    family = request.param
    job = _job(family)
    out = {}
    for profile in PLACED:
        with pytest.MonkeyPatch.context() as mp:
            # No block kept resident: the tiny models' few blocks would all fit the default, streaming none.
            mp.setenv("BATCHGEN_GROUP_OFFLOAD_RESIDENT_GIB", "0")
            r, (rendered,) = _render(family.tiny, family, profile, [job])
        out[profile] = (r.precision, rendered)
        del r
        torch.cuda.empty_cache()
    return family, job, out


def test_every_placed_profile_renders_the_job(by_profile):
    family, job, out = by_profile
    for profile, (precision, rendered) in out.items():
        assert rendered.frames.shape == (job.num_frames, job.height, job.width, 3), profile
        assert rendered.peak_vram_allocated and rendered.seconds_per_step > 0, profile
        assert rendered.frames.std() > 0, profile  # not a blank video


def test_profiles_that_share_a_precision_share_the_pixels(by_profile):
    # Job ids are made of the precision: two profiles of one precision must give the very same frames.
    _, _, out = by_profile
    groups: dict[str, list] = {}
    for profile, (precision, rendered) in out.items():
        groups.setdefault(precision, []).append((profile, rendered.frames_sha256))
    assert len(groups["bf16"]) >= 2  # resident and group-offload
    for precision, members in groups.items():
        assert len({sha for _, sha in members}) == 1, (precision, members)


def test_same_job_alone_and_in_a_batch_on_the_gpu(by_profile):
    family, job, out = by_profile
    other = _job(family, seed=9, prompt="waves on a beach")
    _, (first, second) = _render(family.tiny, family, "resident", [other, job])
    assert second.frames_sha256 == out["resident"][1].frames_sha256
    assert first.frames_sha256 != second.frames_sha256


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")
@pytest.mark.parametrize("family", NEW, ids=lambda f: f.name)
@pytest.mark.parametrize("profile", ["int8", "nf4"])
def test_quantized_profiles_load_a_saved_folder_quantized(tmp_path, family, profile):
    from batchgen.engine.placement import _is_quantized

    family.builders().build_tiny().save_pretrained(tmp_path)
    r, (rendered,) = _render(str(tmp_path), family, profile, [_job(family, model=str(tmp_path))])
    assert _is_quantized(r.pipe.transformer) and not _is_quantized(r.pipe.text_encoder)
    assert np.isfinite(rendered.frames).all() and rendered.frames.std() > 0
