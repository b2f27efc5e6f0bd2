"""Manifests: parse and validate YAML / CSV / TXT job lists into `Entry`s, expand them into `Job`s.

Everything is checked before anything renders, and every problem is reported at once
(`ManifestError.problems`), each message naming the file, the line (YAML, TXT) or row (CSV), the
field and a hint. This module must stay light (no torch / diffusers / click) so that
`batchgen validate` is fast.

Locations in messages and in `Entry.source`:

- YAML: ``jobs.yaml:14`` -- the 1-based line of the entry (for a field: the line of its key);
- CSV: ``jobs.csv:row 3`` -- the 1-based CSV record, the header being row 1 and blank rows
  counted, so the first data row is row 2; it equals the line number unless a quoted cell spans
  several lines;
- TXT (a ``.txt`` manifest or a YAML ``prompts_file``): ``prompts.txt:line 4`` -- 1-based line.
"""

from __future__ import annotations

import csv
import difflib
import io
import math
import unicodedata
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from batchgen.errors import ManifestError
from batchgen.job import JOB_DEFAULTS, JOB_FIELDS, Job
from batchgen.outputs.naming import render_output_name, safe_file_stem
from batchgen.engine.profile_registry import PROFILES

__all__ = [
    "Entry",
    "Manifest",
    "load_manifest",
    "count_tokens_warning",
    "TOP_LEVEL_KEYS",
    "JOB_FIELDS",
    "PROFILES",
    "SUPPORTED_EXTENSIONS",
]

#: Memory/speed profiles a manifest (or --profile) may name.

#: Keys allowed at the top level of a YAML manifest.
TOP_LEVEL_KEYS = (
    "model",
    "revision",
    "profile",
    "quality",
    "approximate",
    "out",
    "output_name",
    "defaults",
    "jobs",
    "seeds",
    "prompts_file",
)

SUPPORTED_EXTENSIONS = (".yaml", ".yml", ".csv", ".txt", ".jsonl", ".db")
# A previous run's records (OUT/metadata.jsonl, OUT/batchgen.db): re-create that batch (batchgen.manifest.recorded).
RECORD_EXTENSIONS = (".jsonl", ".db")

DEFAULT_MODEL = "tiny"
DEFAULT_PROFILE = "auto"
DEFAULT_OUTPUT_NAME = "{job_id}"

SEED_LIMIT = 2**64
MAX_FPS = 240
MIN_FRAMES = 7
# T5 (Mochi's text encoder) truncates at 256 tokens. Without a tokenizer we estimate: a prompt
# with more than 256 whitespace-separated words or more than 1000 characters probably exceeds it.
T5_MAX_TOKENS = 256
LONG_PROMPT_WORDS = 256
LONG_PROMPT_CHARS = 1000

_INT_FIELDS = ("seed", "num_frames", "height", "width", "num_inference_steps", "fps")
_TEXT_FIELDS = ("prompt", "negative_prompt")


@dataclass(frozen=True)
class Entry:
    """One validated manifest entry, before the run's precision is known."""

    fields: dict  # every key of JOB_FIELDS, defaults applied, types normalised (int/float/str)
    source: str  # "jobs.yaml:12", "jobs.csv:row 3", "prompts.txt:line 4"
    index: int  # position in `seeds:` (0 when the entry gave its own seed or there is no list)
    # A file stem given as is, bypassing the output_name template: a re-created batch keeps the recorded names.
    output_name: str | None = None


