"""Precomputed AdaLN modulation: the quarter of Mochi's weights that a batch never needs on the GPU.

Every Mochi block starts with adaptive norms whose linear layers (`norm1.linear`, `norm1_context.linear`
or `.linear_1`) turn the conditioning vector `temb` into scales and gates. `temb` depends only on the
timestep and the prompt embeddings, never on the latents, and a batch knows both before a job starts.
Those layers are 2.7B of the transformer's 10B parameters (5 GiB in bf16), used on a batch-2 input once
per step. So batchgen keeps them in pinned CPU memory, and before a job computes their outputs for every
step of that job (streaming the weights in block by block, a fraction of a second), then lets the blocks
read the table instead of running the layers.

Exact: the table is made by the same layers on the same inputs with the same shapes as inside the
forward pass (the inputs are captured by running the pipeline's own loop with a stand-in transformer),
so the frames are the ones the unmodified model renders. Tests check that on the tiny model; the H100
benchmark checks the frame hashes at real size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from batchgen import settings
from batchgen.engine.module_state import state
from batchgen.engine.profile_registry import get as _declared

_MISSING = object()


def enabled(profile: str) -> bool:
    """Profiles declared `precomputes_modulation`. BATCHGEN_PRECOMPUTE_MODULATION off turns it off, on also
    turns it on for the cpu profile (tests). Compiled (`fast`) and nf4 keep the layers; int8 detaches
    batchgen's int8 layers (int8_linear.py), not bitsandbytes' own."""
    setting = settings.precompute_modulation()
    if setting is False:
        return False
    declared = _declared(profile)
    if declared.precomputes_modulation:
        return True
    return setting is True and not declared.needs_cuda


class _Lookup(nn.Module):
    """Stands in for one AdaLN linear layer: returns this step's precomputed output."""

    def __init__(self, table: "ModulationTable", key: tuple[int, str]):
        super().__init__()
        self._table = [table]  # in a list so that nn.Module does not adopt it as a submodule
        self.key = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._table[0].take(self.key)

    def extra_repr(self) -> str:
        return f"precomputed {self.key}"


@dataclass
class _Layer:
    key: tuple[int, str]  # (block index, norm attribute)
    norm: nn.Module
    attr: str  # "linear" or "linear_1"
    weight: torch.Tensor  # pinned CPU copy (int8 for the int8 profile's layers)
    bias: torch.Tensor | None
    # MochiLayerNormContinuous casts silu(temb) to the context stream's dtype before its linear.
    casts_to_context_dtype: bool
    scale: torch.Tensor | None = None  # int8 layers: float32 row scales (batchgen.engine.int8_linear)


@dataclass
class ModulationTable:
    layers: list[_Layer] = field(default_factory=list)
    rows: list[dict] | None = None  # per transformer call: key -> output
    step: int = -1
    recording: bool = False
    key: tuple | None = None  # what `rows` was computed for

    @property
    def parameters_held(self) -> int:
        return sum(layer.weight.numel() + (0 if layer.bias is None else layer.bias.numel()) for layer in self.layers)

    def advance(self, *_args) -> None:
        if not self.recording:
            self.step += 1

    def take(self, key: tuple[int, str]) -> torch.Tensor:
        if self.rows is None or not 0 <= self.step < len(self.rows):
            raise RuntimeError(
                f"precomputed modulation has no entry for transformer call {self.step + 1}: "
                "prepare() must run before every pipeline call"
            )
        return self.rows[self.step][key]

    def check_used(self) -> None:
        """After a job: every precomputed step was consumed, no more and no fewer."""
        if self.rows is not None and self.step + 1 != len(self.rows):
            raise RuntimeError(
                f"precomputed modulation for {len(self.rows)} transformer calls, but {self.step + 1} were made"
            )


def detach(transformer: nn.Module) -> ModulationTable | None:
    """Replace every block's AdaLN linear layers with table lookups and keep their weights on the CPU.
    Returns the table, or None when the model is not shaped like Mochi (nothing changed then)."""
    existing = state(transformer).modulation
    if existing is not None:
        return existing
    blocks = getattr(transformer, "transformer_blocks", None)
    if blocks is None or not hasattr(transformer, "time_embed"):
        return None
    from batchgen.engine.int8_linear import Int8Linear

    found = []
    for i, block in enumerate(blocks):
        for norm_name in ("norm1", "norm1_context"):
            norm = getattr(block, norm_name, None)
            for attr in ("linear", "linear_1"):
                layer = getattr(norm, attr, None) if norm is not None else None
                # A hooked or bitsandbytes layer would not reproduce here; batchgen's int8 layers do.
                if type(layer) in (nn.Linear, Int8Linear):
                    found.append(((i, norm_name), norm, attr, layer))
    if not found:
        return None
    tensors = [t.detach() for *_, layer in found for t in _tensors(layer) if t is not None]
    # One pinned buffer for all of them: pinning tensor by tensor rounds each up to a power of two and
    # took 13 s for the 5 GiB on the H100; pinned memory is what lets the per-job copies run at full speed.
    store = _host_buffers(tensors)
    table = ModulationTable()
    for key, norm, attr, layer in found:
        weight = store.pop(0)
        scale = store.pop(0) if isinstance(layer, Int8Linear) else None
        bias = store.pop(0) if layer.bias is not None else None
        table.layers.append(_Layer(key, norm, attr, weight, bias, attr == "linear_1", scale))
    for layer in table.layers:
        setattr(layer.norm, layer.attr, _Lookup(table, layer.key))
    done = state(transformer)
    done.modulation = table
    done.modulation_hook = transformer.register_forward_pre_hook(table.advance)
    return table


