"""fp8 matrix multiplies for the `fp8-fast` profile: Hopper/Ada fp8 tensor cores through torch._scaled_mm.

Unlike the `fp8` profile (fp8 *storage*, every multiply still in bf16), this multiplies in fp8: each
linear layer's weight is stored e4m3 with one scale per output channel, and each activation row (token)
is scaled into e4m3 on the fly with its own scale, the "rowwise dynamic" recipe, which keeps the error
per token rather than per tensor. Outputs and everything between the linear layers stay bf16. The
blocks are compiled afterwards, so the scaling fuses into the surrounding kernels.

Only the large linear layers inside the transformer blocks are converted (attention projections and
feed-forwards); embeddings, the AdaLN modulation layers (batch-2 inputs, no gain) and the output
projection stay bf16.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from batchgen.engine.module_state import state

E4M3_MAX = 448.0
# fp8 tensor cores: Ada (8.9), Hopper (9.0) and newer.
MIN_CAPABILITY = (8, 9)


def _rowwise_scale(x: torch.Tensor) -> torch.Tensor:
    """Per-row float32 scale mapping each row's largest magnitude to e4m3's largest value."""
    return (x.abs().amax(dim=-1, keepdim=True).float() / E4M3_MAX).clamp(min=1e-12)


def _to_e4m3(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


class Fp8Linear(nn.Module):
    """A drop-in for nn.Linear (bf16 in, bf16 out) that multiplies in fp8 with rowwise scales."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach()
        scale = _rowwise_scale(weight)  # [out, 1]: one scale per output channel
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_fp8", _to_e4m3(weight, scale))
        self.register_buffer("weight_scale", scale.reshape(1, -1).contiguous())  # [1, out], as _scaled_mm wants
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1])
        scale = _rowwise_scale(rows)
        out = torch._scaled_mm(
            _to_e4m3(rows, scale),
            self.weight_fp8.t(),  # column-major view of [out, in]: what the fp8 GEMM needs
            scale_a=scale,
            scale_b=self.weight_scale,
            # Rowwise-scaled kernels return bf16 everywhere (Ada's only that); other dtypes are cast after.
            out_dtype=torch.bfloat16,
            use_fast_accum=True,
        )
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3 rowwise"


def _eligible(name: str, module: nn.Module) -> bool:
    # fp8 GEMMs need both dimensions divisible by 16; the AdaLN layers ("norm...") see a batch of 2 rows.
    return (
        type(module) is nn.Linear
        and module.in_features % 16 == 0
        and module.out_features % 16 == 0
        and ".norm" not in f".{name}"
    )


def convert_blocks(transformer: nn.Module, keep_originals: bool = False) -> int:
    """Swap the eligible linear layers of every transformer block for Fp8Linear, in place. Returns how many.
    `keep_originals` holds on to the bf16 layers so benchmarks can put them back (benchmarks/helpers.py)."""
    count, originals = 0, []
    for block in transformer.transformer_blocks:
        for name, module in list(block.named_modules()):
            if not name or not _eligible(name, module):
                continue
            parent_name, _, child = name.rpartition(".")
            parent = block.get_submodule(parent_name) if parent_name else block
            setattr(parent, child, Fp8Linear(module))
            if keep_originals:
                originals.append((parent, child, module))
            count += 1
    done = state(transformer)
    done.fp8_linears = count
    done.fp8_originals = originals if keep_originals else None
    return count


@functools.lru_cache(maxsize=None)
def supported(device: str) -> str | None:
    """None when fp8 tensor-core multiplies run on `device`, else why not. Probed once per device: a run
    resolves its profile more than once (planning, then the renderer)."""
    if not device.startswith("cuda"):
        return "fp8 matrix multiplies need a CUDA GPU"
    major, minor = torch.cuda.get_device_capability(torch.device(device))
    if (major, minor) < MIN_CAPABILITY:
        return f"fp8 matrix multiplies need an Ada (8.9) or Hopper (9.0) GPU or newer; this one is {major}.{minor}"
    # The capability is not the whole story (torch build, newer chips): try the very call, once, small.
    try:
        probe = Fp8Linear(nn.Linear(16, 16, bias=False).to(device, torch.bfloat16))
        probe(torch.ones(16, 16, device=device, dtype=torch.bfloat16))
    except Exception as exc:  # noqa: BLE001 - any failure means the profile cannot run here
        return f"this torch ({torch.__version__}) cannot run rowwise-scaled fp8 multiplies on {device}: {exc}"
    return None