@dataclass
class Manifest:
    path: Path
    model: str
    revision: str | None
    profile: str
    quality: bool
    out: Path | None
    output_name: str
    entries: list[Entry]
    warnings: list[str]
    # Where output_name was set ("jobs.yaml:3"), or the file alone; for collision messages.
    output_name_source: str = ""
    # An opt-in approximate accelerator's canonical spec (batchgen.engine.approximate), None for exact renders.
    approximate: str | None = None
    # Filled by expand(): (source of the dropped duplicate, source of the entry kept).
    duplicates: list[tuple[str, str]] = field(default_factory=list)

    def expand(self, precision: str) -> list[Job]:
        """Build one Job per entry for `precision`, dropping exact duplicates (same job id; the
        first is kept, the others are listed in `self.duplicates`).

        Raises ManifestError when two different jobs get the same output file name (compared
        ignoring case, as macOS and Windows do), naming both sources.
        """
        jobs: list[Job] = []
        kept: dict[str, Job] = {}
        by_name: dict[str, Job] = {}
        problems: list[str] = []
        self.duplicates = []
        where = self.output_name_source or str(self.path)
        for entry in self.entries:
            job = Job(
                model=self.model,
                revision=self.revision,
                precision=precision,
                **entry.fields,
                source=entry.source,
                index=entry.index,
            )
            jid = job.job_id
            if jid in kept:
                self.duplicates.append((entry.source, kept[jid].source))
                continue
            try:
                rendered = entry.output_name or render_output_name(
                    self.output_name, prompt=job.prompt, index=job.index, seed=job.seed, job_id=jid
                )
            except ValueError as exc:
                raise ManifestError([f"{where}: field 'output_name': {exc}"]) from None
            job = job.with_(output_name=safe_file_stem(rendered))
            key = unicodedata.normalize("NFC", job.output_name.casefold())
            other = by_name.get(key)
            if other is not None:
                same = "the file name" if other.output_name == job.output_name else "file names"
                shown = (
                    f"'{job.output_name}'"
                    if other.output_name == job.output_name
                    else f"'{other.output_name}' and '{job.output_name}' (equal ignoring case, as on macOS/Windows)"
                )
                problems.append(
                    f"{where}: field 'output_name': different jobs at {other.source} and "
                    f"{job.source} both get {same} {shown}; make output_name tell them apart with "
                    f"{{seed}}, {{index}} or {{job_id}}, e.g. output_name: \"{self.output_name}-{{job_id}}\""
                )
                continue
            by_name[key] = job
            kept[jid] = job
            jobs.append(job)
        if problems:
            raise ManifestError(problems)
        return jobs


def count_tokens_warning(text: str, *, source: str, field_name: str = "prompt") -> str | None:
    """A warning when `text` probably exceeds T5's 256-token limit, else None.

    This is a conservative *estimate* made without a tokenizer: more than 256 whitespace-separated
    words or more than 1000 characters. Exact counting happens later with the real tokenizer.
    """
    words = len(text.split())
    chars = len(text)
    if words <= LONG_PROMPT_WORDS and chars <= LONG_PROMPT_CHARS:
        return None
    return (
        f"{source}: field '{field_name}': {words} words / {chars} characters probably exceeds "
        f"T5's {T5_MAX_TOKENS}-token limit (estimate); the text encoder will ignore the end, "
        f"so shorten it"
    )


# --------------------------------------------------------------------------------------------
# Loading


def load_manifest(
    path: str | Path,
    *,
    model: str | None = None,
    out: str | Path | None = None,
    profile: str | None = None,
    approximate: str | None = None,
) -> Manifest:
    """Parse and validate a manifest (.yaml/.yml, .csv or .txt), or a previous run's records
    (OUT/metadata.jsonl or OUT/batchgen.db: the same jobs, seeds and file names, see batchgen.manifest.recorded).

    `model`, `out`, `profile` and `approximate` are command-line overrides: when given they replace the
    manifest's values (`out` is then taken as given, relative to the working directory, whereas a
    manifest's `out:` is relative to the manifest's folder).

    Raises ManifestError listing every problem found.
    """
    path = Path(path)
    display = str(path)
    problems: list[str] = []

    if model is not None and (not isinstance(model, str) or not model.strip()):
        problems.append(f"--model: the model must be a hub id, a local folder or 'tiny', got {model!r}")
    if profile is not None and profile not in PROFILES:
        problems.append(f"--profile: unknown profile {profile!r}{_suggest(profile, PROFILES)}")
    approximate_spec = None
    if approximate is not None:
        from batchgen.engine import approximate as approx

        try:
            approximate_spec = approx.parse(approximate) or ""
        except ValueError as exc:
            problems.append(f"--approximate: {exc}")

    suffix = path.suffix.lower()
    if suffix in RECORD_EXTENSIONS:
        from batchgen.manifest.recorded import load_records

        state = _State(display=display, path=path, problems=problems)
        load_records(state, profile_override=profile)
        return _finish(state, path, suffix, model=model, out=out, profile=profile, approximate=approximate_spec)
    text = _read_text(path, display, problems, what="manifest")
    if text is None:
        raise ManifestError(problems)
    if suffix not in SUPPORTED_EXTENSIONS:
        problems.append(
            f"{display}: unsupported manifest type {path.suffix or '(no extension)'!r}; "
            f"use one of {', '.join(SUPPORTED_EXTENSIONS)} (YAML, CSV with a header row, "
            f"plain text with one prompt per line, or a previous run's metadata.jsonl or batchgen.db)"
        )
        raise ManifestError(problems)

    state = _State(display=display, path=path, problems=problems)
    if suffix in (".yaml", ".yml"):
        _load_yaml(text, state, overrides={"model": model, "out": out, "profile": profile, "approximate": approximate_spec})
    elif suffix == ".csv":
        _load_csv(text, state)
    else:
        _load_txt(text, display, state, defaults={}, seeds=None)
    return _finish(state, path, suffix, model=model, out=out, profile=profile, approximate=approximate_spec)


