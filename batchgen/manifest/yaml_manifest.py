"""YAML manifests: the top-level keys (run-wide settings, `defaults`, `seeds`, `jobs`, `prompts_file`) read
into a Draft. Locations are ``jobs.yaml:14``: the line of the entry, or for a field the line of its key.
"""

from __future__ import annotations

from pathlib import Path

from batchgen.engine.families import FAMILIES
from batchgen.engine.profile_registry import PROFILES
from batchgen.job import JOB_FIELDS
from batchgen.manifest.checkpoint_keys import CHECKPOINT_KEYS, LoraProblem, parse_checkpoint_value, parse_loras
from batchgen.manifest.entries import TOP_LEVEL_KEYS, Draft, add_entries, read_text, suggest
from batchgen.manifest.fields import TEXT_FIELDS, FieldError, count_tokens_warning, normalise, show, to_bool
from batchgen.manifest.output_names import check_template
from batchgen.manifest.txt_reader import read_txt
from batchgen.manifest.yaml_loader import Refused, parse_yaml


def line_of(container: object, key: object, default: int) -> int:
    lines = getattr(container, "key_lines", None)
    if lines and key in lines:
        return lines[key]
    return getattr(container, "line", default) or default


def _report_duplicate_keys(mapping, draft: Draft, where: str) -> None:
    for key, first, again in getattr(mapping, "duplicate_keys", ()):
        draft.problem(f"{draft.display}:{again}: field {show(key)} appears twice {where} (lines {first} and {again}); keep one")


def read_yaml(text: str, draft: Draft, *, overrides: dict) -> None:
    """Fill `draft` from the YAML manifest `text`; `overrides` (model, out, profile, approximate) are the
    command line's, which win over the manifest's (so an invalid manifest value they replace is not checked)."""
    display = draft.display
    try:
        data = parse_yaml(text, display, draft.problems)
    except Refused:
        return
    if data is None:
        draft.problem(f"{display}:1: the manifest is empty; write a mapping with at least jobs: or prompts_file:")
        return
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"the single value {show(data)}"
        hint = " (put the list under jobs:)" if isinstance(data, list) else "; write keys such as model:, defaults: and jobs:"
        draft.problem(f"{display}:{getattr(data, 'line', 1)}: the top level must be a mapping, not {kind}{hint}")
        return
    _report_duplicate_keys(data, draft, "at the top level")
    for key in data:
        if key in TOP_LEVEL_KEYS:
            continue
        if key in JOB_FIELDS:
            hint = "; job fields go under defaults: (for every job) or in a jobs: entry"
        elif key == "seed":
            hint = "; did you mean 'seeds' (a list) or 'seed' under defaults:?"
        else:
            hint = suggest(key, TOP_LEVEL_KEYS)
        draft.problem(f"{display}:{line_of(data, key, 1)}: unknown top-level field {show(key)}{hint}")
    _run_settings(data, draft, overrides)
    seeds = _seeds(data, draft)
    defaults = _defaults(data, draft, seeds)
    _jobs(data, draft, defaults, seeds)
    _prompts_file(data, draft, defaults, seeds)


def _loc(data, draft: Draft, key: str) -> str:
    return f"{draft.display}:{line_of(data, key, 1)}"


def _text_setting(data, draft: Draft, key: str, what: str) -> str | None:
    """A run-wide text setting, stripped; None (after recording a problem) when it is not text."""
    value = data[key]
    if isinstance(value, str) and value.strip():
        return value.strip()
    if value is not None or key == "model":
        draft.problem(f"{_loc(data, draft, key)}: field '{key}': must be {what}, got {show(value)}")
    return None


