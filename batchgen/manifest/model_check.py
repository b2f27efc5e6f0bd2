"""Is the manifest's model there? Checked before anything is written, without torch and without the network.

- `tiny` and `realsize` are built into batchgen: nothing to check.
- A local folder (one that exists, or a name that is clearly a path) must hold a pipeline as
  `save_pretrained` writes it: model_index.json, every component folder it names, and in each model
  component (one with a config.json) its weights: a *.safetensors / *.bin file, or every shard its
  *.index.json lists.
- A hub id: when HF_HUB_OFFLINE is set, the pipeline must be in the Hugging Face cache (the same checks on
  the cached snapshot); online nothing is checked here, the download at render time says what is wrong.
"""

from __future__ import annotations

from batchgen.engine.families.registry import builtin

import json
import os
import re
from pathlib import Path

from batchgen.errors import ModelLoadError

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's own reading of HF_HUB_OFFLINE


def check_model(model: str, revision: str | None = None) -> None:
    """None when `model` can be loaded as far as can be told without torch or the network; else raises
    ModelLoadError (exit 2) saying what is missing and what to do."""
    if builtin(model) is not None:  # every family's tiny and published-size names
        return
    folder = Path(model).expanduser()
    if folder.exists() or _looks_like_path(model):
        check_folder(folder, model)
        return
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE:
        _check_cached(model, revision)


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", ".", "~")) or "\\" in model or model.count("/") > 1 or not _HUB_ID.fullmatch(model)


def check_folder(folder: Path, model: str) -> None:
    """The checks on a pipeline folder (a local one, or a snapshot in the hub cache)."""
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise ModelLoadError(
            f"model {model!r}: the folder {folder} {what}; give a folder written by save_pretrained, "
            f"a hub id such as genmo/mochi-1-preview, or tiny"
        )
    index = folder / "model_index.json"
    try:
        components = json.loads(index.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(
            f"model {model!r}: {folder} has no model_index.json, so it is not a diffusers pipeline; give the "
            f"folder that pipe.save_pretrained() wrote (it holds model_index.json and one folder per component)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model {model!r}: {index} cannot be read as JSON ({exc}); save the pipeline again") from None
    if not isinstance(components, dict):
        raise ModelLoadError(f"model {model!r}: {index} is not a JSON object; save the pipeline again")
    missing = [problem for name, spec in components.items() for problem in _component_problems(folder, name, spec)]
    if missing:
        raise ModelLoadError(
            f"model {model!r}: the pipeline in {folder} is incomplete: {'; '.join(missing)}. Save it again with "
            f"save_pretrained, or finish the download (huggingface-cli download <hub id> --local-dir {folder})"
        )


def _component_problems(folder: Path, name: str, spec: object) -> list[str]:
    # model_index.json maps each component to [library, class]; "_class_name" and the like are not components,
    # and [null, null] is a component left out on purpose.
    if name.startswith("_") or not isinstance(spec, list) or len(spec) != 2 or spec[0] is None:
        return []
    sub = folder / name
    if not sub.is_dir():
        return [f"model_index.json names the component {name!r} but there is no folder {name}/"]
    if not (sub / "config.json").is_file():
        return [] if any(sub.iterdir()) else [f"the folder {name}/ is empty"]
    shards = _shard_problems(sub, name)
    if shards is not None:
        return shards
    if not any(p.suffix in _WEIGHT_SUFFIXES and p.is_file() for p in sub.iterdir()):
        return [f"{name}/ has a config.json but no weights (*.safetensors or *.bin)"]
    return []


def _shard_problems(sub: Path, name: str) -> list[str] | None:
    """None when the component is not sharded; else the shards its index lists that are missing."""
    indexes = sorted(sub.glob("*.index.json"))
    if not indexes:
        return None
    problems = []
    for index in indexes:
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
        except (OSError, ValueError, AttributeError):
            problems.append(f"{name}/{index.name} cannot be read")
            continue
        absent = sorted(s for s in shards if not (sub / s).is_file())
        if absent:
            problems.append(f"{name}/ lacks {len(absent)} weight shard(s) that {index.name} lists, e.g. {absent[0]}")
    return problems


def _check_cached(model: str, revision: str | None) -> None:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(model, "model_index.json", revision=revision)
    except ValueError as exc:  # huggingface_hub's HFValidationError: not a repo id it accepts
        raise ModelLoadError(f"model {model!r} is not a valid hub id ({exc}); write it as owner/name") from None
    if not isinstance(found, str):
        at = f" at revision {revision!r}" if revision else ""
        raise ModelLoadError(
            f"model {model!r}{at} is not in the Hugging Face cache and HF_HUB_OFFLINE is set, so it cannot be "
            f"downloaded; download it first (huggingface-cli download {model}), unset HF_HUB_OFFLINE, or give a "
            f"local folder"
        )
    check_folder(Path(found).parent, model)