def _finish(state: "_State", path: Path, suffix: str, *, model, out, profile, approximate=None) -> Manifest:
    """Report what was found (or that nothing was), apply the command-line overrides, build the Manifest."""
    display, problems = state.display, state.problems
    if not state.entries and not state.entry_problems and not problems:
        problems.append(
            f"{display}: the manifest has no entries; add prompts"
            + (" under jobs: or in a prompts_file:" if suffix in (".yaml", ".yml") else "")
        )
    if problems:
        raise ManifestError(problems)

    if model is not None:
        state.model = model
    if profile is not None:
        state.profile = profile
    if approximate is not None:  # "" from --approximate none: exact, whatever the manifest says
        state.approximate = approximate or None
    if out is not None:
        state.out = Path(out).expanduser()
    return Manifest(
        path=path,
        model=state.model,
        revision=state.revision,
        profile=state.profile,
        quality=state.quality,
        out=state.out,
        output_name=state.output_name,
        entries=state.entries,
        warnings=state.warnings,
        output_name_source=state.output_name_source or display,
        approximate=state.approximate,
    )


@dataclass
class _State:
    display: str
    path: Path
    problems: list[str]
    model: str = DEFAULT_MODEL
    revision: str | None = None
    profile: str = DEFAULT_PROFILE
    quality: bool = False
    approximate: str | None = None
    out: Path | None = None
    output_name: str = DEFAULT_OUTPUT_NAME
    output_name_source: str = ""
    entries: list[Entry] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    entry_problems: int = 0  # entries refused (so "no entries" is not reported on top)

    def problem(self, msg: str) -> None:
        self.problems.append(msg)


def _read_text(path: Path, display: str, problems: list[str], *, what: str) -> str | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        problems.append(f"{display}: {what} not found (looked for {_abs(path)})")
        return None
    except IsADirectoryError:
        problems.append(f"{display}: {what} is a folder, not a file ({_abs(path)})")
        return None
    except OSError as exc:
        problems.append(f"{display}: cannot read {what} ({exc.strerror or exc})")
        return None
    offset = 0
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark (Excel, Notepad)
        raw, offset = raw[3:], 3
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        pos = exc.start + offset
        line = raw[: exc.start].count(b"\n") + 1
        problems.append(
            f"{display}:{line}: {what} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at byte "
            f"offset {pos}); save the file as UTF-8"
        )
        return None


def _abs(path: Path) -> str:
    try:
        return str(path.expanduser().absolute())
    except OSError:
        return str(path)


def _suggest(word: object, known) -> str:
    if isinstance(word, str):
        close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
        if close:
            return f"; did you mean {close[0]!r}?"
    return f"; known: {', '.join(known)}"


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------------------------
# YAML with line numbers


class _LineDict(dict):
    """A mapping that remembers its line and the line of each key (1-based)."""

    line: int = 0
    key_lines: dict
    duplicate_keys: list  # (key, first line, repeated line)


class _LineList(list):
    line: int = 0
    item_lines: list


# libyaml's parser when available (fast for manifests of thousands of jobs); same marks.
class _LineLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    pass


