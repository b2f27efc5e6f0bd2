"""fp8 attention (batchgen.engine.fp8_attention): quantization and the emulated kernel on the CPU; the fp8
kernels themselves only where a Hopper GPU and FA3 are present (skipped otherwise). No timings."""

import pytest
import torch

from batchgen.engine import fp8_attention as fa
from batchgen.engine.attention import joint_attention


def _data(offset=0.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 300, 3, 128, generator=gen) for _ in range(3))
    k = k + offset * torch.randn(1, 1, 3, 128, generator=gen)
    v = v + offset * torch.randn(1, 1, 3, 128, generator=gen)
    valid = torch.ones(2, 300, dtype=torch.bool)
    valid[0, 250:] = False
    return q.bfloat16(), k.bfloat16(), v.bfloat16(), valid


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def _tiny_inputs(transformer) -> dict:
    """One CFG-batch forward's inputs for a tiny Mochi transformer, the first prompt padded."""
    gen = torch.Generator().manual_seed(0)
    cfg = transformer.config
    inputs = dict(hidden_states=torch.randn(2, cfg.in_channels, 2, 8, 8, generator=gen),
                  encoder_hidden_states=torch.randn(2, 16, cfg.text_embed_dim, generator=gen),
                  timestep=torch.tensor([500, 500]), encoder_attention_mask=torch.ones(2, 16, dtype=torch.bool),
                  return_dict=False)
    inputs["encoder_attention_mask"][0, 9:] = False
    return inputs


def test_quantize_scales_each_head_to_e4m3_range():
    q, _, _, valid = _data()
    q8, descale, mean = fa.quantize(q, valid)
    assert q8.dtype == torch.float8_e4m3fn and descale.shape == (2, 3) and mean is None
    back = q8.float() * descale[:, None, :, None]
    assert _rel(back[valid], q.float()[valid]) < 0.05
    assert float(q8.float().abs().amax()) == pytest.approx(448.0)


def test_emulated_fp8_attention_close_to_exact_and_smoothing_is_exact_math():
    q, k, v, valid = _data(offset=2.0)
    want = joint_attention(q.float(), k.float(), v.float(), valid, "sdpa")
    plain = fa.attention_fp8(q, k, v, valid, "emulated", smooth_k=False)
    smooth = fa.attention_fp8(q, k, v, valid, "emulated", smooth_k=True, smooth_v=True)
    assert _rel(smooth, want) < _rel(plain, want)
    assert _rel(smooth, want) < 0.06
    assert float(smooth[0, 250:].abs().max()) == 0.0  # padded query rows are zero, as on the exact path


def test_unavailable_without_cuda_says_why():
    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    assert "CUDA" in fa.unavailable("cpu", "fa3")
    assert fa.unavailable("cpu", "emulated") is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fa3_kernel_matches_emulated_where_available():
    why = fa.unavailable("cuda", "fa3")
    if why:
        pytest.skip(why)
    q, k, v, valid = (t.cuda() for t in _data())
    got = fa.attention_fp8(q, k, v, valid, "fa3")
    want = fa.attention_fp8(q, k, v, valid, "emulated")
    assert _rel(got, want) < 0.05


def test_fp8_processor_keeps_the_exact_processor_around_its_core():
    # Fp8MochiAttnProcessor only swaps the attention core of batchgen's exact processor: a block's output
    # stays close to the exact one (fp8 error only), and the backend is recorded like attention.install's.
    from batchgen.engine import attention
    from batchgen.engine.loading import build_tiny_pipeline
    from batchgen.engine.module_state import state
    from test_attention import _block_inputs

    transformer = build_tiny_pipeline().transformer
    args = _block_inputs(transformer)
    block = transformer.transformer_blocks[0]
    try:
        with torch.no_grad():
            attention.install(transformer, "sdpa")
            want = block(*args)
            assert fa.install(transformer, "emulated") == "fp8-emulated"
            assert state(transformer).attention == "fp8-emulated"
            got = block(*args)
    finally:
        attention.uninstall(transformer)
    for g, w in zip(got, want):
        assert g.shape == w.shape and torch.isfinite(g).all()
        assert 0 < _rel(g, w) < 0.1


