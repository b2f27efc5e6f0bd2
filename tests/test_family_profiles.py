"""GPU memory profiles for the families without batchgen's own levers (Wan, LTX-Video): which apply, how
placement treats their modules, and what `auto` picks from their memory model. What can be checked without
a GPU is checked here on the CPU; the renders under each profile are tests/test_family_gpu.py's."""

from __future__ import annotations

import pytest

from batchgen.engine import placement, profiles
from batchgen.engine.families import LTX, MOCHI, WAN
from batchgen.engine.module_state import peek
from batchgen.errors import BatchgenError
from tests.conftest import write_manifest

NEW = (WAN, LTX)


@pytest.fixture(scope="module", params=NEW, ids=lambda f: f.name)
def tiny(request):
    family = request.param
    return family, family.builders().build_tiny()


@pytest.mark.parametrize("family", NEW, ids=lambda f: f.name)
def test_generic_profiles_apply_and_mochis_kernels_do_not(family):
    for name in ("resident", "fast", "offload", "group-offload", "fp8", "int8", "nf4"):
        assert family.profile_problem(name) is None, name
    for name in ("fp8-fast", "fp8-attn"):
        assert name in family.profile_problem(name)
    # Refused by name before CUDA is asked anything, so a CPU machine gives the same message.
    with pytest.raises(BatchgenError, match="'fp8-fast' does not apply to"):
        profiles.resolve("fp8-fast", "cuda", family=family)