def _construct_mapping(loader, node: yaml.MappingNode) -> _LineDict:
    loader.flatten_mapping(node)  # `<<:` merge keys
    mapping = _LineDict()
    mapping.line = node.start_mark.line + 1
    mapping.key_lines = {}
    mapping.duplicate_keys = []
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, Hashable):
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, "found an unhashable key", key_node.start_mark
            )
        line = key_node.start_mark.line + 1
        if key in mapping.key_lines:
            mapping.duplicate_keys.append((key, mapping.key_lines[key], line))
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.key_lines[key] = line
    return mapping


def _construct_sequence(loader, node: yaml.SequenceNode) -> _LineList:
    seq = _LineList(loader.construct_object(child, deep=True) for child in node.value)
    seq.line = node.start_mark.line + 1
    seq.item_lines = [child.start_mark.line + 1 for child in node.value]
    return seq


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)


def _parse_yaml(text: str, display: str, problems: list[str]):
    """The document, or raises _Stop after recording a syntax problem."""
    try:
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{display}:{mark.line + 1}" if mark else display
        col = f" column {mark.column + 1}" if mark else ""
        what = exc.problem or exc.context or "invalid YAML"
        context = f" ({exc.context})" if exc.context and exc.problem else ""
        lines = text.split("\n")
        if mark and mark.line < len(lines) and "\t" in lines[mark.line][: mark.column + 1]:
            hint = "indent with spaces: YAML does not allow tabs for indentation"
        else:
            hint = (
                "check the indentation and the colons, and quote text that contains ': ', ' #' "
                "or starts with a special character"
            )
        problems.append(f"{where}: YAML syntax error at{col or ' this line'}: {what}{context}; {hint}")
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        char = exc.character
        code = char if isinstance(char, int) else ord(char) if isinstance(char, str) and len(char) == 1 else None
        shown = f"U+{code:04X}" if code is not None else repr(char)
        problems.append(
            f"{display}:{line}: the control character {shown} is not allowed in YAML; remove it "
            f"(write \\n in a double-quoted string for a line break)"
        )
    except yaml.YAMLError as exc:  # pragma: no cover - other YAML errors carry no mark
        problems.append(f"{display}: invalid YAML ({exc})")
    raise _Stop


class _Stop(Exception):
    pass


def _line_of(container, key, default: int) -> int:
    lines = getattr(container, "key_lines", None)
    if lines and key in lines:
        return lines[key]
    return getattr(container, "line", default) or default


def _report_duplicate_keys(mapping, display: str, state: _State, where: str) -> None:
    for key, first, again in getattr(mapping, "duplicate_keys", ()):
        state.problem(
            f"{display}:{again}: field {key!r} appears twice {where} (lines {first} and {again}); "
            f"keep one"
        )