def test_nan_in_padded_tokens_stays_out_of_scales_and_means():
    # Padded text tokens may hold NaN (torchao's float8 linears give NaN for their all-zero rows): the
    # per-head scales and the K/V means are taken over valid tokens only, so the output does not move.
    q, k, v, valid = _data(offset=1.0)
    clean = fa.attention_fp8(q, k, v, valid, "emulated", smooth_v=True)
    for t in (q, k, v):
        t[0, 250:] = float("nan")
    dirty = fa.attention_fp8(q, k, v, valid, "emulated", smooth_v=True)
    assert torch.equal(dirty, clean)


def test_fp8_attn_profile_has_its_own_precision_and_is_refused_with_why(monkeypatch):
    from batchgen.engine import fp8_matmul, profiles
    from batchgen.errors import BatchgenError

    assert len({profiles.precision(p) for p in ("fast", "fp8-fast", "fp8-attn")}) == 3
    monkeypatch.setattr(fp8_matmul, "supported", lambda device: None)
    monkeypatch.setattr(fa, "unavailable", lambda device, kernel=fa.DEFAULT_KERNEL: "fp8 attention needs FlashAttention-3: pip install fa3-fwd")
    with pytest.raises(BatchgenError, match="profile 'fp8-attn': fp8 attention needs FlashAttention-3.*'fp8-fast'"):
        profiles.resolve("fp8-attn", "cuda:0")
    choice = profiles.resolve("fp8-attn", "cpu")
    assert choice.name == "cpu" and "fp8-attn" in choice.reason


def test_doctor_lists_fp8_attn_only_on_hopper_with_fa3(monkeypatch):
    from batchgen.engine import doctor_profiles
    from test_doctor import gpu

    monkeypatch.setattr(fa, "fa3_module", lambda: None)
    assert "fp8-attn needs FlashAttention-3: pip install fa3-fwd" in doctor_profiles.check_profiles([gpu(70)], True).detail
    ada = doctor_profiles.check_profiles([gpu(70, capability=(8, 9))], True).detail
    assert "fp8-attn needs a Hopper GPU" in ada and "fp8-fast ~" in ada
    assert "fp8-attn needs an Ada or Hopper GPU" in doctor_profiles.check_profiles([gpu(70, capability=(8, 0))], True).detail
    monkeypatch.setattr(fa, "fa3_module", lambda: object())
    assert "fp8-attn ~" in doctor_profiles.check_profiles([gpu(70)], True).detail


def test_fp8_attn_placement_installs_the_recipe(monkeypatch):
    # The profile's placement is fp8-fast's plus the fp8 attention processor with the recipe of its tag.
    from batchgen.engine import compile as bcompile
    from batchgen.engine import fp8_matmul, placement
    from batchgen.engine.loading import build_tiny_pipeline
    from batchgen.engine.module_state import state

    converted = []
    monkeypatch.setattr(fp8_matmul, "convert_blocks", lambda t: converted.append(t) or 1)
    monkeypatch.setattr(bcompile, "compile_blocks", lambda t, blocks="transformer_blocks": None)
    pipe = build_tiny_pipeline()
    placement.prepare_denoiser(pipe, "fp8-attn", "cpu", quality=False)
    procs = {type(b.attn1.processor) for b in pipe.transformer.transformer_blocks}
    assert procs == {fa.Fp8MochiAttnProcessor} and converted == [pipe.transformer]
    proc = pipe.transformer.transformer_blocks[0].attn1.processor
    assert (proc.kernel, proc.smooth_k, proc.smooth_v) == ("fa3", True, True)
    assert state(pipe.transformer).attention == "fp8-fa3"


# -- the v2 recipe (attention_fp8_bounded) --------------------------------------------------------------
def test_one_pass_statistics_give_the_same_e4m3_values_as_two_passes():
    _, k, _, valid = _data(offset=2.0)
    k[0, 260] = float("nan")  # a padded token: kept out of both
    two = fa.quantize(k, valid, smooth=True)
    one = fa.quantize_one_pass(k, valid)
    assert torch.equal(two[0].view(torch.uint8), one[0].view(torch.uint8))
    assert torch.equal(two[1], one[1]) and torch.equal(two[2], one[2])


