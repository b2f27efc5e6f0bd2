"""Choosing a memory profile on this machine: `auto` from free GPU memory, or a named one checked against
what the machine has. The profiles themselves are declared in profile_registry.py (torch-free); their
placement on the device is placement.py's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from batchgen.engine.profile_registry import (
    AUTO,
    PROFILES,
    REGISTRY,
    auto_last_resort,
    auto_order,
    estimate_peak_gib,
    fallback,
    kernel_hint,
    kernel_switched,
    latent_tokens,
    precision,
)
from batchgen.engine.families import Family, Memory
from batchgen.engine.families.registry import cached_index
from batchgen.errors import BatchgenError

# What run/, the renderer and the tests use from here: the registry's questions (re-exported) and the choice.
__all__ = ["PROFILES", "REGISTRY", "FamilyMemory", "ProfileChoice", "choose_auto", "family_memory", "estimate_peak_gib", "fallback", "kernel_hint",
           "kernel_switched", "latent_tokens", "precision", "resolve"]


@dataclass(frozen=True)
class ProfileChoice:
    name: str
    device: str
    reason: str


@dataclass(frozen=True)
class FamilyMemory:
    """The memory model `auto` uses for a model of a family without batchgen's own levers: its published
    configs' figures, each with the bf16 denoiser GiB of this very model where known. The estimate is the
    largest over them: a folder's config is not matched to a published one, so it is sized conservatively."""

    family: Family
    candidates: tuple[tuple[Memory, float | None], ...]

    def peak_gib(self, profile: str, num_frames: int, height: int, width: int) -> float:
        return max(estimate_peak_gib(profile, num_frames, height, width, memory, weights)
                   for memory, weights in self.candidates)


def family_memory(family: Family | None, model: str | None) -> FamilyMemory | None:
    """`model`'s memory model when its family has one of its own (None for Mochi: the registry's)."""
    if family is None or family.own_levers or not family.memory:
        return None
    if model in family.memory:
        return FamilyMemory(family, ((family.memory[model], None),))
    weights = _transformer_bf16_gib(model) if model else None
    return FamilyMemory(family, tuple((memory, weights) for memory in family.memory.values()))


def _transformer_bf16_gib(model: str) -> float | None:
    """GiB of the transformer's parameters in bf16, counted from the safetensors headers of a local folder or
    a hub id's cached snapshot (the files may hold fp32; a variant beside the full files counts once).
    None when there are none to read: the family's largest config sizes it then."""
    import json
    import math
    import re

    root = Path(model).expanduser()
    if not root.is_dir():
        index = cached_index(model)  # a hub id's snapshot, where it is cached
        root = index.parent if index is not None else root
    groups: dict[str, list[Path]] = {}
    for f in sorted((root / "transformer").glob("*.safetensors")) if root.is_dir() else []:
        # name[.variant][-0000i-of-0000n].safetensors: the variant, if any, is the second dotted part.
        stem = re.sub(r"-\d+-of-\d+$", "", f.name[: -len(".safetensors")])
        groups.setdefault(stem.partition(".")[2], []).append(f)
    files = groups.get("") or next(iter(groups.values()), [])
    params = 0
    try:
        for f in files:
            with open(f, "rb") as handle:
                header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
            params += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable: the loader reports it; the largest config sizes it meanwhile
    return params * 2 / 2**30 if params else None


def resolve(
    profile: str,
    device: str | None = None,
    *,
    largest: tuple[int, int, int] | None = None,
    family: Family | None = None,
    model: str | None = None,
) -> ProfileChoice:
    """Turn `auto` (or a profile that cannot run here) into a concrete profile, saying why.

    `largest` is (num_frames, height, width) of the batch's biggest job; without it auto assumes Mochi's
    longest video (163 frames at 480x848), or the family's default video. `family` and `model` give `auto`
    the memory model of a family other than Mochi.
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
    refused = family.profile_problem(profile) if family is not None and profile != AUTO else None
    if refused:
        raise BatchgenError(refused)
    if profile != AUTO and REGISTRY[profile].needs_fp8_cores:
        from batchgen.engine.fp8_matmul import supported

        why_not = supported(device)
        if why_not:
            raise BatchgenError(f"profile '{profile}': {why_not}. Use 'fast' (bf16) or 'fp8' (fp8 storage) instead.")
    if profile != AUTO and REGISTRY[profile].needs_fp8_attention:
        from batchgen.engine.fp8_attention import unavailable
        from batchgen.engine.fp8_attention_recipes import kernel_of

        why_not = unavailable(device, kernel_of())  # the chosen recipe's kernel: v2 calls another FA3 entry
        if why_not:
            raise BatchgenError(f"profile '{profile}': {why_not}. Use 'fp8-fast' (fp8 multiplies, bf16 attention) "
                                "or 'fast' (bf16) instead.")
    if profile != AUTO:
        return ProfileChoice(profile, device, "asked for")
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return choose_auto(free / 2**30, device, largest, family_memory(family, model))


def choose_auto(free_gib: float, device: str, largest: tuple[int, int, int] | None = None,
                memory: FamilyMemory | None = None) -> ProfileChoice:
    """The fastest bf16 profile whose estimated peak fits `free_gib`; the last resort (nf4) when none does.
    `memory`: the family's memory model (family_memory), None for Mochi's."""
    if largest is None and memory is not None:
        largest = tuple(memory.family.defaults[k] for k in ("num_frames", "height", "width"))
    frames, height, width = largest or (163, 480, 848)
    size = f"{frames} frames at {height}x{width}"

    def peak(name: str) -> float:
        return memory.peak_gib(name, frames, height, width) if memory else estimate_peak_gib(name, frames, height, width)

    order = auto_order()
    for name in order:
        need = peak(name)
        if need <= free_gib:
            if name == order[0]:
                why = f"{free_gib:.1f} GiB free, {name} needs ~{need:.0f} GiB for {size}: bf16 denoiser kept on the GPU"
            else:
                why = (
                    f"{free_gib:.1f} GiB free, {order[0]} would need ~{peak(order[0]):.0f} GiB for {size}: "
                    f"{REGISTRY[name].summary} (~{need:.0f} GiB, same pixels, a little slower)"
                )
            return ProfileChoice(name, device, why)
    last = auto_last_resort()
    return ProfileChoice(
        last,
        device,
        f"{free_gib:.1f} GiB free, even {order[-1]} needs more for {size}: {REGISTRY[last].summary} denoiser "
        f"(~{peak(last):.0f} GiB, different pixels)",
    )
