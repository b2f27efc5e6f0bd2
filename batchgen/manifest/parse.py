"""Manifests: read a YAML / CSV / TXT job list (or a previous run's records) into a validated `Manifest`.

Everything is checked before anything renders, and every problem is reported at once
(`ManifestError.problems`), each message naming the file, the line (YAML, TXT) or row (CSV), the
field and a hint. The manifest package stays light (no torch / diffusers / click) so that
`batchgen validate` is fast. Each format has its reader (yaml_manifest, csv_reader, txt_reader, recorded);
the field rules are in fields, the Manifest value in manifest.

Locations in messages and in `Entry.source`:

- YAML: ``jobs.yaml:14`` -- the 1-based line of the entry (for a field: the line of its key);
- CSV: ``jobs.csv:row 3`` -- the 1-based CSV record, the header being row 1 and blank rows
  counted, so the first data row is row 2; it equals the line number unless a quoted cell spans
  several lines;
- TXT (a ``.txt`` manifest or a YAML ``prompts_file``): ``prompts.txt:line 4`` -- 1-based line.
"""

from __future__ import annotations

from pathlib import Path

from batchgen.engine.profile_registry import AUTO, PROFILES
from batchgen.errors import ManifestError
from batchgen.job import JOB_FIELDS
from batchgen.manifest.csv_reader import read_csv
from batchgen.manifest.entries import TOP_LEVEL_KEYS, Draft, Entry, read_text, suggest
from batchgen.manifest.fields import count_tokens_warning
from batchgen.manifest.manifest import Manifest
from batchgen.manifest.output_names import PLACEHOLDERS
from batchgen.manifest.recorded import load_records
from batchgen.manifest.txt_reader import read_txt
from batchgen.manifest.yaml_manifest import read_yaml

__all__ = [
    "Entry",
    "Manifest",
    "load_manifest",
    "count_tokens_warning",
    "TOP_LEVEL_KEYS",
    "JOB_FIELDS",
    "PROFILES",
    "SUPPORTED_EXTENSIONS",
    "OUTPUT_NAME_PLACEHOLDERS",
]

SUPPORTED_EXTENSIONS = (".yaml", ".yml", ".csv", ".txt", ".jsonl", ".db")
# A previous run's records (OUT/metadata.jsonl, OUT/batchgen.db): re-create that batch (batchgen.manifest.recorded).
RECORD_EXTENSIONS = (".jsonl", ".db")
# Problems listed at most: a broken 50,000-row file says what is wrong without 50,000 lines.
MAX_PROBLEMS = 100

# Kept importable from here for the CLI's help text.
OUTPUT_NAME_PLACEHOLDERS = PLACEHOLDERS


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

    Raises ManifestError listing every problem found (at most MAX_PROBLEMS, then how many more).
    """
    path = Path(path)
    draft = Draft(display=str(path), path=path, problems=_override_problems(model, profile))
    if isinstance(model, str) and model.strip():
        # Before reading: the entries follow the rules and defaults of the model's family.
        draft.model, draft.model_source = model, "--model"
    approximate_spec = _approximate_override(approximate, draft)
    suffix = path.suffix.lower()
    if suffix in RECORD_EXTENSIONS:
        load_records(draft, profile_override=profile)
    else:
        _read(draft, suffix, overrides={"model": model, "out": out, "profile": profile, "approximate": approximate_spec})
    return _finish(draft, suffix, model=model, out=out, profile=profile, approximate=approximate_spec)


def _override_problems(model: str | None, profile: str | None) -> list[str]:
    problems = []
    if model is not None and (not isinstance(model, str) or not model.strip()):
        problems.append(f"--model: the model must be a hub id, a local folder or 'tiny', got {model!r}")
    if profile is not None and profile not in PROFILES:
        problems.append(f"--profile: unknown profile {profile!r}{suggest(profile, PROFILES)}")
    return problems


def _approximate_override(approximate: str | None, draft: Draft) -> str | None:
    if approximate is None:
        return None
    from batchgen.engine import approximate as approx

    try:
        return approx.parse(approximate) or ""
    except ValueError as exc:
        draft.problem(f"--approximate: {exc}")
        return None


def _read(draft: Draft, suffix: str, *, overrides: dict) -> None:
    text = read_text(draft.path, draft.display, draft.problems, what="manifest")
    if text is None:
        _raise(draft.problems)
    if suffix not in SUPPORTED_EXTENSIONS:
        draft.problem(
            f"{draft.display}: unsupported manifest type {draft.path.suffix or '(no extension)'!r}; "
            f"use one of {', '.join(SUPPORTED_EXTENSIONS)} (YAML, CSV with a header row, "
            f"plain text with one prompt per line, or a previous run's metadata.jsonl or batchgen.db)"
        )
        _raise(draft.problems)
    if suffix in (".yaml", ".yml"):
        read_yaml(text, draft, overrides=overrides)
    elif suffix == ".csv":
        read_csv(text, draft)
    else:
        read_txt(text, draft.display, draft, defaults={}, seeds=None)


def _raise(problems: list[str]) -> None:
    if len(problems) > MAX_PROBLEMS:
        more = len(problems) - MAX_PROBLEMS
        problems = [*problems[:MAX_PROBLEMS], f"... and {more} more problem(s) like these; fix these first"]
    raise ManifestError(problems)


def _finish(draft: Draft, suffix: str, *, model, out, profile, approximate=None) -> Manifest:
    """Report what was found (or that nothing was), apply the command-line overrides, build the Manifest."""
    if not draft.entries and not draft.entry_problems and not draft.problems:
        draft.problem(
            f"{draft.display}: the manifest has no entries; add prompts"
            + (" under jobs: or in a prompts_file:" if suffix in (".yaml", ".yml") else "")
        )
    if draft.problems:
        _raise(draft.problems)
    if model is not None:
        draft.model = model
    family = draft.rules()  # the family the entries were checked by: the jobs carry it
    if draft.problems:  # a model whose family cannot be told
        _raise(draft.problems)
    if profile is not None:
        draft.profile = profile
    refused = family.profile_problem(draft.profile) if draft.profile and draft.profile != AUTO else None
    if refused:  # before anything loads: fp8-attn on a Wan model, say
        where = "--profile" if profile is not None else f"{draft.display}: field 'profile'"
        _raise([f"{where}: {refused}"])
    if approximate is not None:  # "" from --approximate none: exact, whatever the manifest says
        draft.approximate = approximate or None
    if out is not None:
        draft.out = Path(out).expanduser()
    return Manifest(
        path=draft.path,
        model=draft.model,
        revision=draft.revision,
        profile=draft.profile,
        quality=draft.quality,
        out=draft.out,
        output_name=draft.output_name,
        entries=draft.entries,
        warnings=draft.warnings,
        output_name_source=draft.output_name_source or draft.display,
        approximate=draft.approximate,
        **draft.checkpoint,
        family=family.name,
    )