def _load_yaml(text: str, state: _State, *, overrides: dict) -> None:
    display = state.display
    try:
        data = _parse_yaml(text, display, state.problems)
    except _Stop:
        return
    if data is None:
        state.problem(
            f"{display}:1: the manifest is empty; write a mapping with at least jobs: or "
            f"prompts_file:"
        )
        return
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"a {type(data).__name__}"
        hint = (
            " (put the list under jobs:)"
            if isinstance(data, list)
            else "; write keys such as model:, defaults: and jobs:"
        )
        state.problem(f"{display}:{getattr(data, 'line', 1)}: the top level must be a mapping, not {kind}{hint}")
        return
    _report_duplicate_keys(data, display, state, "at the top level")

    def loc(key: str) -> str:
        return f"{display}:{_line_of(data, key, 1)}"

    for key in data:
        if key in TOP_LEVEL_KEYS:
            continue
        if key in JOB_FIELDS:
            hint = "; job fields go under defaults: (for every job) or in a jobs: entry"
        elif key == "seed":
            hint = "; did you mean 'seeds' (a list) or 'seed' under defaults:?"
        else:
            hint = _suggest(key, TOP_LEVEL_KEYS)
        state.problem(f"{loc(key)}: unknown top-level field {_show(key)}{hint}")

    # -- run-wide settings
    if "model" in data and overrides.get("model") is None:
        value = data["model"]
        if isinstance(value, str) and value.strip():
            state.model = value.strip()
        else:
            state.problem(
                f"{loc('model')}: field 'model': must be a hub id (e.g. genmo/mochi-1-preview), a "
                f"local folder or 'tiny', got {_show(value)}"
            )
    if "revision" in data:
        value = data["revision"]
        if value is None:
            pass
        elif isinstance(value, str) and value.strip():
            state.revision = value.strip()
        else:
            state.problem(
                f"{loc('revision')}: field 'revision': must be a branch, tag or commit as text, got "
                f"{_show(value)}; put it in quotes (YAML reads some commit hashes as numbers)"
            )
    if "profile" in data and overrides.get("profile") is None:
        value = data["profile"]
        if value in PROFILES:
            state.profile = value
        else:
            state.problem(
                f"{loc('profile')}: field 'profile': unknown profile {_show(value)}"
                f"{_suggest(value, PROFILES)} (profiles: {', '.join(PROFILES)})"
            )
    if "quality" in data:
        value = data["quality"]
        if isinstance(value, bool):
            state.quality = value
        elif value is not None:
            state.problem(f"{loc('quality')}: field 'quality': must be true or false, got {_show(value)}")
    if "approximate" in data and overrides.get("approximate") is None:
        from batchgen.engine import approximate

        try:
            state.approximate = approximate.parse(data["approximate"])
        except ValueError as exc:
            state.problem(f"{loc('approximate')}: field 'approximate': {exc}")
    if "out" in data and overrides.get("out") is None:
        value = data["out"]
        if isinstance(value, str) and value.strip():
            state.out = state.path.parent / Path(value.strip()).expanduser()
        elif value is not None:
            state.problem(
                f"{loc('out')}: field 'out': must be a folder path (relative to the manifest's "
                f"folder), got {_show(value)}"
            )
    if "output_name" in data:
        value = data["output_name"]
        state.output_name_source = loc("output_name")
        if not isinstance(value, str) or not value.strip():
            state.problem(
                f"{loc('output_name')}: field 'output_name': must be a template such as "
                f"\"{{prompt}}-{{index}}\" or \"{{job_id}}\", got {_show(value)}"
            )
        else:
            try:
                render_output_name(value, prompt="p", index=0, seed=0, job_id="0" * 16)
            except ValueError as exc:
                state.problem(f"{loc('output_name')}: field 'output_name': {exc}")
            else:
                state.output_name = value

    # -- seeds
    seeds: list[int] | None = None
    if "seeds" in data and data["seeds"] is not None:
        value = data["seeds"]
        if not isinstance(value, list):
            state.problem(
                f"{loc('seeds')}: field 'seeds': must be a list of integers, e.g. seeds: [0, 1, 2], "
                f"got {_show(value)}"
            )
        elif not value:
            state.problem(f"{loc('seeds')}: field 'seeds': the list is empty; give at least one seed or remove it")
        else:
            seeds = []
            item_lines = getattr(value, "item_lines", [])
            for i, item in enumerate(value):
                line = item_lines[i] if i < len(item_lines) else _line_of(data, "seeds", 1)
                try:
                    seeds.append(_normalise("seed", item, textual=False))
                except _Bad as exc:
                    state.problem(f"{display}:{line}: field 'seeds' (item {i + 1}): {exc}")
            if len(seeds) != len(value):
                seeds = None
                state.entry_problems += 1

    # -- defaults
    defaults: dict = {}
    if "defaults" in data and data["defaults"] is not None:
        value = data["defaults"]
        if not isinstance(value, dict):
            state.problem(
                f"{loc('defaults')}: field 'defaults': must be a mapping of job fields "
                f"(e.g. num_frames: 25), got {_show(value)}"
            )
        else:
            _report_duplicate_keys(value, display, state, "in defaults")
            defaults = _fields_from_mapping(value, display, state, where="defaults", textual=False)
            if defaults is None:
                defaults = {}
                state.entry_problems += 1
            for name in _TEXT_FIELDS:
                if name in defaults:
                    warning = count_tokens_warning(
                        defaults[name], source=f"{display}:{_line_of(value, name, 1)}", field_name=name
                    )
                    if warning:
                        state.warnings.append(warning)
            if "seed" in defaults and seeds is not None:
                state.problem(
                    f"{display}:{_line_of(value, 'seed', 1)}: field 'seed': defaults set seed and "
                    f"seeds: is given too; use one of them"
                )

    # -- jobs
    if "jobs" in data and data["jobs"] is not None:
        value = data["jobs"]
        if not isinstance(value, list):
            state.problem(
                f"{loc('jobs')}: field 'jobs': must be a list (each item a mapping of job fields or "
                f"a prompt string, written with '- '), got {_show(value)}"
            )
        else:
            item_lines = getattr(value, "item_lines", [])
            for i, item in enumerate(value):
                line = item_lines[i] if i < len(item_lines) else _line_of(data, "jobs", 1)
                source = f"{display}:{line}"
                if isinstance(item, str):
                    own = _fields_from_mapping(
                        {"prompt": item}, display, state, where="jobs", textual=False, line=line
                    )
                elif isinstance(item, dict):
                    _report_duplicate_keys(item, display, state, "in this job")
                    own = _fields_from_mapping(item, display, state, where="jobs", textual=False)
                else:
                    state.problem(
                        f"{source}: jobs item {i + 1} must be a mapping of job fields or a prompt "
                        f"string, got {_show(item)}"
                    )
                    own = None
                if own is None:
                    state.entry_problems += 1
                    continue
                _add_entries(state, source, defaults, own, seeds, line=line)

    # -- prompts_file
    if "prompts_file" in data and data["prompts_file"] is not None:
        value = data["prompts_file"]
        if not isinstance(value, str) or not value.strip():
            state.problem(
                f"{loc('prompts_file')}: field 'prompts_file': must be the path of a text file "
                f"(relative to the manifest's folder), got {_show(value)}"
            )
        else:
            ppath = state.path.parent / Path(value.strip()).expanduser()
            pdisplay = str(ppath)
            errors: list[str] = []
            ptext = _read_text(ppath, pdisplay, errors, what="prompts_file")
            if ptext is None:
                state.problems.extend(f"{loc('prompts_file')}: field 'prompts_file': {e}" for e in errors)
                state.entry_problems += 1
            else:
                before = len(state.entries) + state.entry_problems
                _load_txt(ptext, pdisplay, state, defaults=defaults, seeds=seeds)
                if len(state.entries) + state.entry_problems == before:
                    state.problem(
                        f"{loc('prompts_file')}: field 'prompts_file': {pdisplay} has no prompts "
                        f"(blank lines are skipped); add one prompt per line"
                    )


