"""Choosing a memory profile on this machine: `auto` from free GPU memory, or a named one checked against
what the machine has. The profiles themselves are declared in profile_registry.py (torch-free); their
placement on the device is placement.py's.
"""

from __future__ import annotations

from dataclasses import dataclass

from batchgen.engine.profile_registry import (
    AUTO,
    PROFILES,
    REGISTRY,
    auto_last_resort,
    auto_order,
    estimate_peak_gib,
    fallback,
    int8_hint,
    int8_kernel_switched,
    latent_tokens,
    precision,
)
from batchgen.errors import BatchgenError

# What run/, the renderer and the tests use from here: the registry's questions (re-exported) and the choice.
__all__ = ["PROFILES", "REGISTRY", "ProfileChoice", "choose_auto", "estimate_peak_gib", "fallback", "int8_hint",
           "int8_kernel_switched", "latent_tokens", "precision", "resolve"]


@dataclass(frozen=True)
class ProfileChoice:
    name: str
    device: str
    reason: str


def resolve(
    profile: str,
    device: str | None = None,
    *,
    largest: tuple[int, int, int] | None = None,
) -> ProfileChoice:
    """Turn `auto` (or a profile that cannot run here) into a concrete profile, saying why.

    `largest` is (num_frames, height, width) of the batch's biggest job; without it auto assumes Mochi's
    longest video (163 frames at 480x848).
    """
    import torch

    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cpu = next(p.name for p in REGISTRY.values() if not p.needs_cuda)
    if device == "cpu" or not device.startswith("cuda"):
        if profile not in (AUTO, cpu):
            return ProfileChoice(cpu, "cpu", f"no CUDA device: profile '{profile}' needs a GPU, using '{cpu}'")
        return ProfileChoice(cpu, "cpu", "no CUDA device")
    if profile == cpu:
        return ProfileChoice(cpu, "cpu", "asked for")
    if profile != AUTO and REGISTRY[profile].needs_fp8_cores:
        from batchgen.engine.fp8_matmul import supported

        why_not = supported(device)
        if why_not:
            raise BatchgenError(f"profile '{profile}': {why_not}. Use 'fast' (bf16) or 'fp8' (fp8 storage) instead.")
    if profile != AUTO and REGISTRY[profile].needs_fp8_attention:
        from batchgen.engine.fp8_attention import unavailable

        why_not = unavailable(device)
        if why_not:
            raise BatchgenError(f"profile '{profile}': {why_not}. Use 'fp8-fast' (fp8 multiplies, bf16 attention) "
                                "or 'fast' (bf16) instead.")
    if profile != AUTO:
        return ProfileChoice(profile, device, "asked for")
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return choose_auto(free / 2**30, device, largest)


def choose_auto(free_gib: float, device: str, largest: tuple[int, int, int] | None = None) -> ProfileChoice:
    """The fastest bf16 profile whose estimated peak fits `free_gib`; the last resort (nf4) when none does."""
    frames, height, width = largest or (163, 480, 848)
    size = f"{frames} frames at {height}x{width}"
    order = auto_order()
    for name in order:
        need = estimate_peak_gib(name, frames, height, width)
        if need <= free_gib:
            if name == order[0]:
                why = f"{free_gib:.1f} GiB free, {name} needs ~{need:.0f} GiB for {size}: bf16 denoiser kept on the GPU"
            else:
                rneed = estimate_peak_gib(order[0], frames, height, width)
                why = (
                    f"{free_gib:.1f} GiB free, {order[0]} would need ~{rneed:.0f} GiB for {size}: "
                    f"{REGISTRY[name].summary} (~{need:.0f} GiB, same pixels, a little slower)"
                )
            return ProfileChoice(name, device, why)
    last = auto_last_resort()
    need = estimate_peak_gib(last, frames, height, width)
    return ProfileChoice(
        last,
        device,
        f"{free_gib:.1f} GiB free, even {order[-1]} needs more for {size}: {REGISTRY[last].summary} denoiser "
        f"(~{need:.0f} GiB, different pixels)",
    )
