"""`batchgen doctor --manifest`: what a manifest loads beside its model, checked before a long batch.

The manifest's own reading already refused a LoRA file or a local transformer that is not there; here the
hub side is looked at: a transformer not in the local cache yet (the first render downloads it), a
variant the model lacks, and which variant bf16 profiles will load.
"""

from __future__ import annotations

from pathlib import Path

from batchgen.engine import checkpoints
from batchgen.engine.doctor_check import FAIL, OK, WARN, Check


def _cached(repo: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo, name, revision=revision), str)
               for name in ("config.json", "transformer/config.json"))


def check_transformer(source: str, revision: str | None) -> Check:
    path = Path(source).expanduser()
    if checkpoints.is_single_file(source) or path.is_dir():
        tag = checkpoints.prequantized_tag(checkpoints.transformer_config(source, revision)) if path.is_dir() else None
        return Check("transformer", OK, f"{source}: local{f', pre-quantized ({tag})' if tag else ''}")
    if _cached(source, revision):
        return Check("transformer", OK, f"{source}: in the Hugging Face cache")
    return Check("transformer", WARN, f"{source} is not cached yet: the first render downloads it",
                 f"hf download {source}   (ahead of time)")


def check_variant(model: str, revision: str | None, asked: str | None) -> Check:
    have = checkpoints.model_variants(model, revision)
    if asked:
        if asked in have:
            return Check("variant", OK, f"{asked}: the model has those files for every component")
        return Check("variant", FAIL, f"{asked}: the model has no such files (variants found: "
                     f"{', '.join(sorted(have)) or 'none, or not cached'})", "remove variant: to load the full files",
                     True)
    if checkpoints.AUTO_VARIANT in have:
        return Check("variant", OK, "bf16 files present: bf16 profiles load them (the same pixels, half the download)")
    return Check("variant", OK, "full files (no bf16 variant found in the cache or the folder)")


def check_manifest(manifest) -> list[Check]:
    checks = []
    if manifest.transformer:
        checks.append(check_transformer(manifest.transformer, manifest.transformer_revision))
    if not checkpoints.is_single_file(manifest.model) and manifest.model.count("/") >= 1:
        checks.append(check_variant(manifest.model, manifest.revision, manifest.variant))
    loras = {lo.sha256: lo for e in manifest.entries for lo in e.fields.get("loras", ())}
    if loras:
        checks.append(Check("LoRA files", OK, f"{len(loras)} distinct LoRA file(s), each found and hashed"))
        checks.append(check_lora_layers(manifest, list(loras.values())))
    return checks


def _transformer_layers(manifest) -> set[str] | None:
    """The layer names of the transformer the batch loads, built on the meta device from its config (no
    weights read); None when its config is not at hand (a hub model not in the cache)."""
    import torch
    from diffusers import MochiTransformer3DModel

    if manifest.model == "tiny" and not manifest.transformer:
        from batchgen.engine.loading import build_tiny_pipeline

        config = dict(build_tiny_pipeline().transformer.config)
    else:
        config = checkpoints.transformer_config(manifest.transformer or manifest.model, manifest.transformer_revision
                                                if manifest.transformer else manifest.revision)
    if not config:
        return None
    config = {k: v for k, v in config.items() if not k.startswith("_") and k != "quantization_config"}
    with torch.device("meta"):
        model = MochiTransformer3DModel.from_config(config)
    return {name for name, _ in model.named_modules()}


def check_lora_layers(manifest, loras: list) -> Check:
    """Every LoRA's layers against the transformer's, before a long batch finds out at its first LoRA job."""
    from safetensors import safe_open

    from batchgen.engine.lora import lora_layers

    try:
        have = _transformer_layers(manifest)
    except Exception as exc:  # a config this diffusers cannot build: say so rather than guess
        return Check("LoRA layers", WARN, f"could not build the transformer's layer list ({type(exc).__name__})")
    if have is None:
        return Check("LoRA layers", WARN, "the transformer's config is not in the cache: LoRA layers not checked")
    bad = []
    for lo in loras:
        path = Path(lo.source)
        file = path / (lo.weight_name or "pytorch_lora_weights.safetensors") if path.is_dir() else path
        if not file.is_file():
            continue  # a hub LoRA: validate found it in the cache by name; its layers are checked on load
        with safe_open(str(file), framework="pt") as handle:
            missing = sorted(lora_layers(handle.keys()) - have)
        if missing:
            bad.append(f"{lo.source}: {', '.join(missing[:5])}" + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    if bad:
        return Check("LoRA layers", FAIL, "layers the transformer does not have: " + "; ".join(bad),
                     "use LoRAs made for this model", True)
    return Check("LoRA layers", OK, f"every layer of the {len(loras)} LoRA(s) is in the transformer")
