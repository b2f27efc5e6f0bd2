"""fp8-fast's linear layers: fp8 multiplies that stay close to bf16, and only where they belong."""

import pytest
import torch
from torch import nn

from batchgen.engine import fp8_matmul
from batchgen.engine import profiles
from batchgen.errors import BatchgenError
from batchgen.engine.fp8_matmul import Fp8Linear, convert_blocks


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("bias", [True, False])
def test_fp8_linear_tracks_the_bf16_layer(bias):
    torch.manual_seed(0)
    linear = nn.Linear(128, 64, bias=bias)
    x = torch.randn(3, 40, 128)
    # An outlier token: rowwise scales keep the other tokens' precision (a per-tensor scale would not).
    x[0, 0] *= 200
    fp8 = Fp8Linear(linear)
    with torch.no_grad():
        want, got = linear(x), fp8(x)
    assert got.shape == want.shape == (3, 40, 64)
    assert got.dtype == x.dtype
    assert _relative_error(got[1:], want[1:]) < 0.08  # e4m3 has 3 mantissa bits: a few percent
    assert _relative_error(got, want) < 0.08
    assert fp8.weight_fp8.dtype == torch.float8_e4m3fn
    assert not torch.equal(got, want)  # it really multiplied in fp8


def test_convert_blocks_swaps_only_the_block_linears(monkeypatch):
    from batchgen.engine.loading import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    transformer = pipe.transformer
    before = {n: type(m) for n, m in transformer.named_modules()}
    count = convert_blocks(transformer)
    after = {n: type(m) for n, m in transformer.named_modules()}
    swapped = [n for n in after if after[n] is Fp8Linear]
    assert count == len(swapped) > 0
    assert all(n.startswith("transformer_blocks.") for n in swapped)
    assert not [n for n in swapped if ".norm" in n]  # the AdaLN layers keep bf16 (batch-2 inputs)
    assert all(before[n] is nn.Linear for n in swapped)
    assert after["proj_out"] is nn.Linear and after["time_embed.caption_proj"] is nn.Linear


def test_fp8_fast_is_refused_where_fp8_tensor_cores_are_missing(monkeypatch):
    import batchgen.engine.fp8_matmul as mod

    monkeypatch.setattr(mod, "supported", lambda device: "fp8 matrix multiplies need an Ada (8.9) or Hopper (9.0) GPU")
    with pytest.raises(BatchgenError, match="profile 'fp8-fast': fp8 matrix multiplies need an Ada"):
        profiles.resolve("fp8-fast", "cuda:0")
    # Without a GPU it falls back to cpu like every GPU profile, saying so.
    choice = profiles.resolve("fp8-fast", "cpu")
    assert choice.name == "cpu" and "fp8-fast" in choice.reason


def test_fp8_fast_has_its_own_precision():
    assert profiles.precision("fp8-fast") == "fp8-rowwise-compiled"
    assert len({profiles.precision(p) for p in ("fast", "fp8", "fp8-fast", "resident")}) == 4
    assert fp8_matmul.supported("cpu") == "fp8 matrix multiplies need a CUDA GPU"
