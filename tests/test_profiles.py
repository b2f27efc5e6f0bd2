"""Memory profiles: naming, choice, OOM step-down and the time-chunked VAE decode (CPU; GPU bits skipped)."""


from __future__ import annotations

from batchgen.engine import placement
from batchgen.engine.module_state import peek

import importlib.util

import pytest
import torch

from batchgen.engine import profiles
from batchgen.job import Job
from batchgen.engine.loading import build_tiny_pipeline
from batchgen.engine.mochi_decode import decode_video
from batchgen.engine.renderer import Renderer

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (group offloading uses CUDA streams)")


def test_precision_mapping():
    assert profiles.precision("cpu") == "fp32"
    for name in ("resident", "group-offload"):
        assert profiles.precision(name) == "bf16"
    # offload did not match resident byte for byte on the H100, compiled blocks round differently:
    # each keeps ids of its own.
    assert profiles.precision("offload") == "bf16-offload"
    assert profiles.precision("fast") == "bf16-compiled"
    assert profiles.precision("fp8") == "fp8"
    assert profiles.precision("int8") == "int8-bf16"  # LLM.int8 with BATCHGEN_INT8_KERNEL=llm-int8: "int8"
    assert profiles.precision("nf4") == "nf4"
    assert profiles.precision("resident", quality=True) == "bf16+quality"
    with pytest.raises(KeyError):
        profiles.precision("auto")  # auto is resolved before anything renders


def test_resolve_on_cpu_says_why():
    assert profiles.resolve("auto", "cpu") == profiles.ProfileChoice("cpu", "cpu", "no CUDA device")
    choice = profiles.resolve("nf4", "cpu")
    assert choice.name == "cpu" and "needs a GPU" in choice.reason
    with pytest.raises(ValueError, match="unknown profile"):
        profiles.resolve("turbo", "cpu")


def test_auto_picks_fastest_bf16_that_fits():
    big = profiles.choose_auto(70.0, "cuda:0", (163, 480, 848))
    assert big.name == "resident" and "GiB" in big.reason
    mid = profiles.choose_auto(20.0, "cuda:0", (163, 480, 848))
    assert mid.name == "group-offload" and "resident would need" in mid.reason
    small = profiles.choose_auto(4.0, "cuda:0", (163, 480, 848))
    assert small.name == "nf4" and "different pixels" in small.reason
    # The largest job decides: the same card keeps a short batch resident.
    assert profiles.choose_auto(26.0, "cuda:0", (25, 480, 848)).name == "resident"


def test_estimates_grow_with_frames_and_shrink_down_the_chain():
    for name in ("resident", "group-offload", "fp8", "int8", "nf4"):
        assert profiles.estimate_peak_gib(name, 163) > profiles.estimate_peak_gib(name, 25)
    assert profiles.estimate_peak_gib("group-offload", 25) < profiles.estimate_peak_gib("resident", 25)
    assert profiles.latent_tokens(163, 480, 848) == 28 * 30 * 53


def test_fallback_chain_keeps_precision():
    assert profiles.fallback("resident") == "group-offload"
    assert profiles.fallback("group-offload") is None
    for name in ("offload", "fast", "fp8", "int8", "nf4", "cpu"):
        assert profiles.fallback(name) is None
    assert profiles.precision(profiles.fallback("resident")) == profiles.precision("resident")
    # Allowed to change precision, everything ends at nf4.
    assert profiles.fallback("group-offload", same_precision=False) == "nf4"
    assert profiles.fallback("nf4", same_precision=False) is None


def test_load_kwargs_dtypes():
    assert placement.load_kwargs("cpu", "cpu") == {"dtype": torch.float32}
    for name in ("resident", "offload", "group-offload", "fp8"):
        kwargs = placement.load_kwargs(name, "cuda")
        assert kwargs == {"dtype": torch.bfloat16}
    assert placement.text_encoder_dtype("resident", quality=True) == torch.float32
    assert placement.text_encoder_dtype("resident", quality=False) == torch.bfloat16


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
def test_load_kwargs_quantized():
    for name, backend in (("int8", "bitsandbytes_8bit"), ("nf4", "bitsandbytes_4bit")):
        config = placement.load_kwargs(name, "cuda")["quantization_config"]
        assert config.quant_backend == backend


