"""Benchmark-only helpers, kept out of the package: undoing an accelerator in place (renders never do) and
filling in a realsize transformer built on the meta device."""

from __future__ import annotations

from batchgen.engine.module_state import state
from batchgen.engine.realsize import _randomize


def remove_approximate(pipe) -> None:
    """Turn off the approximate accelerator approximate_hooks.apply turned on."""
    transformer = pipe.transformer
    if state(transformer).approximate:
        transformer.disable_cache()
        state(transformer).approximate = None


def restore_fp8_blocks(transformer) -> None:
    """Undo `fp8_matmul.convert_blocks(..., keep_originals=True)`."""
    done = state(transformer)
    for parent, child, module in done.fp8_originals or []:
        setattr(parent, child, module)
    done.fp8_linears, done.fp8_originals = 0, None


def materialize_transformer(pipe, device: str = "cuda", seed: int = 0) -> None:
    """Allocate and randomize a transformer built with `transformer_on_meta=True` (no-op otherwise)."""
    import torch

    transformer = pipe.transformer
    if next(transformer.parameters()).device.type != "meta":
        return
    transformer.to_empty(device=device)
    _randomize(transformer, seed)
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def cuda_median_ms(fn, iters: int = 10, warmup: int = 2):
    """(median milliseconds of fn() on the GPU by CUDA events, fn's last output), after `warmup` calls."""
    import statistics

    import torch

    out = None
    for _ in range(warmup):
        out = fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        out = fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times), out
