"""Turning an approximate accelerator (approximate.py) on: diffusers' cache hooks on the transformer."""

from __future__ import annotations

from batchgen.engine.module_state import state


def apply(pipe, spec: str | None) -> None:
    """Turn the accelerator on for the pipeline's transformer (once; a no-op for None)."""
    transformer = pipe.transformer
    done = state(transformer)
    if not spec or done.approximate == spec:
        return
    if done.approximate:
        transformer.disable_cache()
    if spec == "pab":
        from diffusers import PyramidAttentionBroadcastConfig

        # diffusers' documented setting for Mochi-like models; Mochi's pipeline reports 1000 - t, so the
        # range counts in the usual direction.
        config = PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2,
            spatial_attention_timestep_skip_range=(100, 800),
            current_timestep_callback=lambda: pipe.current_timestep,
        )
    else:
        from diffusers import FirstBlockCacheConfig

        config = FirstBlockCacheConfig(threshold=float(spec[3:]))
    transformer.enable_cache(config)
    done.approximate = spec