def test_rms_norm_bound_holds_for_any_input_after_rotary():
    from diffusers.models.normalization import MochiRMSNorm

    from batchgen.engine.attention import _rotary

    norm = MochiRMSNorm(128, 1e-5, True)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(128, generator=torch.Generator().manual_seed(3)) * 2)
    bound = fa.rms_norm_bound(norm).detach()
    # the worst case: all of a vector's length in the channel pair with the largest weight
    x = torch.randn(4, 50, 2, 128)
    top = int(norm.weight.abs().argmax())
    x[0, 0, 0] = 0.0
    x[0, 0, 0, top] = 1.0
    angle = torch.rand(50, 1, 64) * 6.3
    angle[0] = 0.0  # token 0 unrotated: its value in `top` is the bound itself
    y = _rotary(norm(x.bfloat16()), torch.cos(angle), torch.sin(angle))
    assert float(y.float().abs().amax()) <= float(bound)
    assert float(y.float().abs().amax()) > 0.9 * float(bound) / 1.01  # and it is tight for that case


def test_bounded_recipe_is_close_to_exact_and_ignores_padded_nan():
    q, k, v, valid = _data(offset=2.0)
    want = joint_attention(q.float(), k.float(), v.float(), valid, "sdpa")
    bound = q.float().abs().amax() * 3  # any bound above |q| (the processor takes the norm's)
    got = fa.attention_fp8_bounded(q, k, v, valid, bound, "emulated")
    assert got.dtype == torch.bfloat16 and _rel(got, want) < 0.06
    assert torch.equal(got[0, 250:], torch.zeros_like(got[0, 250:]))
    for t in (k, v):
        t[0, 250:] = float("nan")
    assert torch.equal(fa.attention_fp8_bounded(q, k, v, valid, bound, "emulated"), got)


def test_bounded_processor_in_a_tiny_model_is_close_to_the_exact_path():
    from batchgen.engine import attention
    from batchgen.engine.families import MOCHI

    pipe = MOCHI.builders().build_tiny()
    transformer = pipe.transformer
    inputs = _tiny_inputs(transformer)
    with torch.no_grad():
        attention.install(transformer, "sdpa")
        want = transformer(**inputs)[0]
        assert fa.install(transformer, "emulated", bounded=True) == "fp8b-emulated"
        got = transformer(**inputs)[0]
    attention.uninstall(transformer)
    assert torch.isfinite(got).all() and 0 < _rel(got, want) < 0.1


# -- query and key channels in half-split order (qk_halves) ---------------------------------------------
def test_half_split_rotary_is_the_interleaved_one_permuted():
    from batchgen.engine import qk_halves
    from batchgen.engine.attention import _rotary

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 40, 3, 128, generator=gen).bfloat16()
    cos, sin = torch.randn(40, 3, 64, generator=gen), torch.randn(40, 3, 64, generator=gen)
    order = qk_halves.halves_order(128)
    assert torch.equal(qk_halves.rotary_halves(x[..., order], cos, sin), _rotary(x, cos, sin)[..., order])


def test_half_split_model_matches_the_interleaved_recipe_and_puts_its_weights_back():
    from batchgen.engine import attention, qk_halves
    from batchgen.engine.families import MOCHI

    transformer = MOCHI.builders().build_tiny().transformer
    inputs = _tiny_inputs(transformer)
    before = {n: p.clone() for n, p in transformer.named_parameters()}
    with torch.no_grad():
        attention.install(transformer, "sdpa")
        exact = transformer(**inputs)[0]
        fa.install(transformer, "emulated", bounded=True)
        interleaved = transformer(**inputs)[0]
        assert qk_halves.install(transformer, "emulated") == "fp8bh-emulated"
        assert not torch.equal(transformer.transformer_blocks[0].attn1.to_q.weight, before["transformer_blocks.0.attn1.to_q.weight"])
        halves = transformer(**inputs)[0]
        qk_halves.to_interleaved(transformer)
        attention.install(transformer, "sdpa")
        again = transformer(**inputs)[0]
    attention.uninstall(transformer)
    # The same attention up to the order of sums: far closer to the interleaved recipe than either is to exact.
    assert _rel(halves, interleaved) < 0.1 * _rel(interleaved, exact)
    assert all(torch.equal(p, before[n]) for n, p in transformer.named_parameters())
    assert torch.equal(again, exact)


