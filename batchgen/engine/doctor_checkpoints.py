"""`batchgen doctor --manifest`: what a manifest loads beside its model, checked before a long batch.

The manifest's own reading already refused a LoRA file or a local transformer that is not there; here the
hub side is looked at: a transformer not in the local cache yet (the first render downloads it), a
variant the model lacks, and which variant bf16 profiles will load.
"""

from __future__ import annotations

from pathlib import Path

from batchgen.engine import checkpoints
from batchgen.engine.doctor import FAIL, OK, WARN, Check


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
    return checks
