"""A job's fingerprint: everything besides its own settings that decides its pixels.

Recorded with every finished job (the database's `fingerprint` column, metadata.jsonl's `fingerprint`),
so that `batchgen reproduce` can say not only *that* a video no longer comes out the same, but what
changed since: a library upgrade, another GPU, another profile, a moved hub revision.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata

from batchgen import settings
from batchgen.engine import determinism, environment, families, profiles
from batchgen.engine.module_state import peek
from batchgen.engine.profile_registry import REGISTRY

FINGERPRINT_VERSION = 1


def collect(renderer) -> dict:
    """The fingerprint of what `renderer` renders with now; JSON-serialisable, stable keys.

    Computed once per renderer and state (profile, phase, deterministic mode) and cached on it, so calling
    it for every finished job costs a dictionary lookup.
    """
    import torch

    remote = getattr(renderer, "remote_fingerprint", None)
    if remote is not None:  # a Ray actor's renderer: collected where the frames were made
        return remote
    key = (renderer.profile, getattr(renderer, "_denoiser_ready", None), torch.are_deterministic_algorithms_enabled())
    cache = renderer.__dict__.setdefault("_fingerprints", {})
    if key not in cache:
        cache[key] = _collect(renderer)
    return cache[key]


def _collect(renderer) -> dict:
    import torch

    loaded = renderer.load()
    pipe = loaded.pipe
    device = str(renderer.device)
    cuda = device.startswith("cuda")
    profile = renderer.profile
    quality = bool(getattr(renderer, "quality", False))
    approx = getattr(renderer, "approximate", None)
    versions = dict(environment.library_versions())
    versions["numpy"] = _version("numpy")
    versions["python"] = platform.python_version()
    fp = {
        "fingerprint_version": FINGERPRINT_VERSION,
        "batchgen": _version("batchgen"),
        "model": renderer.model,
        "revision": renderer.revision,
        "resolved_revision": loaded.revision,
        "profile": profile,
        "precision": profiles.precision(profile, quality, approximate=approx)
        if profile in profiles.PROFILES and profile != "auto" else None,
        "quality": quality,
        # An opt-in approximate accelerator (batchgen.engine.approximate); None: exact.
        "approximate": approx,
        # AdaLN outputs precomputed per job (batchgen.engine.modulation): exact, recorded to show where they ran.
        "precomputed_modulation": peek(pipe.transformer).modulation is not None,
        "dtypes": _dtypes(pipe, profile),
        "vae_tiling": bool(getattr(renderer, "vae_tiling", True)),
        # The CPU profile keeps diffusers' one-shot decode; GPU profiles decode Mochi in time chunks (the
        # other families decode as their pipeline does).
        "decode_latent_frames": settings.decode_latent_frames()
        if _on_gpu(profile) and families.get(loaded.family).own_levers else None,
        "max_sequence_length": loaded.max_sequence_length,
        "scheduler": _scheduler(pipe),
        "versions": versions,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device_type": "cuda" if cuda else device,
        "gpu": environment.device_name(device) if cuda else None,
        "cpu": _cpu_name(),
        # Which vectorised kernels torch picked for this CPU (AVX2, AVX512...): they round differently.
        "cpu_capability": _cpu_capability(),
        "cpu_threads": torch.get_num_threads(),
        "deterministic": determinism.state(),
    }
    # What was loaded beside the model (engine/checkpoints.py, engine/lora.py), only when anything was.
    if getattr(loaded, "variant", None):
        fp["variant"] = loaded.variant
    if getattr(loaded, "transformer_revision", None):
        fp["transformer_revision"] = loaded.transformer_revision
    lora_state = getattr(renderer, "_loras", None)
    if lora_state is not None and lora_state.loaded:
        fp["peft"] = _version("peft")
    family = families.get(loaded.family)
    if family.tags_job_ids:  # Mochi's fingerprints stay what they were, as its job ids do
        fp["family"] = family.name
        if family.prompt_packages:
            # What the pipeline does to the text before encoding (WanPipeline: ftfy when installed).
            fp["prompt_cleaning"] = family.builders().prompt_cleaning()
    # Whatever the values, the recorded form is plain JSON (the scheduler config holds tuples, numpy scalars).
    return json.loads(json.dumps(fp, default=str))


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _dtype_of(module) -> str | None:
    if module is None:
        return None
    try:
        return str(next(module.parameters()).dtype).replace("torch.", "")
    except (StopIteration, AttributeError, TypeError):
        return None


def _on_gpu(profile: str) -> bool:
    declared = REGISTRY.get(profile)
    return declared is not None and declared.needs_cuda


def _dtypes(pipe, profile: str) -> dict:
    compute = "bfloat16" if _on_gpu(profile) else _dtype_of(getattr(pipe, "transformer", None))
    declared = REGISTRY.get(profile)
    return {
        "compute": compute,
        # Quantized storage says more than the tensor dtype bitsandbytes packs it in (uint8 for nf4).
        "transformer": (declared and declared.storage) or _dtype_of(getattr(pipe, "transformer", None)),
        "text_encoder": _dtype_of(getattr(pipe, "text_encoder", None)),
        "vae": _dtype_of(getattr(pipe, "vae", None)),
    }


def _scheduler(pipe) -> dict | None:
    scheduler = getattr(pipe, "scheduler", None)
    if scheduler is None:
        return None
    config = {k: v for k, v in dict(getattr(scheduler, "config", {})).items() if not k.startswith("_")}
    return {"class": type(scheduler).__name__, **config}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_capability() -> str | None:
    import torch

    try:
        return torch.backends.cpu.get_cpu_capability()
    except Exception:
        return None


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        flat: dict = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


_ABSENT = object()


def diff(recorded: dict, now: dict) -> list[str]:
    """Every field that differs between a recorded fingerprint and now, one line each, in key order:
    "versions.torch: recorded '2.4.1', now '2.5.0'". Nested fields are named with dots."""
    old, new = _flatten(recorded or {}), _flatten(now or {})
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if a == b:
            continue
        shown_a = "(absent)" if a is _ABSENT else repr(a)
        shown_b = "(absent)" if b is _ABSENT else repr(b)
        lines.append(f"{key}: recorded {shown_a}, now {shown_b}")
    return lines


def restrict(now: dict, recorded: dict) -> dict:
    """`now` cut down to the fields `recorded` has: for comparing with the partial fingerprint that an
    older batchgen's metadata row gives (versions, revision, profile, device)."""
    keep = set(_flatten(recorded))
    flat = {k: v for k, v in _flatten(now).items() if k in keep}
    result: dict = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = result
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return result

