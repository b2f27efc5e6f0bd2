"""The int8 profile's kernel: bitsandbytes' int8 weights, dequantized per layer, multiplied in bf16."""

from batchgen.engine import placement
from batchgen.engine.module_state import peek

import json

import numpy as np
import pytest
import torch

from batchgen.engine import profiles
from batchgen.errors import BatchgenError

bnb = pytest.importorskip("bitsandbytes")

from batchgen.engine.int8_linear import Int8Linear, convert  # noqa: E402


def _quantized(linear: torch.nn.Linear) -> torch.nn.Module:
    layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                has_fp16_weights=False, threshold=6.0)
    layer.load_state_dict(linear.state_dict())
    return layer.to("cpu")  # bitsandbytes quantizes when the layer is moved to a device


def test_dequantized_weight_is_bitsandbytes_int8_times_absmax_over_127():
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 40)
    layer = _quantized(linear)
    cb, scb = layer.weight.data, layer.weight.SCB
    mine = Int8Linear(layer).dequantized(torch.bfloat16)
    assert mine.dtype == torch.bfloat16 and mine.shape == (40, 96)
    # One float32 multiply per element, rounded once to bf16.
    assert torch.equal(mine, (cb.float() * (scb.float() * (1.0 / 127)).reshape(-1, 1)).to(torch.bfloat16))
    theirs = bnb.functional.int8_vectorwise_dequant(cb, scb)
    assert torch.allclose(mine.float(), theirs, rtol=2 ** -8, atol=0)
    # And it is the original weight up to int8's rounding (half a step of each row's absmax / 127) and bf16's.
    step = scb.reshape(-1, 1) / 127
    assert ((mine.float() - linear.weight.detach()).abs() <= step * 0.5 + mine.float().abs() * 2 ** -8).all()


def test_convert_replaces_every_int8_layer_and_stays_close_to_the_float_model():
    torch.manual_seed(1)
    float_model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 32, bias=False))
    model = torch.nn.Sequential(_quantized(float_model[0]), torch.nn.GELU(), _quantized(float_model[2]))
    x = torch.randn(8, 64)
    # Run bitsandbytes' own forward first: afterwards it keeps the int8 weight in `layer.state`, not on the weight.
    llm_int8 = model(x).detach()
    assert convert(model) == 2
    assert all(not isinstance(m, bnb.nn.Linear8bitLt) for m in model.modules())
    assert isinstance(model[0], Int8Linear) and isinstance(model[2], Int8Linear) and model[2].bias is None
    assert convert(model) == 0  # nothing left to convert
    out = model(x).detach()
    reference = float_model(x).detach()
    error = (out - reference).norm() / reference.norm()
    assert error < 0.02
    # Activations stay in float: no worse than LLM.int8, which also quantizes them.
    assert error <= (llm_int8 - reference).norm() / reference.norm() + 1e-3


def test_bf16_inputs_multiply_in_bf16():
    torch.manual_seed(2)
    layer = Int8Linear(_quantized(torch.nn.Linear(32, 16)))
    x = torch.randn(4, 32, dtype=torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    expected = torch.nn.functional.linear(x, layer.dequantized(torch.bfloat16), layer.bias.to(torch.bfloat16))
    assert torch.equal(out, expected)


def test_a_layer_without_int8_weights_is_refused():
    layer = bnb.nn.Linear8bitLt(8, 4, has_fp16_weights=True)
    with pytest.raises(ValueError, match="no quantized int8 weight"):
        Int8Linear(layer)


def test_int8_precision_names_its_kernel(monkeypatch):
    monkeypatch.delenv("BATCHGEN_INT8_KERNEL", raising=False)
    assert profiles.precision("int8") == "int8-bf16"
    assert profiles.precision("int8", quality=True) == "int8-bf16+quality"
    monkeypatch.setenv("BATCHGEN_INT8_KERNEL", "llm-int8")
    assert profiles.precision("int8") == "int8"
    assert profiles.kernel_hint("int8+quality") == ""
    monkeypatch.setenv("BATCHGEN_INT8_KERNEL", "int4")
    with pytest.raises(BatchgenError, match="BATCHGEN_INT8_KERNEL='int4'"):
        profiles.precision("int8")


def test_prepare_denoiser_converts_a_quantized_transformer(monkeypatch):
    from batchgen.engine.loading import build_tiny_pipeline
    from batchgen.engine.realsize import quantize_transformer_inplace

    monkeypatch.delenv("BATCHGEN_INT8_KERNEL", raising=False)
    pipe = build_tiny_pipeline()
    swapped = quantize_transformer_inplace(pipe.transformer, "int8")
    assert swapped > 0
    placement.prepare_denoiser(pipe, "int8", "cpu", quality=False)
    assert peek(pipe.transformer).int8_linears == swapped
    assert not any(isinstance(m, bnb.nn.Linear8bitLt) for m in pipe.transformer.modules())


def test_prepare_denoiser_keeps_llm_int8_when_asked(monkeypatch):
    from batchgen.engine.loading import build_tiny_pipeline
    from batchgen.engine.realsize import quantize_transformer_inplace

    monkeypatch.setenv("BATCHGEN_INT8_KERNEL", "llm-int8")
    pipe = build_tiny_pipeline()
    quantize_transformer_inplace(pipe.transformer, "int8")
    placement.prepare_denoiser(pipe, "int8", "cpu", quality=False)
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in pipe.transformer.modules())
    assert not any(isinstance(m, Int8Linear) for m in pipe.transformer.modules())


