"""What a batch loads beside its model: the weights variant, a transformer swapped in, pre-quantized ones.

The rules, in the order a load applies them:

- `variant` (diffusers' `variant=`, e.g. genmo/mochi-1-preview's `bf16` files): when the manifest names
  none, `bf16` is taken when the profile computes in bf16 and the model has those files for every
  component, since they are the full-precision weights rounded to bf16, which is what loading the full files
  in bf16 does anyway: half the download, disk and load time for the same pixels (a test checks it on
  a saved tiny pipeline). Otherwise the full files. A variant the manifest names is part of the job id.
- `transformer`: a hub id, a local folder (a transformer saved alone, or a whole pipeline folder whose
  `transformer/` is taken) or one `.safetensors` file in the original format (`from_single_file`), loaded
  with its own `transformer_revision` and handed to the pipeline's `from_pretrained(transformer=...)`.
- A transformer whose config.json carries a `quantization_config` (the seed guide's NF4 community
  checkpoint) is kept as it is: its quantization becomes the precision tag, and a profile that would
  quantize or convert it again is refused before anything is loaded.

The functions that only read files are torch-free (the run's plan calls them before loading).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from batchgen.errors import BatchgenError, ModelLoadError

# diffusers / transformers variant file names: model.bf16.safetensors, ...bf16-00001-of-00004.safetensors,
# and the sharded index diffusion_pytorch_model.safetensors.index.bf16.json.
_VARIANT_FILE = re.compile(r"\.(?P<v>[A-Za-z0-9_]+)(?:-\d{5}-of-\d{5})?\.(?:safetensors|bin)$")
_VARIANT_INDEX = re.compile(r"\.index\.(?P<v>[A-Za-z0-9_]+)\.json$")
WEIGHT_COMPONENTS = ("text_encoder", "transformer", "vae")
AUTO_VARIANT = "bf16"
# Profiles' weights that leave a pre-quantized transformer as it is (the others quantize or convert it).
KEEPS_PREQUANTIZED = ("bf16", "fp32")


class CheckpointError(BatchgenError, ValueError):
    """A checkpoint the batch cannot load as asked; the message says what to change."""


def file_variants(names) -> set[str]:
    """The variants that weight file names carry."""
    found = set()
    for name in names:
        match = _VARIANT_FILE.search(name) or _VARIANT_INDEX.search(name)
        if match and match.group("v") not in ("safetensors", "bin"):
            found.add(match.group("v"))
    return found


def folder_variants(folder: Path) -> set[str]:
    """Variants every weight-bearing component of a saved pipeline folder has."""
    per_component = []
    for name in WEIGHT_COMPONENTS:
        sub = folder / name
        if sub.is_dir():
            per_component.append(file_variants(p.name for p in sub.iterdir()))
    return set.intersection(*per_component) if per_component else set()


def _hub_files(model: str, revision: str | None) -> list[str] | None:
    """The repo's file list: from the hub when it can be reached, else from the local cache; None if neither."""
    try:
        from huggingface_hub import list_repo_files, snapshot_download
    except ImportError:  # pragma: no cover - a dependency of diffusers
        return None
    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes", "on"):
        try:
            return list_repo_files(model, revision=revision)
        except Exception:
            pass
    try:
        root = Path(snapshot_download(model, revision=revision, local_files_only=True))
    except Exception:
        return None
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]


def model_variants(model: str, revision: str | None) -> set[str]:
    """Variants a model (local folder or hub id) has for every component; empty when it cannot be told."""
    path = Path(model).expanduser()
    if path.is_dir():
        return folder_variants(path)
    files = _hub_files(model, revision)
    if not files:
        return set()
    per_component = []
    for name in WEIGHT_COMPONENTS:
        names = [f.rpartition("/")[2] for f in files if f.startswith(name + "/")]
        if names:
            per_component.append(file_variants(names))
    return set.intersection(*per_component) if per_component else set()


def resolve_variant(model: str, revision: str | None, asked: str | None, computes_bf16: bool) -> tuple[str | None, str]:
    """(variant to load or None, why): the manifest's, else bf16 by the rule in the module's docstring."""
    if asked:
        path = Path(model).expanduser()
        if path.is_dir() and asked not in folder_variants(path):
            have = ", ".join(sorted(folder_variants(path))) or "none"
            raise CheckpointError(f"variant {asked!r}: the model folder {model} has no such files for every "
                                  f"component (variants it has: {have}); remove variant: to load the full files")
        return asked, "asked for"
    if computes_bf16 and AUTO_VARIANT in model_variants(model, revision):
        if _only_full_files_cached(model, revision):
            # Switching would download ~20 GB more for the same pixels: keep what is there.
            return None, "full files: they are in the cache and the bf16 ones are not (variant: bf16 switches)"
        return AUTO_VARIANT, "the profile computes in bf16 and the model has bf16 files: the same pixels, half the download"
    return None, "full files"