# -- the profile's recipes (fp8_attention_recipes, BATCHGEN_FP8_ATTN_RECIPE) -----------------------------
def test_each_fp8_attn_recipe_has_its_own_precision_and_a_bad_one_names_the_variable(monkeypatch):
    from batchgen.engine import profiles
    from batchgen.errors import BatchgenError

    seen = set()
    for recipe in ("v1", "v2", "v2h"):
        monkeypatch.setenv("BATCHGEN_FP8_ATTN_RECIPE", recipe)
        seen.add(profiles.precision("fp8-attn"))
    assert len(seen) == 3 and profiles.precision("fp8-fast") not in seen
    monkeypatch.delenv("BATCHGEN_FP8_ATTN_RECIPE")
    assert profiles.precision("fp8-attn") == "fp8attn-fa3-smoothkv+fp8-rowwise-compiled"  # v1's, as recorded before
    monkeypatch.setenv("BATCHGEN_FP8_ATTN_RECIPE", "v3")
    with pytest.raises(BatchgenError, match="BATCHGEN_FP8_ATTN_RECIPE='v3'"):
        profiles.precision("fp8-attn")


def test_records_of_another_fp8_attn_recipe_say_which_setting_renders_them(monkeypatch, tmp_path):
    from batchgen.engine import profile_registry, profiles
    from batchgen.errors import BatchgenError
    from batchgen.job import Job
    from batchgen.run.supervisor import _refuse_kernel_switch
    from batchgen.store import Store

    monkeypatch.setenv("BATCHGEN_FP8_ATTN_RECIPE", "v2")
    v2 = profiles.precision("fp8-attn")
    monkeypatch.delenv("BATCHGEN_FP8_ATTN_RECIPE")
    v1 = profiles.precision("fp8-attn")
    assert "set BATCHGEN_FP8_ATTN_RECIPE=v2" in profiles.kernel_hint(v2 + "+quality")
    assert profiles.kernel_hint(v1) == "" and profile_registry.profile_for_precision(v2) == "fp8-attn"
    assert profiles.kernel_switched(v2, v1) and not profiles.kernel_switched(v2, "int8-bf16")
    store = Store(tmp_path)
    try:
        old = Job(prompt="a red fox", seed=1, num_frames=7, height=32, width=48, precision=v2)
        store.add_jobs([old.with_(output_name=f"{old.job_id}.mp4")])
        with pytest.raises(BatchgenError, match="BATCHGEN_FP8_ATTN_RECIPE=v2"):
            _refuse_kernel_switch(tmp_path, store, "tiny", v1)
        monkeypatch.setenv("BATCHGEN_FP8_ATTN_RECIPE", "v2h")
        assert "unset BATCHGEN_FP8_ATTN_RECIPE" in profiles.kernel_hint(v1)
    finally:
        store.close()


@pytest.mark.parametrize("recipe, processor, backend", [
    ("v2", "Fp8BoundedMochiAttnProcessor", "fp8b-fa3-batched"),
    ("v2h", "Fp8BoundedHalvesProcessor", "fp8bh-fa3-batched"),
])
def test_placement_installs_the_recipe_the_setting_names(monkeypatch, recipe, processor, backend):
    from batchgen.engine import compile as bcompile
    from batchgen.engine import fp8_matmul, placement, qk_halves
    from batchgen.engine.loading import build_tiny_pipeline
    from batchgen.engine.module_state import state

    monkeypatch.setenv("BATCHGEN_FP8_ATTN_RECIPE", recipe)
    monkeypatch.setattr(fp8_matmul, "convert_blocks", lambda t: 1)
    monkeypatch.setattr(bcompile, "compile_blocks", lambda t, blocks="transformer_blocks": None)
    pipe = build_tiny_pipeline()
    placement.prepare_denoiser(pipe, "fp8-attn", "cpu", quality=False)
    procs = {type(b.attn1.processor).__name__ for b in pipe.transformer.transformer_blocks}
    assert procs == {processor} and state(pipe.transformer).attention == backend
    assert qk_halves.halved(pipe.transformer) == (recipe == "v2h")