def test_llm_int8_records_say_how_to_render_them_again(tmp_path, monkeypatch):
    from batchgen.manifest import load_manifest

    monkeypatch.delenv("BATCHGEN_INT8_KERNEL", raising=False)
    row = {"job_id": "a" * 16, "prompt": "a red fox", "negative_prompt": "", "seed": 3, "num_frames": 7,
           "height": 32, "width": 48, "num_inference_steps": 2, "guidance_scale": 4.5, "fps": 8, "model": "tiny", "revision": None, "precision": "int8",
           "profile": "int8", "file_name": "fox.mp4"}
    records = tmp_path / "metadata.jsonl"
    records.write_text(json.dumps(row) + "\n")
    manifest = load_manifest(records)
    assert manifest.profile == "int8"
    assert any("BATCHGEN_INT8_KERNEL=llm-int8" in w and "metadata.jsonl" in w for w in manifest.warnings)
    monkeypatch.setenv("BATCHGEN_INT8_KERNEL", "llm-int8")
    assert not any("BATCHGEN_INT8_KERNEL" in w for w in load_manifest(records).warnings)


def test_int8_frames_are_close_to_the_float_model(monkeypatch):
    """The tiny pipeline renders nearly the same frames from int8 weights as from its float ones."""
    from batchgen.job import Job
    from batchgen.engine.loading import build_tiny_pipeline
    from batchgen.engine.realsize import quantize_transformer_inplace
    from batchgen.engine.renderer import Renderer

    monkeypatch.delenv("BATCHGEN_INT8_KERNEL", raising=False)
    job = Job(prompt="a red fox in snow", seed=5, num_frames=7, height=32, width=48, num_inference_steps=3)
    reference = Renderer("tiny", profile="cpu", device="cpu", progress=False).render(job).frames
    pipe = build_tiny_pipeline()
    quantize_transformer_inplace(pipe.transformer, "int8")
    placement.prepare_denoiser(pipe, "int8", "cpu", quality=False)
    frames = Renderer("tiny", profile="cpu", device="cpu", progress=False, pipeline=pipe).render(job).frames
    assert frames.shape == reference.shape
    diff = np.abs(frames.astype(int) - reference.astype(int))
    assert diff.mean() < 1.0  # 0.4 measured; a 10% scale error gives 1.4, another seed 16.7


def test_float32_inputs_multiply_with_the_exact_float32_weight():
    torch.manual_seed(3)
    layer = Int8Linear(_quantized(torch.nn.Linear(32, 16)))
    x = torch.randn(4, 32)
    weight = layer.weight_int8.float() * layer.weight_scale  # one float32 multiply, no bf16 rounding
    assert torch.equal(layer(x), torch.nn.functional.linear(x, weight, layer.bias))


def test_layers_keeping_16_bit_weights_are_left_alone():
    kept = bnb.nn.Linear8bitLt(8, 4, has_fp16_weights=True)
    model = torch.nn.Sequential(kept, _quantized(torch.nn.Linear(4, 2)))
    assert convert(model) == 1
    assert model[0] is kept and isinstance(model[1], Int8Linear)