def test_resident_blocks_are_spread():
    assert placement._resident_block_indices(48, 0) == []
    picked = placement._resident_block_indices(48, 10)
    assert len(picked) == 10 and picked == sorted(set(picked))
    assert max(b - a for a, b in zip(picked, picked[1:])) <= 6  # no long run of streamed blocks
    assert placement._resident_block_indices(4, 9) == [0, 1, 2, 3]


@pytest.fixture(scope="module")
def tiny_vae():
    return build_tiny_pipeline().vae


@pytest.mark.parametrize("chunk", [1, 3])
def test_time_chunked_decode_matches_one_shot(tiny_vae, chunk):
    z = torch.randn(1, 12, 4, 4, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = tiny_vae.decode(z, return_dict=False)[0]
        chunked = decode_video(tiny_vae, z, chunk)
    assert chunked.shape == full.shape == (1, 3, 19, 32, 48)
    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-4)


def test_time_chunked_decode_matches_tiled():
    vae = build_tiny_pipeline().vae
    vae.enable_tiling(
        tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=24, tile_sample_stride_width=24
    )
    z = torch.randn(1, 12, 3, 6, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = vae.decode(z, return_dict=False)[0]  # diffusers' tiled decode, all frames at once
        chunked = decode_video(vae, z, 1)
    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-4)
    # The causal convolutions are back to their own forward afterwards.
    assert all("forward" not in vars(m) for m in vae.decoder.modules())


def test_diffusers_framewise_decode_is_not_exact():
    """Why batchgen carries its own chunking: diffusers' private framewise decode breaks or changes the pixels."""
    vae = build_tiny_pipeline().vae
    z = torch.randn(1, 12, 3, 4, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = vae.decode(z, return_dict=False)[0]
        vae._enable_framewise_decoding()
        try:
            framewise = vae.decode(z, return_dict=False)[0]
        except RuntimeError:
            return  # diffusers 0.42.1: its zero padding does not even keep the shapes
    assert framewise.shape != full.shape or (framewise - full).abs().max() > 1e-3


def _job(**kw):
    base = dict(prompt="a fox", negative_prompt="", seed=3, num_frames=7, height=32, width=32, num_inference_steps=2)
    base.update(kw)
    return Job(**base)


def test_cpu_render_reports_phases():
    r = Renderer("tiny", profile="auto", device="cpu", progress=False)
    out = r.render(_job())
    assert out.frames.shape == (7, 32, 32, 3)
    assert out.denoise_seconds is not None and out.decode_seconds is not None
    assert out.seconds >= out.denoise_seconds
    assert out.peak_vram_allocated is None


def test_step_down_on_cpu_has_nowhere_to_go():
    r = Renderer("tiny", profile="cpu", device="cpu", progress=False)
    assert r.step_down() is None
    assert r.profile == "cpu"


def test_step_down_switches_within_precision():
    r = Renderer("tiny", profile="cpu", device="cpu", progress=False)
    r.render(_job())
    # Pretend the batch was running resident on a GPU that just ran out of memory.
    r.profile = "resident"
    before = r.precision
    assert r.step_down() == "group-offload"
    assert r.profile == "group-offload" and r.precision == before == "bf16"
    assert "stepped down from resident" in r.choice.reason
    assert not r._denoiser_ready  # the next render places the denoiser again, the new way
    assert r.step_down() is None


@needs_cuda
def test_group_offload_renders_the_same_pixels_as_resident():
    frames = {}
    for name in ("resident", "group-offload"):
        r = Renderer("tiny", profile=name, device="cuda", progress=False)
        frames[name] = r.render(_job()).frames_sha256
    assert frames["resident"] == frames["group-offload"]


def test_auto_is_sized_to_the_batchs_largest_job(tmp_path, monkeypatch):
    from batchgen.run import supervisor as runner
    from batchgen.manifest import load_manifest

    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "model: tiny\njobs:\n"
        "  - {prompt: small, num_frames: 7, height: 32, width: 48}\n"
        "  - {prompt: big, num_frames: 25, height: 64, width: 96}\n"
        "  - {prompt: wide, num_frames: 13, height: 64, width: 112}\n"
    )
    seen = {}

    def fake_resolve(profile, device=None, *, largest=None, **family):
        seen["largest"] = largest
        return profiles.ProfileChoice("cpu", "cpu", "test")

    monkeypatch.setattr(profiles, "resolve", fake_resolve)
    runner.plan(load_manifest(manifest))
    assert seen["largest"] == (25, 64, 96)