def _only_full_files_cached(model: str, revision: str | None) -> bool:
    """A hub model whose cached transformer weights are the full files only."""
    if Path(model).expanduser().is_dir():
        return False
    try:
        from huggingface_hub import snapshot_download

        root = Path(snapshot_download(model, revision=revision, local_files_only=True)) / "transformer"
    except Exception:
        return False
    names = [p.name for p in root.glob("*.safetensors")] if root.is_dir() else []
    return bool(names) and AUTO_VARIANT not in file_variants(names)


# -- the transformer -------------------------------------------------------------------------------------
def is_single_file(source: str) -> bool:
    return source.endswith(".safetensors") and not Path(source).expanduser().is_dir()


def transformer_config(source: str, revision: str | None) -> dict | None:
    """The swapped-in transformer's config.json (None for a single file or when it cannot be read)."""
    if is_single_file(source):
        return None
    path = Path(source).expanduser()
    if path.is_dir():
        for candidate in (path / "config.json", path / "transformer" / "config.json"):
            if candidate.is_file():
                return json.loads(candidate.read_text(encoding="utf-8"))
        raise CheckpointError(f"transformer {source}: the folder has no config.json (nor transformer/config.json); "
                              "give a folder saved with save_pretrained, a hub id or a .safetensors file")
    try:
        from huggingface_hub import hf_hub_download

        for name in ("config.json", "transformer/config.json"):
            try:
                return json.loads(Path(hf_hub_download(source, name, revision=revision)).read_text(encoding="utf-8"))
            except Exception:
                continue
    except ImportError:  # pragma: no cover
        pass
    return None


def prequantized_tag(config: dict | None) -> str | None:
    """The precision tag of a pre-quantized transformer ("nf4-prequantized", "int8-prequantized", ...)."""
    quant = (config or {}).get("quantization_config")
    if not quant:
        return None
    method = quant.get("quant_method", "unknown")
    if method == "bitsandbytes":
        kind = quant.get("bnb_4bit_quant_type", "nf4") if quant.get("load_in_4bit") else "int8"
        return f"{kind}-prequantized"
    return f"{method}-prequantized"


def precision_with(precision: str, tag: str | None) -> str:
    """The profile's precision tag with a pre-quantized transformer's in place of its compute dtype."""
    if not tag:
        return precision
    head, sep, rest = precision.partition("-")
    if head in ("bf16", "fp32"):
        return tag + (sep + rest if sep else "")
    return f"{precision}+{tag}"


def check_profile(tag: str | None, profile: str, weights: str, compiles: bool, source: str) -> None:
    """Refuse a profile that would quantize, convert or compile a pre-quantized transformer again."""
    if tag and (weights not in KEEPS_PREQUANTIZED or compiles):
        raise CheckpointError(
            f"transformer {source} is already quantized ({tag}); profile '{profile}' would quantize, convert or "
            "compile it again. Use profile resident, offload or cpu with it"
        )


def transformer_folder(source: str) -> Path | None:
    """The local folder whose files are the swapped-in transformer (None for a single file or a hub id)."""
    path = Path(source).expanduser()
    if not path.is_dir():
        return None
    return path / "transformer" if (path / "transformer" / "config.json").is_file() else path


def load_transformer(source: str, revision: str | None, load_kwargs: dict, base_model: str | None = None):
    """The transformer module, loaded as `source` says (engine/loading.py resolves its revision). A single
    file carries weights only: its config is the base model's transformer's when that is a local folder,
    else diffusers' default for the format (genmo/mochi-1-preview's, from the hub or its cache)."""
    from diffusers import MochiTransformer3DModel

    kwargs = {k: v for k, v in load_kwargs.items() if k in ("dtype", "torch_dtype")}
    quant = load_kwargs.get("quantization_config")
    if quant is not None:
        # The profile's PipelineQuantizationConfig quantizes the transformer only (placement.py); a
        # transformer loaded alone takes the same settings as diffusers' own BitsAndBytesConfig.
        from diffusers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(**quant.quant_kwargs)
    path = Path(source).expanduser()
    try:
        if is_single_file(source):
            if not path.is_file():
                raise CheckpointError(f"transformer {source}: no such file")
            if base_model and (Path(base_model).expanduser() / "transformer" / "config.json").is_file():
                kwargs.update(config=str(Path(base_model).expanduser()), subfolder="transformer")
            return MochiTransformer3DModel.from_single_file(str(path), **kwargs).eval()
        folder = transformer_folder(source)
        if folder is not None:
            return MochiTransformer3DModel.from_pretrained(str(folder), **kwargs).eval()
        try:
            return MochiTransformer3DModel.from_pretrained(source, revision=revision, **kwargs).eval()
        except OSError:
            return MochiTransformer3DModel.from_pretrained(source, revision=revision, subfolder="transformer",
                                                           **kwargs).eval()
    except CheckpointError:
        raise
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"could not load transformer {source}: {type(exc).__name__}: {first}") from exc