def _run_settings(data, draft: Draft, overrides: dict) -> None:
    if "model" in data and overrides.get("model") is None:
        draft.model = _text_setting(data, draft, "model", "a hub id (e.g. genmo/mochi-1-preview), a local folder or 'tiny'") or draft.model
        draft.model_source = _loc(data, draft, "model")
    if "family" in data and data["family"] is not None:
        _family(data, draft)
    if "revision" in data:
        what = "a branch, tag or commit as text; put it in quotes (a commit hash can read as a number)"
        draft.revision = _text_setting(data, draft, "revision", what)
    if "profile" in data and overrides.get("profile") is None:
        value = data["profile"]
        if value in PROFILES:
            draft.profile = value
        else:
            draft.problem(
                f"{_loc(data, draft, 'profile')}: field 'profile': unknown profile {show(value)}"
                f"{suggest(value, PROFILES)} (profiles: {', '.join(PROFILES)})"
            )
    if "quality" in data and data["quality"] is not None:
        try:
            draft.quality = to_bool("quality", data["quality"])
        except FieldError as exc:
            draft.problem(f"{_loc(data, draft, 'quality')}: field 'quality': {exc}")
    if "approximate" in data and overrides.get("approximate") is None:
        from batchgen.engine import approximate

        try:
            draft.approximate = approximate.parse(data["approximate"])
        except ValueError as exc:
            draft.problem(f"{_loc(data, draft, 'approximate')}: field 'approximate': {exc}")
    if "out" in data and overrides.get("out") is None:
        out = _text_setting(data, draft, "out", "a folder path (relative to the manifest's folder)")
        if out is not None:
            draft.out = draft.path.parent / Path(out).expanduser()
    if "output_name" in data:
        _output_name(data, draft)
    for key in CHECKPOINT_KEYS:
        if data.get(key) is not None:
            try:
                draft.checkpoint[key] = parse_checkpoint_value(key, data[key])
            except LoraProblem as exc:
                draft.problem(f"{_loc(data, draft, key)}: field '{key}': {exc}")


def _family(data, draft: Draft) -> None:
    value = data["family"]
    if value in FAMILIES:
        draft.family = value
        if not draft.model_source:
            draft.model_source = _loc(data, draft, "family")
        return
    draft.problem(
        f"{_loc(data, draft, 'family')}: field 'family': unknown model family {show(value)}{suggest(value, FAMILIES)} "
        "(it is needed only for a hub id whose model_index.json is not in the local cache)"
    )


def _output_name(data, draft: Draft) -> None:
    value = data["output_name"]
    loc = _loc(data, draft, "output_name")
    draft.output_name_source = loc
    if not isinstance(value, str) or not value.strip():
        draft.problem(
            f"{loc}: field 'output_name': must be a template such as \"{{prompt}}-{{index}}\" or "
            f"\"{{job_id}}\", got {show(value)}"
        )
        return
    try:
        draft.output_name = check_template(value)
    except ValueError as exc:
        draft.problem(f"{loc}: field 'output_name': {exc}")


def _seeds(data, draft: Draft) -> list[int] | None:
    if "seeds" not in data or data["seeds"] is None:
        return None
    value = data["seeds"]
    loc = _loc(data, draft, "seeds")
    if not isinstance(value, list):
        draft.problem(f"{loc}: field 'seeds': must be a list of integers, e.g. seeds: [0, 1, 2], got {show(value)}")
        return None
    if not value:
        draft.problem(f"{loc}: field 'seeds': the list is empty; give at least one seed or remove it")
        return None
    seeds = []
    item_lines = getattr(value, "item_lines", [])
    for i, item in enumerate(value):
        line = item_lines[i] if i < len(item_lines) else line_of(data, "seeds", 1)
        try:
            seeds.append(normalise("seed", item, textual=False))
        except FieldError as exc:
            draft.problem(f"{draft.display}:{line}: field 'seeds' (item {i + 1}): {exc}")
    if len(seeds) != len(value):
        draft.entry_problems += 1
        return None
    return seeds


def _defaults(data, draft: Draft, seeds: list[int] | None) -> dict:
    top = _top_level_loras(data, draft)
    if "defaults" not in data or data["defaults"] is None:
        return top
    value = data["defaults"]
    if not isinstance(value, dict):
        draft.problem(
            f"{_loc(data, draft, 'defaults')}: field 'defaults': must be a mapping of job fields "
            f"(e.g. num_frames: 25), got {show(value)}"
        )
        return {}
    _report_duplicate_keys(value, draft, "in defaults")
    defaults = fields_from_mapping(value, draft, where="defaults")
    if defaults is None:
        draft.entry_problems += 1
        return {}
    if top and "loras" in defaults:
        draft.problem(f"{draft.display}:{line_of(value, 'loras', 1)}: field 'loras': set both at the top level and "
                      "under defaults: use one of them")
    defaults = {**top, **defaults}
    for name in TEXT_FIELDS:
        if name in defaults:
            warning = count_tokens_warning(defaults[name], source=f"{draft.display}:{line_of(value, name, 1)}", field_name=name)
            if warning:
                draft.warnings.append(warning)
    if "seed" in defaults and seeds is not None:
        draft.problem(
            f"{draft.display}:{line_of(value, 'seed', 1)}: field 'seed': defaults set seed and seeds: is given too; "
            f"use one of them"
        )
    return defaults


