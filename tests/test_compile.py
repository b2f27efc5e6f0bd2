"""Mochi's blocks compile whole (no graph breaks) with batchgen's processor, and compute the same."""

import shutil

import pytest
import torch

from batchgen.engine import attention
from batchgen.engine import compile as bcompile
from batchgen.engine.loading import build_tiny_pipeline


@pytest.fixture
def transformer():
    model = build_tiny_pipeline().transformer
    yield model
    bcompile.uncompile_blocks(model)
    torch._dynamo.reset()


def _inputs(transformer):
    gen = torch.Generator().manual_seed(0)
    cfg = transformer.config
    hidden = torch.randn(2, cfg.in_channels, 2, 8, 10, generator=gen)  # 2 latent frames of 4x5 patches
    text = torch.randn(2, 256, cfg.text_embed_dim, generator=gen)
    mask = torch.zeros(2, 256, dtype=torch.bool)
    mask[0, :4] = True
    mask[1, :17] = True
    return dict(hidden_states=hidden, encoder_hidden_states=text, timestep=torch.tensor([300.0, 300.0]),
                encoder_attention_mask=mask, return_dict=False)


def _block_args(transformer):
    gen = torch.Generator().manual_seed(1)
    dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    mask = torch.zeros(2, 256, dtype=torch.bool)
    mask[:, :9] = True
    rope = transformer.rope(transformer.pos_frequencies, 2, 4, 5, device="cpu", dtype=torch.float32)
    return (torch.randn(2, 40, dim, generator=gen), torch.randn(2, 256, transformer.config.pooled_projection_dim,
            generator=gen), torch.randn(2, dim, generator=gen), mask, rope)


def test_blocks_trace_without_graph_breaks(transformer):
    args = _block_args(transformer)
    block = transformer.transformer_blocks[0]
    with torch.no_grad():
        breaks, _ = bcompile.graph_breaks(block, *args)
        assert breaks > 0  # diffusers' processor: torch.nonzero per sample
        for backend in ("sdpa", "prefix"):
            attention.install(transformer, backend)
            breaks, reasons = bcompile.graph_breaks(block, *args)
            assert breaks == 0, reasons


def _inductor_works() -> bool:
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        return False
    try:
        import torch._inductor  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.skipif(not _inductor_works(), reason="torch inductor on the CPU needs a C compiler")
def test_compiled_transformer_matches_eager(transformer):
    inputs = _inputs(transformer)
    name = attention.install(transformer, "sdpa")
    with torch.no_grad():
        want = transformer(**inputs)[0]
        stats = bcompile.compile_blocks(transformer)
        got = transformer(**inputs)[0]
        again = transformer(**inputs)[0]
    assert stats.blocks == len(transformer.transformer_blocks) and stats.fullgraph and not stats.dynamic
    assert stats.attention == name
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(again, got)
    bcompile.uncompile_blocks(transformer)
    assert all(b._compiled_call_impl is None for b in transformer.transformer_blocks)