def _tensors(layer: nn.Module) -> tuple:
    """What a detached layer keeps, in the order `detach` takes them back."""
    if isinstance(layer, nn.Linear):
        return (layer.weight, layer.bias)
    return (layer.weight_int8, layer.weight_scale, layer.bias)


def _host_buffers(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """CPU copies of `tensors`, carved out of one pinned allocation when CUDA is present."""
    if not torch.cuda.is_available():
        return [t.to("cpu", copy=True) for t in tensors]
    by_dtype: dict[torch.dtype, int] = {}
    for t in tensors:
        by_dtype[t.dtype] = by_dtype.get(t.dtype, 0) + t.numel()
    flat = {dtype: torch.empty(n, dtype=dtype, pin_memory=True) for dtype, n in by_dtype.items()}
    offsets = dict.fromkeys(flat, 0)
    out = []
    for t in tensors:
        start = offsets[t.dtype]
        view = flat[t.dtype][start : start + t.numel()].view(t.shape)
        view.copy_(t)
        offsets[t.dtype] = start + t.numel()
        out.append(view)
    return out


def _capture_calls(pipe, call: dict) -> list[tuple]:
    """Run the pipeline's own denoising loop with a stand-in transformer that records its inputs, so the
    table is made from exactly what the real loop will pass (timesteps, dtypes, CFG concatenation)."""
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    transformer = pipe.transformer
    table: ModulationTable = state(transformer).modulation
    calls: list[tuple] = []

    def stand_in(hidden_states, encoder_hidden_states, timestep, encoder_attention_mask, attention_kwargs=None, return_dict=True):
        calls.append((timestep, encoder_hidden_states, encoder_attention_mask, hidden_states.dtype))
        out = torch.zeros_like(hidden_states)
        return (out,) if not return_dict else Transformer2DModelOutput(sample=out)

    saved_forward = transformer.__dict__.get("forward", _MISSING)
    saved_progress = dict(getattr(pipe, "_progress_bar_config", {}))
    transformer.forward = stand_in
    table.recording = True
    try:
        pipe.set_progress_bar_config(disable=True)
        # Any noise will do: the transformer's inputs other than the latents do not depend on it.
        probe = dict(call, generator=torch.Generator("cpu").manual_seed(0), output_type="latent")
        probe.pop("callback_on_step_end", None)
        pipe(**probe)
    finally:
        table.recording = False
        pipe._progress_bar_config = saved_progress
        if saved_forward is _MISSING:
            del transformer.forward
        else:
            transformer.forward = saved_forward
    return calls


def prepare(pipe, call: dict, key: tuple) -> float:
    """Make the table for one pipeline call (`call`: the keyword arguments it will get). Reuses the last
    table when `key` (everything but the seed) is the same. Returns the seconds spent."""
    import time

    start = time.perf_counter()
    transformer = pipe.transformer
    table: ModulationTable = state(transformer).modulation
    table.step = -1
    if table.key == key and table.rows is not None:
        return time.perf_counter() - start
    table.rows = None
    calls = _capture_calls(pipe, call)
    conditioning = []
    for timestep, context, mask, hidden_dtype in calls:
        # What MochiTransformer3DModel.forward computes first, with the same module and arguments.
        temb, context_out = transformer.time_embed(timestep, context, mask, hidden_dtype=hidden_dtype)
        conditioning.append((temb, context_out.dtype))
    device = conditioning[0][0].device if conditioning else torch.device("cpu")
    rows: list[dict] = [{} for _ in calls]
    from batchgen.engine.int8_linear import dequantize, int8_linear

    for layer in table.layers:
        weight = layer.weight.to(device, non_blocking=True)
        bias = None if layer.bias is None else layer.bias.to(device, non_blocking=True)
        scale = None if layer.scale is None else layer.scale.to(device, non_blocking=True)
        dequantized: dict = {}  # int8 layers: the weight in each input dtype, made once per job
        for row, (temb, context_dtype) in zip(rows, conditioning):
            x = layer.norm.silu(temb)
            if layer.casts_to_context_dtype:
                x = x.to(context_dtype)
            if scale is None:
                # nn.Linear.forward is exactly this call.
                row[layer.key] = nn.functional.linear(x, weight, bias)
            else:
                if x.dtype not in dequantized:
                    dequantized[x.dtype] = dequantize(weight, scale, x.dtype)
                row[layer.key] = int8_linear(x, weight, scale, bias, weight=dequantized[x.dtype])
        del weight, bias, scale, dequantized
    table.rows = rows
    table.key = key
    return time.perf_counter() - start


def release(transformer: nn.Module) -> None:
    """Drop the current table's GPU memory (between batches, or before a profile switch)."""
    table = state(transformer).modulation
    if table is not None:
        table.rows, table.key, table.step = None, None, -1