def _jobs(data, draft: Draft, defaults: dict, seeds: list[int] | None) -> None:
    if "jobs" not in data or data["jobs"] is None:
        return
    value = data["jobs"]
    if not isinstance(value, list):
        draft.problem(
            f"{_loc(data, draft, 'jobs')}: field 'jobs': must be a list (each item a mapping of job fields or "
            f"a prompt string, written with '- '), got {show(value)}"
        )
        return
    item_lines = getattr(value, "item_lines", [])
    for i, item in enumerate(value):
        line = item_lines[i] if i < len(item_lines) else line_of(data, "jobs", 1)
        source = f"{draft.display}:{line}"
        if isinstance(item, str):
            own = fields_from_mapping({"prompt": item}, draft, where="jobs", line=line)
        elif isinstance(item, dict):
            _report_duplicate_keys(item, draft, "in this job")
            own = fields_from_mapping(item, draft, where="jobs")
        else:
            draft.problem(f"{source}: jobs item {i + 1} must be a mapping of job fields or a prompt string, got {show(item)}")
            own = None
        if own is None:
            draft.entry_problems += 1
            continue
        add_entries(draft, source, defaults, own, seeds)


def _prompts_file(data, draft: Draft, defaults: dict, seeds: list[int] | None) -> None:
    if "prompts_file" not in data or data["prompts_file"] is None:
        return
    value = data["prompts_file"]
    loc = _loc(data, draft, "prompts_file")
    if not isinstance(value, str) or not value.strip():
        draft.problem(
            f"{loc}: field 'prompts_file': must be the path of a text file (relative to the manifest's folder), "
            f"got {show(value)}"
        )
        return
    ppath = draft.path.parent / Path(value.strip()).expanduser()
    pdisplay = str(ppath)
    errors: list[str] = []
    ptext = read_text(ppath, pdisplay, errors, what="prompts_file")
    if ptext is None:
        draft.problems.extend(f"{loc}: field 'prompts_file': {e}" for e in errors)
        draft.entry_problems += 1
        return
    before = len(draft.entries) + draft.entry_problems
    read_txt(ptext, pdisplay, draft, defaults=defaults, seeds=seeds)
    if len(draft.entries) + draft.entry_problems == before:
        draft.problem(
            f"{loc}: field 'prompts_file': {pdisplay} has no prompts (blank lines are skipped); add one prompt per line"
        )


def _top_level_loras(data, draft: Draft) -> dict:
    """Top-level `loras:`: every job's, as if under defaults."""
    if data.get("loras") is None:
        return {}
    try:
        return {"loras": parse_loras(data["loras"], draft.path.parent)}
    except LoraProblem as exc:
        draft.problem(f"{_loc(data, draft, 'loras')}: field 'loras': {exc}")
        return {}


def fields_from_mapping(mapping: dict, draft: Draft, *, where: str, line: int | None = None) -> dict | None:
    """Validated job fields set by `mapping` (None values mean "not set"), or None on problems."""
    ok = True
    out: dict = {}
    for key, value in mapping.items():
        loc = f"{draft.display}:{line if line is not None else line_of(mapping, key, 1)}"
        if key == "loras":  # a job's own LoRAs replace the defaults' (an empty list: none)
            try:
                out["loras"] = parse_loras(value, draft.path.parent) if value is not None else ()
            except LoraProblem as exc:
                ok = False
                draft.problem(f"{loc}: field 'loras': {exc}")
            continue
        if key not in JOB_FIELDS:
            ok = False
            if key in TOP_LEVEL_KEYS:
                hint = f"; {key!r} is set once at the top level of the manifest, not in {where}"
            else:
                hint = suggest(key, JOB_FIELDS)
            draft.problem(f"{loc}: unknown field {show(key)} in {where}{hint}")
            continue
        if value is not None:
            ok = draft.check_field(out, loc, key, value, textual=False) and ok
    return out if ok else None