def _fields_from_mapping(
    mapping: dict, display: str, state: _State, *, where: str, textual: bool, line: int | None = None
) -> dict | None:
    """Validated job fields set by `mapping` (None values mean "not set"), or None on problems."""
    ok = True
    out: dict = {}
    for key, value in mapping.items():
        kline = line if line is not None else _line_of(mapping, key, 1)
        loc = f"{display}:{kline}"
        if key not in JOB_FIELDS:
            ok = False
            if key in TOP_LEVEL_KEYS:
                hint = f"; {key!r} is set once at the top level of the manifest, not in {where}"
            else:
                hint = _suggest(key, JOB_FIELDS)
            state.problem(f"{loc}: unknown field {_show(key)} in {where}{hint}")
            continue
        if value is None:
            continue
        try:
            out[key] = _normalise(key, value, textual=textual)
        except _Bad as exc:
            ok = False
            state.problem(f"{loc}: field '{key}': {exc}")
    return out if ok else None


def _add_entries(
    state: _State, source: str, defaults: dict, own: dict, seeds: list[int] | None, *, line: int | str
) -> None:
    fields = dict(JOB_DEFAULTS)
    fields.update(defaults)
    fields.update(own)
    if fields.get("prompt") is None:
        state.entry_problems += 1
        state.problem(f"{source}: field 'prompt': this job has no prompt; add prompt: \"...\"")
        return
    for name in _TEXT_FIELDS:
        # Only text this entry brings: long text in defaults is reported once, where it is set.
        if name in own:
            warning = count_tokens_warning(fields[name], source=source, field_name=name)
            if warning:
                state.warnings.append(warning)
    if "seed" in own or seeds is None:
        state.entries.append(Entry(fields=fields, source=source, index=0))
        return
    for index, seed in enumerate(seeds):
        state.entries.append(Entry(fields={**fields, "seed": seed}, source=source, index=index))


