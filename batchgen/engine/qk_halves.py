"""Mochi's query and key channels in half-split order: the same attention, a cheaper rotary embedding.

Mochi's rotary embedding turns the channel pairs (2i, 2i+1) of every head, so the compiled kernel that
applies the QK RMSNorm and the rotary embedding reads and writes every other element: on an H100 it ran at
a third of the memory bandwidth, the largest Triton kernel of an fp8-attn step (FP8_ATTENTION.md, run 6).
Attention only ever uses dot products q . k over a head's channels, which do not change when the channels
of every query and every key are permuted the same way. So `to_halves` permutes, once, the output rows of
the four projections that make queries and keys (video and text streams) and the weights of their
RMSNorms to the order (0, 2, 4, ..., 1, 3, 5, ...), and `rotary_halves` then turns channel i with channel
i + D/2: contiguous halves in, contiguous halves out, each element the same fp32 arithmetic as the
interleaved form. Values and V are untouched; the attention output is the same up to the order of the
sums inside the kernels.

The fp8-attn profile's recipe v2h (BATCHGEN_FP8_ATTN_RECIPE=v2h, fp8_attention_recipes.py) and the benchmark
variants `fp8attn-v2h*`. The weights are changed in place (before fp8_matmul converts them, since
placement installs attention first), so `to_interleaved` puts them back for the benchmarks.
"""

from __future__ import annotations

import torch

from batchgen.engine.fp8_attention import Fp8BoundedMochiAttnProcessor, put_processor
from batchgen.engine.module_state import state

_QK_LINEARS = ("to_q", "to_k", "add_q_proj", "add_k_proj")
_QK_NORMS = ("norm_q", "norm_k", "norm_added_q", "norm_added_k")


def halves_order(head_dim: int) -> torch.Tensor:
    """The channel permutation: even channels first, then odd ones."""
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])


def rotary_halves(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """attention._rotary for channels in half-split order: the result is _rotary's, permuted the same way."""
    half = x.shape[-1] // 2
    x_even, x_odd = x[..., :half].float(), x[..., half:].float()
    return torch.cat([(x_even * cos - x_odd * sin).to(x.dtype), (x_even * sin + x_odd * cos).to(x.dtype)], dim=-1)


def _permute(attn, order: torch.Tensor) -> None:
    heads = attn.heads
    with torch.no_grad():
        for name in _QK_LINEARS:
            linear = getattr(attn, name, None)
            if linear is None:
                continue
            rows = linear.weight.shape[0]
            index = (order.to(linear.weight.device) + torch.arange(0, rows, rows // heads,
                                                                   device=linear.weight.device)[:, None]).reshape(-1)
            linear.weight.copy_(linear.weight[index])
            if linear.bias is not None:
                linear.bias.copy_(linear.bias[index])
        for name in _QK_NORMS:
            norm = getattr(attn, name, None)
            if norm is not None and getattr(norm, "weight", None) is not None:
                norm.weight.copy_(norm.weight[order.to(norm.weight.device)])


def _reorder(transformer, inverse: bool) -> None:
    for block in transformer.transformer_blocks:
        attn = block.attn1
        order = halves_order(attn.to_q.weight.shape[0] // attn.heads)
        _permute(attn, torch.argsort(order) if inverse else order)


def to_halves(transformer) -> None:
    """Permute every block's query and key channels into half-split order (in place)."""
    _reorder(transformer, inverse=False)
    state(transformer).qk_halved = True


def to_interleaved(transformer) -> None:
    """Undo to_halves."""
    _reorder(transformer, inverse=True)
    state(transformer).qk_halved = False


class Fp8BoundedHalvesProcessor(Fp8BoundedMochiAttnProcessor):
    """The v2 fp8 recipe on a transformer whose query and key channels are in half-split order."""

    rotate = staticmethod(rotary_halves)
    halves = True  # put_processor and attention.install refuse any other processor on halved channels

    def __init__(self, kernel: str = "fa3-batched"):
        super().__init__(kernel)
        self.backend = f"fp8bh-{kernel}"


def install(transformer, kernel: str = "fa3-batched") -> str:
    """to_halves, then Fp8BoundedHalvesProcessor on every block; returns the backend name. Call
    to_interleaved before putting any other processor back. Installed twice, the channels are permuted once:
    a second permutation would scramble them."""
    if not halved(transformer):
        to_halves(transformer)
    return put_processor(transformer, Fp8BoundedHalvesProcessor(kernel))


def halved(transformer) -> bool:
    """Whether the transformer's query and key channels are in half-split order now."""
    return state(transformer).qk_halved
