"""Benchmark-only undo helpers, kept out of the package: renders never undo an accelerator in place."""

from __future__ import annotations

from batchgen.engine.module_state import state


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