def test_a_refused_profile_names_the_manifest_and_field(tmp_path):
    from batchgen.errors import ManifestError
    from batchgen.manifest.parse import load_manifest
    from tests.conftest import run_cli

    path = write_manifest(tmp_path / "jobs.yaml", "model: tiny-wan\nprofile: fp8-attn\njobs:\n  - prompt: a fox\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert str(path) in str(info.value) and "field 'profile'" in str(info.value) and "Wan" in str(info.value)
    with pytest.raises(ManifestError, match="--profile: profile 'fp8-fast' does not apply to Wan"):
        load_manifest(path, profile="fp8-fast")
    assert load_manifest(path, profile="group-offload").profile == "group-offload"
    result = run_cli("validate", str(path))
    assert result.exit_code != 0 and "fp8-attn" in result.output and "Traceback" not in result.output


def _processors(transformer) -> list[str]:
    return sorted({type(p).__name__ for p in transformer.attn_processors.values()})


def test_resident_keeps_diffusers_processor_and_the_adaln_layers(tiny):
    # Mochi's levers (its attention processor, precomputed modulation) are written for Mochi's modules:
    # placed on any other family they would break it or change its pixels.
    family, pipe = tiny
    before = _processors(pipe.transformer)
    placement.prepare_denoiser(pipe, "resident", "cpu", quality=False, family=family)
    assert _processors(pipe.transformer) == before
    assert peek(pipe.transformer).modulation is None and peek(pipe.transformer).attention is None


def test_fast_compiles_the_familys_repeated_blocks_and_teardown_undoes_it(tiny):
    family, pipe = tiny
    blocks = getattr(pipe.transformer, family.blocks)
    # The very blocks diffusers' compile_repeated_blocks would compile.
    assert {type(b).__name__ for b in blocks} == set(pipe.transformer._repeated_blocks)
    placement.prepare_denoiser(pipe, "fast", "cpu", quality=False, family=family)
    try:
        assert all(b._compiled_call_impl is not None for b in blocks)
    finally:
        placement.teardown_denoiser(pipe, "fast", family)
    assert all(b._compiled_call_impl is None for b in blocks)


def test_group_offload_streams_the_familys_blocks_and_keeps_some_resident(tiny, monkeypatch):
    family, pipe = tiny
    transformer = pipe.transformer
    blocks = getattr(transformer, family.blocks)
    embedder = getattr(transformer, "time_embed", "absent")  # LTX has one; only Mochi's is held out
    seen = {}

    def stream(module, device):  # what diffusers would be handed to hook
        seen["streamed"] = list(getattr(module, family.blocks))
        seen["time_embed"] = getattr(module, "time_embed", "absent")

    monkeypatch.setattr(placement, "_stream_blocks", stream)
    assert placement._group_offload(transformer, "cpu", resident_gib=0.0, family=family) == 0
    assert seen["streamed"] == list(blocks) and seen["time_embed"] is embedder
    block_gib = sum(p.numel() * p.element_size() for p in blocks[0].parameters()) / 2**30
    assert placement._group_offload(transformer, "cpu", resident_gib=1.5 * block_gib, family=family) == 1
    assert len(seen["streamed"]) == len(blocks) - 1 and seen["time_embed"] is embedder
    assert getattr(transformer, family.blocks) is blocks  # the full list is back


def _free_gib_picks(memory, free_gib, largest=None) -> str:
    return profiles.choose_auto(free_gib, "cuda", largest, memory).name


def test_auto_sizes_a_family_model_by_its_own_memory_model():
    wan = profiles.family_memory(WAN, "realsize-wan2.1-1.3b")
    # 1.3B parameters: resident fits where Mochi's 10B would have to stream its blocks.
    assert _free_gib_picks(wan, 20.0) == "resident"
    assert _free_gib_picks(None, 20.0) == "group-offload"
    # Its estimate grows with the video, and group offload takes over when it no longer fits.
    assert profiles.family_memory(WAN, "realsize-wan2.1-14b").peak_gib("resident", 81, 480, 832) > 28
    assert _free_gib_picks(profiles.family_memory(WAN, "realsize-wan2.1-14b"), 24.0) == "group-offload"
    assert profiles.family_memory(MOCHI, "realsize") is None  # Mochi keeps the registry's fitted model


def test_auto_counts_the_text_encoder_and_a_small_models_group_offload(monkeypatch):
    wan = profiles.family_memory(WAN, "realsize-wan2.1-1.3b")
    # Phase one holds umT5 XXL alone (10.6 GiB in bf16): a 1.3B denoiser's 4-6 GiB is not the peak.
    assert wan.peak_gib("resident", 81, 480, 832) > 10.6
    # group-offload streams the encoder too, and never counts more of the denoiser than it has.
    assert wan.peak_gib("group-offload", 81, 480, 832) <= wan.peak_gib("resident", 81, 480, 832) - 5
    assert _free_gib_picks(wan, 8.0) == "group-offload"  # not resident (the encode would run out), not nf4
    ltx = profiles.family_memory(LTX, "realsize-ltx-2b")
    assert ltx.peak_gib("group-offload", 161, 512, 704) <= ltx.peak_gib("resident", 161, 512, 704)


def _save_transformer(folder, numel: int, name: str = "diffusion_pytorch_model.safetensors") -> None:
    import torch
    from safetensors.torch import save_file

    (folder / "transformer").mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.zeros(numel, dtype=torch.float32)}, str(folder / "transformer" / name))


def test_a_folders_memory_model_counts_its_transformers_parameters(tmp_path):
    # Parameters from the safetensors header, in bf16 whatever the files store (fp32 here), one variant once.
    _save_transformer(tmp_path, 1024)
    _save_transformer(tmp_path, 1024, "diffusion_pytorch_model.fp16.safetensors")
    memory = profiles.family_memory(WAN, str(tmp_path))
    assert {weights for _, weights in memory.candidates} == {1024 * 2 / 2**30}
    assert len(memory.candidates) == len(WAN.memory)  # unmatched to a published config: sized by each
    small = memory.peak_gib("resident", 81, 480, 832)
    assert small < profiles.family_memory(WAN, "realsize-wan2.1-14b").peak_gib("resident", 81, 480, 832)
    sharded = tmp_path / "sharded"
    for i in (1, 2):
        _save_transformer(sharded, 512, f"diffusion_pytorch_model-0000{i}-of-00002.safetensors")
    assert profiles.family_memory(WAN, str(sharded)).candidates[0][1] == 1024 * 2 / 2**30
    assert profiles.family_memory(WAN, str(tmp_path / "missing")).candidates[0][1] is None


