"""`batchgen doctor`'s profiles line: which GPU profiles fit this machine's free memory, by the memory model
`auto` uses (the profile registry's for Mochi, a family's own for the others), and which a missing kernel
or library rules out."""

from __future__ import annotations

from batchgen.engine import families, profile_registry
from batchgen.engine.doctor_check import OK, WARN, Check

# Longest Mochi video and the manifest default: the sizes the profile table is worked out for.
SIZES = {"163 frames at 480x848": (163, 480, 848), "19 frames at 480x848": (19, 480, 848)}


def profile_needs(model: str | None = None) -> dict[str, dict[str, float]]:
    """GiB each GPU profile needs for each of the sizes, from the memory model `auto` uses: the profile
    registry's (Mochi, SIZES) or, for a model of another family, the family's at its default video and
    for the profiles the family takes."""
    sizes, memory, family = _sizes_for(model)
    names = [n for n in profile_registry.names(needs_cuda=True) if family is None or family.allows_profile(n)]
    if memory is not None:
        return {name: {label: memory.peak_gib(name, *size) for label, size in sizes.items()} for name in names}
    return {name: {label: profile_registry.estimate_peak_gib(name, *size) for label, size in sizes.items()}
            for name in names}


def _sizes_for(model: str | None):
    """(sizes, the family's memory model or None, the family or None) for `model`."""
    from batchgen.engine import profiles

    try:
        family = families.family_for_model(model) if model else None
    except families.UnknownFamily:  # the model check says so
        family = None
    memory = profiles.family_memory(family, model)
    if memory is None:
        return SIZES, None, None
    d = family.defaults
    frames, height, width = d["num_frames"], d["height"], d["width"]
    short = family.min_frames + family.frame_step
    return ({f"{frames} frames at {height}x{width}": (frames, height, width),
             f"{short} frames at {height}x{width}": (short, height, width)}, memory, family)


def _fp8_attention_missing(devices: list[dict]) -> str:
    """Why the fp8 attention profile cannot run on these GPUs ("" when it can): Hopper and FA3's wheel."""
    from batchgen.engine import fp8_attention

    if not any(str(d.get("capability", "")).split(".")[0] == "9" for d in devices):
        return "needs a Hopper GPU (H100/H200)"
    if fp8_attention.fa3_module() is None:
        return "needs FlashAttention-3: pip install fa3-fwd"
    return ""


def check_profiles(devices: list[dict], bnb_ok: bool, model: str | None = None) -> Check:
    if not devices:
        return Check("profiles", WARN, "no GPU: only the `cpu` profile runs here",
                     "run `batchgen doctor` on the CUDA machine that will render: it lists the profiles that fit there")
    free = max(d["free"] for d in devices) / 2**30
    needs = profile_needs(model)
    parts, fit_long = [], []
    from batchgen.engine.fp8_matmul import MIN_CAPABILITY

    fp8_cores = any(tuple(int(x) for x in str(d.get("capability", "0.0")).split(".")) >= MIN_CAPABILITY
                    for d in devices)
    for name, by_size in needs.items():
        if profile_registry.REGISTRY[name].needs_fp8_cores and not fp8_cores:
            parts.append(f"{name} needs an Ada or Hopper GPU")
            continue
        if profile_registry.REGISTRY[name].needs_fp8_attention and _fp8_attention_missing(devices):
            parts.append(f"{name} {_fp8_attention_missing(devices)}")
            continue
        usable = bnb_ok or not profile_registry.REGISTRY[name].needs_bitsandbytes
        sizes = [label for label, gib in by_size.items() if gib <= free]
        longest, short = list(by_size)
        if usable and longest in sizes:
            fit_long.append(name)
        need = by_size[longest]
        mark = "fits" if longest in sizes else (f"fits {short.split()[0]} frames" if sizes else "too big")
        parts.append(f"{name} ~{need:.0f} GiB {mark if usable else 'needs bitsandbytes'}")
    video = next(iter(next(iter(needs.values()))))  # the longest video the needs were sized for
    detail = f"{free:.1f} GiB free on the largest GPU; for {video}: " + "; ".join(parts)
    order = profile_registry.auto_order()
    if order[0] in fit_long:
        return Check("profiles", OK, detail)
    if fit_long:
        # `auto` walks its bf16 order only; the fastest that fits may be one it never picks (offload, fp8).
        picks = next((name for name in order if name in fit_long), profile_registry.auto_last_resort())
        fix = ("`auto` picks it" if picks == fit_long[0] else
               f"`auto` picks {picks}; name {fit_long[0]} with --profile (or profile:) to use it")
        return Check("profiles", WARN, detail + f". Fastest that fits: {fit_long[0]}",
                     fix + "; free GPU memory (other processes) or render shorter videos for the faster profiles")
    return Check("profiles", WARN, detail, "render fewer frames (num_frames) or a smaller size, or free GPU memory; "
                 "nf4 needs bitsandbytes (`pip install -e \".[gpu]\"`)")