def test_the_half_split_recipe_installed_twice_permutes_the_channels_once():
    from batchgen.engine import fp8_attention_recipes, qk_halves
    from batchgen.engine.families import MOCHI

    transformer = MOCHI.builders().build_tiny().transformer
    inputs = _tiny_inputs(transformer)
    with torch.no_grad():
        assert fp8_attention_recipes.install(transformer, "v2h", kernel="emulated") == "fp8bh-emulated"
        once = transformer(**inputs)[0]
        weights = transformer.transformer_blocks[0].attn1.to_q.weight.clone()
        fp8_attention_recipes.install(transformer, "v2h", kernel="emulated")
        assert torch.equal(transformer.transformer_blocks[0].attn1.to_q.weight, weights)
        assert torch.equal(transformer(**inputs)[0], once)
        qk_halves.to_interleaved(transformer)
    assert not qk_halves.halved(transformer)


def test_no_interleaved_processor_goes_on_half_split_channels():
    # The channels' order lives in the module record, not in the backend name that any install overwrites.
    from batchgen.engine import attention, qk_halves
    from batchgen.engine.families import MOCHI

    transformer = MOCHI.builders().build_tiny().transformer
    qk_halves.install(transformer, "emulated")
    for put in (lambda: attention.install(transformer, "sdpa"), lambda: fa.install(transformer, "emulated"),
                lambda: attention.uninstall(transformer)):
        with pytest.raises(ValueError, match="half-split order"):
            put()
    assert qk_halves.halved(transformer)
    qk_halves.to_interleaved(transformer)
    assert attention.install(transformer, "sdpa") == "sdpa" and not qk_halves.halved(transformer)


def test_the_profile_probes_the_kernel_of_the_chosen_recipe(monkeypatch):
    from batchgen.engine import fp8_matmul, profiles

    probed = []
    monkeypatch.setattr(fp8_matmul, "supported", lambda device: None)
    monkeypatch.setattr(fa, "unavailable", lambda device, kernel=fa.DEFAULT_KERNEL: probed.append(kernel))
    for recipe in ("v1", "v2", "v2h"):
        monkeypatch.setenv("BATCHGEN_FP8_ATTN_RECIPE", recipe)
        assert profiles.resolve("fp8-attn", "cuda:0").name == "fp8-attn"
    assert probed == ["fa3", "fa3-batched", "fa3-batched"]


def test_records_of_the_v2_recipe_say_how_to_render_them_again(tmp_path, monkeypatch):
    import json

    from batchgen.manifest import load_manifest

    monkeypatch.setenv("BATCHGEN_FP8_ATTN_RECIPE", "v2")
    from batchgen.engine import profiles

    v2 = profiles.precision("fp8-attn", quality=True)
    monkeypatch.delenv("BATCHGEN_FP8_ATTN_RECIPE")
    row = {"job_id": "a" * 16, "prompt": "a red fox", "negative_prompt": "", "seed": 3, "num_frames": 7,
           "height": 32, "width": 48, "num_inference_steps": 2, "guidance_scale": 4.5, "fps": 8, "model": "tiny",
           "revision": None, "precision": v2, "profile": None, "file_name": "fox.mp4"}
    records = tmp_path / "metadata.jsonl"
    records.write_text(json.dumps(row) + "\n")
    manifest = load_manifest(records)
    assert manifest.profile == "fp8-attn" and manifest.quality
    assert any("fp8-attn now renders" in w and "BATCHGEN_FP8_ATTN_RECIPE=v2" in w for w in manifest.warnings)


def test_every_recipe_the_registry_names_can_be_installed():
    from batchgen.engine import fp8_attention_recipes, profile_registry

    names = [value for value, _ in profile_registry.get("fp8-attn").kernel_precisions]
    assert sorted(names) == sorted(fp8_attention_recipes.KERNELS)