def test_hints_point_both_ways_and_switches_are_detected(monkeypatch):
    monkeypatch.delenv("BATCHGEN_INT8_KERNEL", raising=False)
    assert "BATCHGEN_INT8_KERNEL=llm-int8" in profiles.kernel_hint("int8+quality")
    assert profiles.kernel_hint("int8-bf16") == "" and profiles.kernel_hint("bf16") == ""
    monkeypatch.setenv("BATCHGEN_INT8_KERNEL", "llm-int8")
    assert "unset BATCHGEN_INT8_KERNEL" in profiles.kernel_hint("int8-bf16+pab")
    assert profiles.kernel_switched("int8", "int8-bf16")
    assert profiles.kernel_switched("int8-bf16+quality", "int8+quality")
    assert not profiles.kernel_switched("int8", "int8-bf16+quality")
    assert not profiles.kernel_switched("int8", "int8")
    assert not profiles.kernel_switched("fp8", "int8-bf16")


def test_a_folder_started_under_the_other_int8_kernel_is_not_rendered_again(tmp_path, monkeypatch):
    from batchgen.job import Job
    from batchgen.run.supervisor import _refuse_kernel_switch
    from batchgen.store import Store

    monkeypatch.delenv("BATCHGEN_INT8_KERNEL", raising=False)
    store = Store(tmp_path)
    try:
        old = Job(prompt="a red fox", seed=1, num_frames=7, height=32, width=48, precision="int8")
        store.add_jobs([old.with_(output_name=f"{old.job_id}.mp4")])
        _refuse_kernel_switch(tmp_path, store, "tiny", "fp32")  # other recipes may share a folder
        with pytest.raises(BatchgenError, match="BATCHGEN_INT8_KERNEL=llm-int8") as err:
            _refuse_kernel_switch(tmp_path, store, "tiny", "int8-bf16")
        assert "1 job(s) at precision int8" in str(err.value) and str(tmp_path) in str(err.value)
        monkeypatch.setenv("BATCHGEN_INT8_KERNEL", "llm-int8")
        _refuse_kernel_switch(tmp_path, store, "tiny", "int8")
    finally:
        store.close()


def test_ray_actors_get_batchgens_settings_but_not_fault_injection():
    from batchgen.run.ray_pool import forwarded_env

    env = {"BATCHGEN_INT8_KERNEL": "llm-int8", "BATCHGEN_FAULT": "x", "BATCHGEN_FAULT_WORKER": "w1",
           "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "HOME": "/root"}
    assert forwarded_env(env) == {"BATCHGEN_INT8_KERNEL": "llm-int8", "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}


def _int8_tiny_frames(monkeypatch, precompute: str, jobs):
    from batchgen.engine.loading import build_tiny_pipeline
    from batchgen.engine.realsize import quantize_transformer_inplace
    from batchgen.engine.renderer import Renderer

    monkeypatch.delenv("BATCHGEN_INT8_KERNEL", raising=False)
    monkeypatch.setenv("BATCHGEN_PRECOMPUTE_MODULATION", precompute)
    pipe = build_tiny_pipeline()
    quantize_transformer_inplace(pipe.transformer, "int8")
    placement.prepare_denoiser(pipe, "int8", "cpu", quality=False)
    renderer = Renderer("tiny", profile="cpu", device="cpu", progress=False, pipeline=pipe)
    return pipe, [renderer.render(job).frames for job in jobs]


def test_int8_modulation_is_precomputed_without_changing_a_pixel(monkeypatch):
    from batchgen.job import Job
    from batchgen.engine.modulation import _Lookup

    jobs = [Job(prompt="a red fox in snow", negative_prompt="blurry", seed=s, num_frames=7, height=32, width=48,
                num_inference_steps=3) for s in (5, 6)]
    plain_pipe, plain = _int8_tiny_frames(monkeypatch, "0", jobs)
    pipe, precomputed = _int8_tiny_frames(monkeypatch, "", jobs)
    assert peek(plain_pipe.transformer).modulation is None
    table = peek(pipe.transformer).modulation
    assert table.layers and all(layer.scale is not None and layer.weight.dtype == torch.int8 for layer in table.layers)
    assert isinstance(pipe.transformer.transformer_blocks[0].norm1.linear, _Lookup)
    for a, b in zip(plain, precomputed):
        assert np.array_equal(a, b)
    assert not np.array_equal(precomputed[0], precomputed[1])