# --------------------------------------------------------------------------------------------
# TXT and CSV


def _load_txt(text: str, display: str, state: _State, *, defaults: dict, seeds: list[int] | None) -> None:
    # split on "\n" only: str.splitlines() would also split on \x0c, \x1c, \u2028... and shift
    # the line numbers.
    for n, line in enumerate(text.split("\n"), start=1):
        prompt = line.strip()
        if not prompt:
            continue
        source = f"{display}:line {n}"
        try:
            own = {"prompt": _normalise("prompt", prompt, textual=True)}
        except _Bad as exc:
            state.entry_problems += 1
            state.problem(f"{source}: field 'prompt': {exc}")
            continue
        _add_entries(state, source, defaults, own, seeds, line=n)


def _load_csv(text: str, state: _State) -> None:
    display = state.display
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        rows = list(reader)
    except csv.Error as exc:
        state.problem(f"{display}:row {reader.line_num}: the CSV cannot be read ({exc}); check the quotes")
        return
    if not rows or all(not any(c.strip() for c in r) for r in rows[:1]):
        state.problem(
            f"{display}:row 1: the first row must be a header naming the columns, e.g. "
            f"prompt,seed,num_frames"
        )
        return
    header = [c.strip() for c in rows[0]]
    bad_header = False
    seen: dict[str, int] = {}
    for col, name in enumerate(header, start=1):
        if not name:
            bad_header = True
            state.problem(f"{display}:row 1: column {col} has no name; name it after a job field ({', '.join(JOB_FIELDS)})")
        elif name in seen:
            bad_header = True
            state.problem(f"{display}:row 1: column '{name}' appears twice (columns {seen[name]} and {col}); keep one")
        elif name not in JOB_FIELDS:
            bad_header = True
            if name in TOP_LEVEL_KEYS:
                hint = (
                    f"; {name!r} cannot be set in a CSV manifest (only job fields are columns): "
                    f"use the command-line option or a YAML manifest"
                )
            else:
                hint = _suggest(name, JOB_FIELDS)
            state.problem(f"{display}:row 1: unknown column {name!r}{hint}")
        else:
            seen[name] = col
    if "prompt" not in header:
        bad_header = True
        state.problem(f"{display}:row 1: the header has no 'prompt' column; add one (columns: {', '.join(JOB_FIELDS)})")
    if bad_header:
        return
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        source = f"{display}:row {number}"
        if len(row) > len(header):
            state.entry_problems += 1
            state.problem(
                f"{source}: {len(row)} cells but the header has {len(header)} columns; quote "
                f"cells that contain commas (\"a, b\")"
            )
            continue
        own: dict = {}
        ok = True
        for name, cell in zip(header, row):
            cell = cell.strip()
            if cell == "":
                continue
            try:
                own[name] = _normalise(name, cell, textual=True)
            except _Bad as exc:
                ok = False
                state.problem(f"{source}: field '{name}': {exc}")
        if not ok:
            state.entry_problems += 1
            continue
        _add_entries(state, source, {}, own, None, line=number)


# --------------------------------------------------------------------------------------------
# Field validation


class _Bad(ValueError):
    """A field value problem; the message is the part after "field 'x': "."""


