"""batchgen.engine.attention's processor computes what diffusers' MochiAttnProcessor2_0 computes, on the tiny model."""

from batchgen.engine import placement
from batchgen.engine.module_state import peek

import numpy as np
import pytest
import torch

from batchgen.engine import attention
from batchgen.engine.loading import build_tiny_pipeline

CPU_BACKENDS = ("sdpa", "prefix")


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline()


def _block_inputs(transformer, seed=0):
    gen = torch.Generator().manual_seed(seed)
    cfg = transformer.config
    dim = cfg.num_attention_heads * cfg.attention_head_dim
    frames, h, w = 3, 4, 5
    hidden = torch.randn(2, frames * h * w, dim, generator=gen)
    text = torch.randn(2, 256, cfg.pooled_projection_dim, generator=gen)
    temb = torch.randn(2, dim, generator=gen)
    # Sample 0: an empty negative prompt (diffusers zeroes its whole mask); sample 1: 30 valid tokens.
    mask = torch.zeros(2, 256, dtype=torch.bool)
    mask[1, :30] = True
    freqs = torch.randn(transformer.pos_frequencies.shape, generator=gen)
    rope = transformer.rope(freqs, frames, h, w, device="cpu", dtype=torch.float32)
    return hidden, text, temb, mask, rope


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_every_block_matches_diffusers_in_fp32(pipe, backend):
    transformer = pipe.transformer
    args = _block_inputs(transformer)
    try:
        with torch.no_grad():
            for block in transformer.transformer_blocks:  # the last block has no text output layers
                attention.uninstall(transformer)
                want = block(*args)
                attention.install(transformer, backend)
                got = block(*args)
                for g, w in zip(got, want):
                    torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    finally:
        attention.uninstall(transformer)


def test_padded_text_tokens_are_ignored():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 40, 2, 8, generator=gen) for _ in range(3))
    text = torch.zeros(2, 8, dtype=torch.bool)
    text[0, :3] = True
    text[1, :8] = True
    valid = attention._key_valid(text, 32)
    out = attention.joint_attention(q, k, v, valid, "sdpa")
    # Whatever sits in the padded slots must not change a single valid row...
    k2, v2 = k.clone(), v.clone()
    k2[0, 35:] = 100.0
    v2[0, 35:] = -100.0
    out2 = attention.joint_attention(q, k2, v2, valid, "sdpa")
    torch.testing.assert_close(out2, out)
    # ...and the padded query rows come out as zeros, as diffusers pads them.
    assert torch.count_nonzero(out[0, 35:]) == 0
    assert torch.count_nonzero(out[1, 32:]) > 0


def test_full_pipeline_frames_match_diffusers(pipe):
    def render():
        frames = pipe(
            prompt="a red fox running through fresh snow",
            negative_prompt="blurry",
            num_frames=7,
            height=32,
            width=48,
            num_inference_steps=2,
            generator=torch.Generator("cpu").manual_seed(3),
            output_type="np",
            max_sequence_length=256,
        ).frames[0]
        return (np.clip(frames, 0, 1) * 255).round().astype(np.int16)

    attention.uninstall(pipe.transformer)
    want = render()
    try:
        assert attention.install(pipe.transformer) == "sdpa"
        got = render()
    finally:
        attention.uninstall(pipe.transformer)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1


def test_install_records_the_backend_and_refuses_unknown_ones(pipe):
    transformer = pipe.transformer
    try:
        assert attention.install(transformer, "auto") == "sdpa"  # CPU: the fused SDPA kernel
        assert peek(transformer).attention == "sdpa"
        processors = {type(b.attn1.processor) for b in transformer.transformer_blocks}
        assert processors == {attention.BatchgenMochiAttnProcessor}
        assert attention.install(transformer, "prefix") == "prefix"
        with pytest.raises(ValueError, match="unknown attention backend 'flash9'"):
            attention.install(transformer, "flash9")
    finally:
        attention.uninstall(transformer)
    assert peek(transformer).attention is None
    assert type(transformer.transformer_blocks[0].attn1.processor).__name__ == "MochiAttnProcessor2_0"


def test_gpu_only_backends_are_not_chosen_on_cpu():
    assert attention.choose_backend("cpu") == "sdpa"
    assert not attention._probe("flash-varlen", torch.device("cpu"), torch.float32)
    assert attention._probe("prefix", torch.device("cpu"), torch.float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the varlen and cuDNN kernels need a CUDA GPU")
@pytest.mark.parametrize("backend", ("cudnn", "flash-varlen", "fa3", "prefix"))
def test_gpu_backends_match_masked_sdpa(backend):
    if not attention._probe(backend, torch.device("cuda"), torch.bfloat16):
        pytest.skip(f"{backend} is not available on this GPU")
    gen = torch.Generator("cuda").manual_seed(0)
    # Mochi's layout: video tokens then 256 text tokens; sample 0 has an empty text, sample 1 40 tokens.
    b, video, heads, dim = 2, 300, 4, 64
    q, k, v = (torch.randn(b, video + 256, heads, dim, generator=gen, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    text_mask = torch.zeros(b, 256, dtype=torch.bool, device="cuda")
    text_mask[1, :40] = True
    key_valid = attention._key_valid(text_mask, video)
    want = attention._sdpa_masked(q, k, v, key_valid).float()
    got = attention._KERNELS[backend](q, k, v, key_valid).float()
    # Only the valid query rows are used downstream (padded text queries are dropped).
    for i in range(b):
        rows = key_valid[i]
        torch.testing.assert_close(got[i][rows], want[i][rows], atol=2e-2, rtol=2e-2)
