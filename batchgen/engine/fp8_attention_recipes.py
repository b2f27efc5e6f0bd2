"""The fp8-attn profile's attention recipes, one of which BATCHGEN_FP8_ATTN_RECIPE picks.

Each recipe renders other pixels, so each has a precision of its own (profile_registry's fp8-attn
kernel_precisions) and a folder or a reproduce run names the setting it needs. A module of its own because
v2h lives in qk_halves.py, which builds on fp8_attention.py: the choice sits above both.

- v1: per-sample, per-head scales for Q, K and V, K and V mean-smoothed (fp8_attention.attention_fp8):
  V smoothing cut the model's per-forward error from 0.235 to 0.079 at 163 frames for no measurable time.
- v2: Q scaled by the bound its RMSNorm weights give (no reduction over the tokens, so the cast fuses into
  the rotary kernel), K and V with one-pass statistics, FA3's dense batched call (attention_fp8_bounded).
- v2h: v2 with the query and key channels permuted once into half-split order (qk_halves.py), so the
  rotary kernel reads contiguous halves: the same dot products, sums in another order.
The default stays v1 until v2 or v2h measure faster at the same error on the device (FP8_ATTENTION.md).
"""

from __future__ import annotations

from batchgen.engine import fp8_attention, profile_registry, qk_halves

# The FA3 entry each recipe calls: what resolve() probes before a batch loads anything. The recipes' names
# and precisions are the fp8-attn profile's kernel_precisions (profile_registry.py).
KERNELS = {"v1": fp8_attention.DEFAULT_KERNEL, "v2": "fa3-batched", "v2h": "fa3-batched"}


def chosen() -> str:
    """The recipe BATCHGEN_FP8_ATTN_RECIPE names (read, and checked, by the profile registry)."""
    return profile_registry.kernel("fp8-attn")


def kernel_of(recipe: str | None = None) -> str:
    """The kernel `recipe` (default: the chosen one) attends with."""
    return KERNELS[recipe or chosen()]


def install(transformer, recipe: str | None = None, kernel: str | None = None) -> str:
    """Put `recipe` (default: the chosen one) on every block; returns the attention backend's name. `kernel`
    replaces the recipe's kernel ("emulated" runs any recipe on the CPU, for tests and benchmarks)."""
    recipe = recipe or chosen()
    if recipe not in KERNELS:
        raise ValueError(f"unknown fp8 attention recipe {recipe!r}: choose one of {', '.join(KERNELS)}")
    kernel = kernel or KERNELS[recipe]
    if recipe == "v1":
        return fp8_attention.install(transformer, kernel, smooth_k=True, smooth_v=True)
    if recipe == "v2":
        return fp8_attention.install(transformer, kernel, bounded=True)
    return qk_halves.install(transformer, kernel)