@pytest.mark.parametrize("family", NEW, ids=lambda f: f.name)
def test_auto_on_a_gpu_keeps_a_small_family_model_resident_or_streams_it(tmp_path, monkeypatch, family):
    import torch

    from batchgen.engine.renderer import Renderer

    family.builders().build_tiny().save_pretrained(tmp_path)
    for free_gib, picked in ((64, "resident"), (8, "group-offload")):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None, f=free_gib: (f * 2**30, 80 * 2**30))
        r = Renderer(str(tmp_path), profile="auto", device="cuda", progress=False)
        assert r.profile == picked, (free_gib, r.choice.reason)


def test_realsize_family_models_refuse_quantizing_on_load(monkeypatch):
    import torch

    from batchgen.engine.loading import ModelLoadError, load_pipeline
    from batchgen.engine.placement import load_kwargs

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ModelLoadError, match="cannot be quantized on load"):
        load_pipeline("realsize-ltx-2b", load_kwargs=load_kwargs("nf4", "cuda"))


def test_doctor_sizes_a_family_model_by_its_memory_model_and_profiles():
    from batchgen.engine import doctor, doctor_profiles

    gpu = {"index": 0, "name": "H200", "capability": "9.0", "bf16": True, "free": 20 * 2**30, "total": 140 * 2**30}
    wan = doctor_profiles.check_profiles([gpu], True, "realsize-wan2.1-1.3b")
    assert "for 81 frames at 480x832" in wan.detail and "fp8-fast" not in wan.detail
    assert wan.status == doctor.OK and "resident ~12 GiB fits" in wan.detail
    mochi = doctor_profiles.check_profiles([gpu], True, "realsize")
    assert "for 163 frames at 480x848" in mochi.detail and "fp8-fast" in mochi.detail
    assert mochi.status == doctor.WARN  # Mochi's 10B does not stay resident at 163 frames in 20 GiB


def test_the_batchs_largest_video_is_counted_in_the_familys_tokens(tmp_path, monkeypatch):
    from batchgen.manifest.parse import load_manifest
    from batchgen.run import supervisor

    # Mochi's 6x time compression would rank 25 frames at 512x704 first; LTX's 8x ranks 17 at 512x1024.
    path = write_manifest(tmp_path / "jobs.yaml", "model: tiny-ltx\njobs:\n"
                          "  - {prompt: long, num_frames: 25, height: 512, width: 704}\n"
                          "  - {prompt: wide, num_frames: 17, height: 512, width: 1024}\n")
    seen = {}

    def fake_resolve(profile, device=None, *, largest=None, **family):
        seen["largest"] = largest
        return profiles.ProfileChoice("cpu", "cpu", "test")

    monkeypatch.setattr(profiles, "resolve", fake_resolve)
    supervisor.plan(load_manifest(path))
    assert seen["largest"] == (17, 512, 1024)


def test_doctor_names_what_auto_picks_when_the_fastest_fit_is_not_its_choice(monkeypatch):
    from batchgen.engine import doctor_profiles, fp8_attention

    monkeypatch.setattr(fp8_attention, "fa3_module", lambda: None)
    gpu = {"index": 0, "name": "H100", "capability": "9.0", "bf16": True, "free": 24.5 * 2**30, "total": 80 * 2**30}
    check = doctor_profiles.check_profiles([gpu], True)
    # fp8-fast fits 163 Mochi frames in 24.5 GiB where resident does not; auto walks only its bf16 order.
    assert "Fastest that fits: fp8-fast" in check.detail
    assert "`auto` picks group-offload" in check.fix and "already picks" not in check.fix
