"""int8 weights, bf16 multiplies: how the `int8` profile computes with bitsandbytes' int8 storage.

bitsandbytes loads the transformer's linear layers as int8 (one absmax scale per output row), through
diffusers' own quantization config. Its own forward, LLM.int8, also quantizes every activation row to int8
and splits out "outlier" columns above a threshold (6.0 by default) into a separate fp16 multiply: built
for large language models, and 2.5x slower than bf16 on Mochi's 6,360-token batches (H100, run 8).

Here each layer instead turns its int8 weight back into bf16 just before its multiply, in one elementwise
kernel (int8 * float32 scale, rounded once to bf16), and multiplies in bf16 with cuBLAS as `resident`
does. The weights take the same int8 memory between layers; one layer's bf16 copy (at most 0.1 GB for
Mochi) exists at a time. Activations are never quantized, so this is also closer to bf16 than LLM.int8.

The dequantized weight is bitsandbytes' own dequantization (int8 * absmax / 127) rounded once to bf16,
one float32 multiply per element: the same on every machine. Records rendered with LLM.int8 (precision
"int8") render again with BATCHGEN_INT8_KERNEL=llm-int8.
"""

from __future__ import annotations

import torch
from torch import nn

# bitsandbytes stores row-wise absmax scales; a weight is int8 * absmax / 127.
_INV_127 = 1.0 / 127.0


def _int8_state(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The (int8 weight, float32 row scales) of a bitsandbytes Linear8bitLt, wherever it keeps them.

    Before its first forward they sit on the weight (`.CB`, `.SCB`); afterwards in `layer.state`, with the
    weight's data pointing at the same int8 tensor."""
    weight = layer.weight
    state = getattr(layer, "state", None)
    cb = getattr(weight, "CB", None)
    if cb is None and state is not None:
        cb = state.CB
    if cb is None:
        cb = weight.data
    scb = getattr(weight, "SCB", None)
    if scb is None and state is not None:
        scb = state.SCB
    if cb.dtype != torch.int8 or scb is None:
        raise ValueError(f"{type(layer).__name__} holds no quantized int8 weight (dtype {cb.dtype}); "
                         "bitsandbytes quantizes when the layer is moved to the GPU")
    return cb, scb


def int8_linear(x: torch.Tensor, weight_int8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                weight: torch.Tensor | None = None) -> torch.Tensor:
    """`x @ (weight_int8 * scale).T + bias`, the weight dequantized to x's dtype (or given as `weight`,
    already dequantized so). The one definition of the int8 profile's arithmetic: precomputed modulation
    calls it too, so its outputs are those of the layers it replaces."""
    if weight is None:
        weight = dequantize(weight_int8, scale, x.dtype)
    if bias is not None and bias.dtype != x.dtype:
        bias = bias.to(x.dtype)
    return nn.functional.linear(x, weight, bias)


def dequantize(weight_int8: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # One kernel: int8 and the float32 scale are multiplied in float32 and rounded to `dtype` on store.
    out = torch.empty(weight_int8.shape, dtype=dtype, device=weight_int8.device)
    return torch.mul(weight_int8, scale, out=out)


class Int8Linear(nn.Module):
    """A drop-in for a bitsandbytes Linear8bitLt: the same int8 weight, multiplied in the input's dtype."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        cb, scb = _int8_state(layer)
        self.in_features, self.out_features = cb.shape[1], cb.shape[0]
        self.register_buffer("weight_int8", cb)
        # Scale folded once, in float32: the dequantized value is one rounding away from int8 * absmax / 127.
        self.register_buffer("weight_scale", (scb.float() * _INV_127).reshape(-1, 1).contiguous())
        bias = layer.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        return dequantize(self.weight_int8, self.weight_scale, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(x, self.weight_int8, self.weight_scale, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _is_int8_layer(module: nn.Module) -> bool:
    try:
        import bitsandbytes as bnb
    except ImportError:
        return False
    # A layer that keeps its 16-bit weights (has_fp16_weights) holds no int8 copy to multiply from.
    return isinstance(module, bnb.nn.Linear8bitLt) and not module.state.has_fp16_weights


def convert(model: nn.Module) -> int:
    """Replace every bitsandbytes Linear8bitLt in `model` by an Int8Linear sharing its int8 weight.

    Returns how many were replaced. Idempotent: a converted model has none left."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _is_int8_layer(child):
                setattr(parent, name, Int8Linear(child))
                count += 1
    return count