def _to_int(name: str, value: object, *, textual: bool) -> int:
    example = JOB_DEFAULTS[name]
    allow_float = name != "seed"  # a float seed has lost precision already
    if isinstance(value, bool):
        raise _Bad(f"must be a whole number, not the boolean {str(value).lower()}; write e.g. {example}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if allow_float and value.is_integer():
            return int(value)
        raise _Bad(f"{name} {value!r} is not a whole number; write e.g. {example}")
    if isinstance(value, str):
        s = value.strip()
        parsed: int | None = None
        try:
            parsed = int(s)
        except ValueError:
            if allow_float:
                try:
                    f = float(s)
                except ValueError:
                    pass
                else:
                    if f.is_integer():
                        parsed = int(f)
        if parsed is None:
            raise _Bad(f"{name} {_show(value)} is not a whole number; write e.g. {example}")
        if textual:
            return parsed
        raise _Bad(f"{name} is the quoted text {_show(value)}, not a number; remove the quotes")
    raise _Bad(f"must be a whole number, got {_show(value)}; write e.g. {example}")


def _to_float(name: str, value: object, *, textual: bool) -> float:
    example = JOB_DEFAULTS[name]
    if isinstance(value, bool):
        raise _Bad(f"must be a number, not the boolean {str(value).lower()}; write e.g. {example}")
    if isinstance(value, (int, float)):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value.strip())
        except ValueError:
            raise _Bad(f"{name} {_show(value)} is not a number; write e.g. {example}") from None
        if not textual:
            raise _Bad(f"{name} is the quoted text {_show(value)}, not a number; remove the quotes")
    else:
        raise _Bad(f"must be a number, got {_show(value)}; write e.g. {example}")
    if not math.isfinite(result):
        raise _Bad(f"{name} {value!r} is not a finite number; write e.g. {example}")
    return result


def _to_text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise _Bad(
            f"must be text, got {_show(value)} ({type(value).__name__}); put it in quotes"
        )
    text = value.strip()
    for pos, ch in enumerate(text):
        if ch not in "\n\t" and unicodedata.category(ch) == "Cc":
            raise _Bad(
                f"{name} contains the control character U+{ord(ch):04X} at position {pos + 1}; "
                f"remove it (only newlines and tabs are allowed: control characters break file "
                f"names and terminals)"
            )
    return text


def _nearest(n: int, step: int, minimum: int, offset: int = 0) -> tuple[int | None, int]:
    """The valid values (k*step + offset, >= minimum) just below and just above n."""
    below = ((n - offset) // step) * step + offset
    above = below + step
    if below < minimum:
        below = None
        above = max(above, minimum)
    return below, above


def _normalise(name: str, value: object, *, textual: bool):
    """Check one job field and return its normalised value; raises _Bad with a hint.

    `textual`: the value comes from CSV/TXT, where numbers are written as text.
    """
    if name in _TEXT_FIELDS:
        text = _to_text(name, value)
        if name == "prompt" and not text:
            raise _Bad("prompt is empty; write the text to render")
        return text
    if name == "guidance_scale":
        g = _to_float(name, value, textual=textual)
        if g < 1:
            raise _Bad(
                f"guidance_scale {g:g} is below 1; use a number >= 1 (1 turns classifier-free "
                f"guidance off; the default is {JOB_DEFAULTS['guidance_scale']})"
            )
        return g
    n = _to_int(name, value, textual=textual)
    if name == "num_frames":
        if n < MIN_FRAMES:
            raise _Bad(
                f"num_frames {n} is too small: Mochi needs 6k+1 frames with k >= 1; use {MIN_FRAMES} "
                f"or more (7, 13, 19, 25, ...)"
            )
        if (n - 1) % 6:
            below, above = _nearest(n, 6, MIN_FRAMES, offset=1)
            raise _Bad(
                f"num_frames {n} is not 6k+1 (diffusers would silently drop frames); "
                f"use {below} or {above}"
            )
    elif name in ("height", "width"):
        if n <= 0:
            raise _Bad(f"{name} {n} must be a positive multiple of 16; use e.g. {JOB_DEFAULTS[name]}")
        if n % 16:
            below, above = _nearest(n, 16, 16)
            use = f"{below} or {above}" if below else f"{above}"
            raise _Bad(
                f"{name} {n} is not a multiple of 16 (Mochi's transformer needs it); use {use}"
            )
    elif name == "num_inference_steps":
        if n < 2:
            raise _Bad(
                f"num_inference_steps {n} is too small: diffusers' Mochi schedule needs at least 2; "
                f"use 2 or more (default {JOB_DEFAULTS['num_inference_steps']})"
            )
    elif name == "seed":
        if not 0 <= n < SEED_LIMIT:
            raise _Bad(f"seed {n} is out of range; use a whole number from 0 to 2**64-1 ({SEED_LIMIT - 1})")
    elif name == "fps":
        if not 1 <= n <= MAX_FPS:
            raise _Bad(f"fps {n} is out of range; use a whole number from 1 to {MAX_FPS} (default {JOB_DEFAULTS['fps']})")
    return n
