"""The manifest keys of what is loaded beside the model: `variant`, `transformer`, `transformer_revision`
(top level: one pipeline a batch) and `loras` (under `defaults:`, per job, or at the top level as every
job's default). Torch-free: a LoRA is found and hashed here, so its content is in the job id before
anything loads, and a missing file is a manifest error naming the line.

A `loras` item is a mapping: `path` (a local .safetensors file or folder) or `repo` (a hub id, found in
the local Hugging Face cache), `weight_name` (the file in a folder or repo; default
pytorch_lora_weights.safetensors), `scale` (default 1.0, from -SCALE_LIMIT to SCALE_LIMIT) and
`adapter_name` (diffusers' name for it; default from its hash). A bare string is a `path`.
"""

from __future__ import annotations

from pathlib import Path

from batchgen.job import Lora
from batchgen.manifest.fields import show
from batchgen.outputs.atomic import sha256_file

CHECKPOINT_KEYS = ("variant", "transformer", "transformer_revision")
LORA_KEYS = ("path", "repo", "weight_name", "scale", "adapter_name")
DEFAULT_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
# Scales past this are almost always a typo (100 for 1.00) and drive the frames to noise; negative scales
# (subtracting a style) are allowed.
SCALE_LIMIT = 4.0


class LoraProblem(ValueError):
    """What is wrong with one `loras` item; the caller prefixes the file, line and field."""


def parse_loras(value: object, base: Path) -> tuple[Lora, ...]:
    """The `loras` list, each file found (paths relative to `base`, the manifest's folder) and hashed."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise LoraProblem(f"must be a list of LoRAs (each a path, or a mapping with path or repo), got {show(value)}")
    loras = []
    for i, item in enumerate(value):
        try:
            loras.append(_one(item, base))
        except LoraProblem as exc:
            raise LoraProblem(f"item {i + 1}: {exc}") from None
    names = [lo.name for lo in loras]
    if len(set(names)) != len(names):
        raise LoraProblem("two LoRAs of one job have the same adapter_name (or the same file): give each its own")
    return tuple(loras)


def _one(item: object, base: Path) -> Lora:
    if isinstance(item, str):
        item = {"path": item}
    if not isinstance(item, dict):
        raise LoraProblem(f"must be a path or a mapping with path or repo, got {show(item)}")
    unknown = [k for k in item if k not in LORA_KEYS]
    if unknown:
        raise LoraProblem(f"unknown key {show(unknown[0])}; a LoRA takes {', '.join(LORA_KEYS)}")
    if ("path" in item) == ("repo" in item):
        raise LoraProblem("give exactly one of path (a local file or folder) and repo (a hub id)")
    weight_name = item.get("weight_name")
    if weight_name is not None and (not isinstance(weight_name, str) or not weight_name.strip()):
        raise LoraProblem(f"weight_name must be a file name, got {show(weight_name)}")
    scale = _scale(item.get("scale", 1.0))
    adapter = item.get("adapter_name") or ""
    if not isinstance(adapter, str) or (adapter and not adapter.replace("_", "").replace("-", "").isalnum()):
        raise LoraProblem(f"adapter_name must be letters, digits, '_' or '-', got {show(adapter)}")
    if "path" in item:
        source, file = _local(item["path"], weight_name, base)
    else:
        source, file = _cached(item["repo"], weight_name)
    return Lora(source=source, scale=scale, weight_name=weight_name, adapter_name=adapter, sha256=sha256_file(file)[:16])


def _scale(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LoraProblem(f"scale must be a number, got {show(value)}")
    if not -SCALE_LIMIT <= float(value) <= SCALE_LIMIT:
        raise LoraProblem(f"scale {value} is outside -{SCALE_LIMIT:g}..{SCALE_LIMIT:g} (1.0 is the LoRA as trained)")
    return float(value)


def _local(path: object, weight_name: str | None, base: Path) -> tuple[str, Path]:
    if not isinstance(path, str) or not path.strip():
        raise LoraProblem(f"path must be a file or folder, got {show(path)}")
    full = (base / Path(path.strip()).expanduser()).absolute()
    file = full / (weight_name or DEFAULT_WEIGHT_NAME) if full.is_dir() else full
    if not file.is_file():
        raise LoraProblem(f"LoRA file not found (looked for {file})")
    return str(full), file


def _cached(repo: object, weight_name: str | None) -> tuple[str, Path]:
    if not isinstance(repo, str) or repo.count("/") != 1:
        raise LoraProblem(f"repo must be a hub id such as owner/name, got {show(repo)}")
    from huggingface_hub import try_to_load_from_cache

    name = weight_name or DEFAULT_WEIGHT_NAME
    found = try_to_load_from_cache(repo, name)
    if not isinstance(found, str):
        raise LoraProblem(f"{repo}/{name} is not in the Hugging Face cache: download it first "
                          f"(hf download {repo} {name}) so its content can be part of the job id")
    return repo, Path(found)


def _check_local_transformer(value: str) -> None:
    # Like `model:`, a path is taken from the working directory; anything else is a hub id.
    path = Path(value).expanduser()
    looks_local = value.endswith(".safetensors") or value.startswith((".", "/", "~")) or value.count("/") != 1
    if looks_local and not path.exists():
        raise LoraProblem(f"{value} not found (looked for {path.absolute()}); give a local folder, a .safetensors "
                          "file or a hub id such as owner/name")


def parse_checkpoint_value(key: str, value: object) -> str:
    """A top-level checkpoint key's value, as text; a local transformer that is not there is refused."""
    if isinstance(value, str) and value.strip():
        value = value.strip()
        if key == "transformer":
            _check_local_transformer(value)
        return value
    what = {"variant": "a weights variant such as bf16", "transformer": "a hub id, a local folder or a .safetensors file",
            "transformer_revision": "a branch, tag or commit as text (in quotes)"}[key]
    raise LoraProblem(f"must be {what}, got {show(value)}")
