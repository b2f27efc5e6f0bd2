"""The model families batchgen renders, and which one a `model:` belongs to.

Torch-free, like family.py: the manifest picks a family's rules from here before anything is loaded. A
local folder names its pipeline class in model_index.json, so `model:` picks its family itself; the
built-in names (tiny, realsize and their per-family variants) are declared with their families.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from batchgen.engine.families.family import Family, Memory
from batchgen.errors import BatchgenError
from batchgen.job import JOB_DEFAULTS

# Mochi's defaults are batchgen's job defaults (diffusers' MochiPipeline, 30 fps MP4s): unchanged.
MOCHI = Family(
    name="mochi",
    title="Mochi",
    pipeline_classes=("MochiPipeline",),
    frame_step=6,
    size_multiple=16,
    size_reason="Mochi's transformer needs it",
    defaults={k: JOB_DEFAULTS[k] for k in ("num_frames", "height", "width", "num_inference_steps",
                                           "guidance_scale", "fps")},
    text_encoder="T5 v1.1 XXL",
    max_tokens=256,
    profiles=(),  # every one: they were made for it
    own_levers=True,
    # Parameters counted from the published configs; activations fitted on the H100 (profile_registry.py).
    memory={"realsize": Memory(6, 16, 10.028, 4.762, 0.460, activation_gib_per_ktoken=0.22)},
    tiny="tiny",
    realsize=("realsize",),
    module="batchgen.engine.families.mochi",
)

# The profiles made of diffusers' generic levers, which any transformer takes: bf16 resident, its blocks
# compiled (fast), model and group offload, fp8 layerwise storage, int8 / NF4 through
# PipelineQuantizationConfig. fp8-fast and fp8-attn stay Mochi's: their kernels replace Mochi's own layers.
# Activation and decode GiB per thousand latent tokens below are fitted from batchgen's own renders at each
# config's default video on an H200 (benchmarks/results/family_profiles_h200_{a,b}.json: bf16, VAE tiled),
# rounded up; with the weights and the margin they give the measured per-video peaks within 1.6 GiB above.
# The encode phase before them (the text encoder alone) is counted from the encoder's parameters.
GENERIC_PROFILES = ("cpu", "resident", "fast", "offload", "group-offload", "fp8", "int8", "nf4")

# WanPipeline's own call defaults (480x832, 81 frames, 50 steps, guidance 5) and Wan's 16 fps output.
# 4x temporal VAE; 8x spatial VAE and 2x2 patches (Wan 2.2 5B: 16x VAE, so its sizes are multiples of 32).
WAN = Family(
    name="wan",
    title="Wan",
    pipeline_classes=("WanPipeline",),
    frame_step=4,
    size_multiple=16,
    size_reason="Wan's VAE and 2x2 patches need it",
    defaults={"num_frames": 81, "height": 480, "width": 832, "num_inference_steps": 50, "guidance_scale": 5.0,
              "fps": 16},
    text_encoder="umT5 XXL",
    max_tokens=512,
    profiles=GENERIC_PROFILES,
    blocks="blocks",
    memory={
        "realsize-wan2.1-1.3b": Memory(4, 16, 1.419, 5.681, 0.127, 0.05, 0.035),
        "realsize-wan2.1-14b": Memory(4, 16, 14.288, 5.681, 0.127, 0.11, 0.035),
        "realsize-wan2.2-5b": Memory(4, 32, 5.000, 5.681, 0.705, 0.20, 0.13),
    },
    tiny="tiny-wan",
    realsize=("realsize-wan2.1-1.3b", "realsize-wan2.1-14b", "realsize-wan2.2-5b"),
    module="batchgen.engine.families.wan",
    prompt_packages=("ftfy",),
    vae_spatial_key="scale_factor_spatial",
)

# LTXPipeline's call defaults (512x704, 161 frames, 50 steps, guidance 3, 25 fps); 8x temporal and 32x
# spatial VAE with 1x1 patches. The frame rate is a pipeline input: it scales the rotary embedding.
LTX = Family(
    name="ltx",
    title="LTX-Video",
    pipeline_classes=("LTXPipeline",),
    frame_step=8,
    size_multiple=32,
    size_reason="LTX-Video's 32x VAE needs it",
    defaults={"num_frames": 161, "height": 512, "width": 704, "num_inference_steps": 50, "guidance_scale": 3.0,
              "fps": 25},
    text_encoder="T5 v1.1 XXL",
    max_tokens=128,
    profiles=GENERIC_PROFILES,
    memory={"realsize-ltx-2b": Memory(8, 32, 1.923, 4.762, 0.419, 0.16, 0.54)},
    tiny="tiny-ltx",
    realsize=("realsize-ltx-2b",),
    module="batchgen.engine.families.ltx",
    fps_is_input=True,
)

FAMILIES: dict[str, Family] = {f.name: f for f in (MOCHI, WAN, LTX)}
_BY_BUILTIN_NAME = {name: f for f in FAMILIES.values() for name in f.names()}
# A hub id not in the local cache yet: its family by the publisher, so the manifest checks the right rules
# before anything is downloaded. Anything else is Mochi, as batchgen has always assumed.
_HUB_OWNERS = {"genmo": MOCHI, "wan-ai": WAN, "lightricks": LTX}


class UnknownFamily(BatchgenError):
    """A model whose pipeline class batchgen has no family for."""


def get(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise UnknownFamily(f"unknown model family {name!r}: choose one of {', '.join(FAMILIES)}") from None


def family_for_class(class_name: str) -> Family | None:
    """The family whose pipeline class is `class_name` (model_index.json's `_class_name`); None if none."""
    return next((f for f in FAMILIES.values() if class_name in f.pipeline_classes), None)


def builtin(model: str) -> Family | None:
    """The family of a built-in model name (tiny, tiny-wan, realsize-ltx-2b, ...); None for others."""
    return _BY_BUILTIN_NAME.get(model)


def is_tiny(model: str) -> bool:
    """Whether `model` is one of the tiny random-weight pipelines (tiny, tiny-wan, tiny-ltx): CPU-sized."""
    found = builtin(model)
    return found is not None and model == found.tiny


def family_for_model(model: str, declared: str | None = None) -> Family:
    """The family `model` (a built-in name, a local pipeline folder or a hub id) belongs to.

    `declared` is the manifest's `family:`: it decides only for a hub id whose model_index.json is not in
    the local cache (the loader checks it against the downloaded one); where the model says its own family,
    a different `declared` is refused."""
    wanted = get(declared) if declared is not None else None
    found = _own_family(model)
    if found is not None:
        if wanted is not None and wanted is not found:
            raise UnknownFamily(
                f"model {model!r} is a {found.title} model ({found.name}), not {wanted.title}: remove `family:` "
                f"or set it to {found.name}"
            )
        return found
    if wanted is not None:
        return wanted
    return _HUB_OWNERS.get(model.split("/", 1)[0].lower(), MOCHI) if model.count("/") == 1 else MOCHI


def _own_family(model: str) -> Family | None:
    """The family the model itself names (built-in name, model_index.json); None when it cannot tell yet."""
    found = builtin(model)
    if found is not None:
        return found
    folder = Path(model).expanduser()
    index = folder / "model_index.json" if folder.is_dir() else cached_index(model)
    if index is not None and index.is_file():
        return _from_index(index, model)
    return None


def rules_for_model(model: str, declared: str | None = None) -> Family:
    """`model`'s family, with the size multiple of this very model where the family's models differ in it
    (Wan 2.2 5B: 32, from its saved VAE and transformer configs, or its published-size config)."""
    family = family_for_model(model, declared)
    side = _spatial_of(family, model)
    if side is None or side == family.size_multiple:
        return family
    return dataclasses.replace(family, size_multiple=side, size_reason=f"this {family.title} model's VAE and patches need it")


def _spatial_of(family: Family, model: str) -> int | None:
    if model in family.memory:
        return family.memory[model].spatial_compression
    folder = Path(model).expanduser()
    if not family.vae_spatial_key or not folder.is_dir():
        return None
    try:
        vae = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
        patch = json.loads((folder / "transformer" / "config.json").read_text(encoding="utf-8")).get("patch_size", 1)
        return int(vae[family.vae_spatial_key]) * int(patch[1] if isinstance(patch, list) else patch)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None  # the loader reports a broken folder; the family's own rule stands meanwhile


def _from_index(index: Path, model: str) -> Family:
    try:
        class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError) as exc:
        raise UnknownFamily(f"model {model!r}: cannot read {index}: {exc}") from None
    found = family_for_class(str(class_name))
    if found is None:
        known = ", ".join(c for f in FAMILIES.values() for c in f.pipeline_classes)
        raise UnknownFamily(
            f"model {model!r} is a {class_name} (its model_index.json says so); batchgen renders {known}. "
            "Point `model:` at a pipeline of one of those classes."
        )
    return found


def cached_index(model: str) -> Path | None:
    """model_index.json of a hub id already in the Hugging Face cache; None when it is not there."""
    if model.count("/") != 1:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, "model_index.json")
    except Exception:  # an id the hub library refuses is simply not cached
        return None
    return Path(found) if isinstance(found, str) else None
