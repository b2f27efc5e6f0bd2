"""Precomputed AdaLN modulation must not change a single pixel, and must fail loudly when misused."""

from batchgen.engine import placement
from batchgen.engine.module_state import peek

import numpy as np
import pytest
import torch

from batchgen.engine import modulation
from batchgen.engine import profiles
from batchgen.job import Job
from batchgen.engine.renderer import Renderer

JOBS = [
    Job("a fox", "blurry", seed=1, num_frames=13, height=64, width=96, num_inference_steps=4),
    # Same texts and settings, other seed: reuses the table.
    Job("a fox", "blurry", seed=2, num_frames=13, height=64, width=96, num_inference_steps=4),
    # No CFG (batch 1), another size and step count: a new table of another shape.
    Job("a boat at dawn", "", seed=3, num_frames=7, height=48, width=64, num_inference_steps=3, guidance_scale=1.0),
    # Back to the first texts with other steps: the cached table must not be reused.
    Job("a fox", "blurry", seed=1, num_frames=13, height=64, width=96, num_inference_steps=5),
]


def _render_all(monkeypatch, flag: str):
    monkeypatch.setenv("BATCHGEN_PRECOMPUTE_MODULATION", flag)
    renderer = Renderer("tiny", profile="cpu", device="cpu", progress=False)
    renderer.encode([t for job in JOBS for t in (job.prompt, job.negative_prompt)])
    return renderer, [renderer.render(job).frames for job in JOBS]


def test_precomputed_modulation_renders_identical_frames(monkeypatch):
    plain_renderer, plain = _render_all(monkeypatch, "0")
    renderer, precomputed = _render_all(monkeypatch, "1")
    assert peek(plain_renderer.pipe.transformer).modulation is None
    table = peek(renderer.pipe.transformer).modulation
    assert table is not None
    for a, b in zip(plain, precomputed):
        assert a.shape == b.shape
        assert np.array_equal(a, b)
    # The seeds differ, so equal frames above are not a sign of a table that ignores its input.
    assert not np.array_equal(precomputed[0], precomputed[1])


def test_detach_moves_the_adaln_layers_out_of_the_model(monkeypatch):
    monkeypatch.setenv("BATCHGEN_PRECOMPUTE_MODULATION", "1")
    renderer = Renderer("tiny", profile="cpu", device="cpu", progress=False)
    transformer = renderer.pipe.transformer
    adaln = sum(
        p.numel()
        for name, p in transformer.named_parameters()
        if ".norm1.linear" in name or ".norm1_context.linear" in name
    )
    before = sum(p.numel() for p in transformer.parameters())
    table = modulation.detach(transformer)
    after = sum(p.numel() for p in transformer.parameters())
    assert adaln > 0
    assert before - after == adaln == table.parameters_held
    assert modulation.detach(transformer) is table  # idempotent


def test_unprepared_or_overrun_table_raises(monkeypatch):
    monkeypatch.setenv("BATCHGEN_PRECOMPUTE_MODULATION", "1")
    renderer = Renderer("tiny", profile="cpu", device="cpu", progress=False)
    job = JOBS[2]
    renderer.encode([job.prompt])
    renderer.render(job)  # prepares the table for 3 steps
    pipe = renderer.pipe
    table = peek(pipe.transformer).modulation
    embeds, mask = renderer._embeds[job.prompt]
    call = dict(num_frames=7, height=48, width=64, guidance_scale=1.0, output_type="latent",
                prompt_embeds=embeds, prompt_attention_mask=mask, max_sequence_length=renderer.loaded.max_sequence_length)
    # Table for 3 steps, pipeline asked for 4 without preparing: the 4th call finds no entry.
    table.step = -1
    with torch.inference_mode(), pytest.raises(RuntimeError, match="no entry for transformer call 4"):
        pipe(num_inference_steps=4, generator=torch.Generator().manual_seed(0), **call)
    table.step = 1
    with pytest.raises(RuntimeError, match="for 3 transformer calls, but 2 were made"):
        table.check_used()
    modulation.release(pipe.transformer)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="prepare"):
        pipe(num_inference_steps=3, generator=torch.Generator().manual_seed(0), **call)


@pytest.mark.parametrize(
    "profile,expected",
    [("resident", True), ("group-offload", True), ("fp8", True), ("fast", False), ("nf4", False), ("int8", True),
     ("offload", False), ("cpu", False)],
)
def test_which_profiles_precompute(monkeypatch, profile, expected):
    monkeypatch.delenv("BATCHGEN_PRECOMPUTE_MODULATION", raising=False)
    assert modulation.enabled(profile) is expected
    monkeypatch.setenv("BATCHGEN_PRECOMPUTE_MODULATION", "0")
    assert modulation.enabled(profile) is False
    assert profile in profiles.PROFILES
