"""A previous run's records as a manifest: `batchgen render OUT/metadata.jsonl --out NEW` re-creates the
batch (same prompts, seeds, settings, model, precision and file names), so a published dataset can be
regenerated from its metadata alone.

- `metadata.jsonl` (any `.jsonl`): one row per finished video, as batchgen writes it; locations are
  ``metadata.jsonl:7`` (the line).
- `batchgen.db`: every job of the batch, whatever its status (a batch that was cut short is re-created
  whole); locations are ``batchgen.db:job <job_id>``. Opened read-only: the old folder is never touched.

Every row is checked with the manifest's own field rules. A batch renders one model at one precision, so
the rows must agree on those; a hub model is pinned to the commit the rows record, so that a revision
such as `main` that has moved since still gives the recorded weights.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath

from batchgen.engine import approximate
from batchgen.engine.families import FAMILIES, MOCHI, Family, UnknownFamily, builtin, rules_for_model
from batchgen.job import CHECKPOINT_FIELDS, JOB_FIELDS, Lora
from batchgen.manifest.entries import Draft, Entry, read_text
from batchgen.manifest.fields import FieldError, normalise, show
from batchgen.engine.profile_registry import PROFILES, kernel_hint, kernel_profile, precision as precision_of, profile_for_precision

_HUB_COMMIT = re.compile(r"[0-9a-f]{40}")


def load_records(state: Draft, *, profile_override: str | None = None) -> None:
    """Fill `state` (model, revision, profile, quality, entries) from the records at `state.path`;
    problems go to `state.problems`, each naming the file and line (or job)."""
    if state.path.suffix.lower() == ".db":
        rows = _db_rows(state)
        what = "jobs"
    else:
        rows = _jsonl_rows(state)
        what = "rows"
    if rows is None:
        return
    if not rows and not state.problems:
        state.problem(f"{state.display}: has no {what}: nothing to re-create")
        return
    runs: list[dict] = []
    for source, row, textual in rows:
        run = _entry(state, source, row, textual)
        if run is not None:
            runs.append(run)
    if not runs:
        return
    model = _agree(state, runs, "model")
    family = _agree(state, runs, "family")
    revision = _agree(state, runs, "revision")
    precision = _agree(state, runs, "precision")
    checkpoint = _agree(state, runs, "checkpoint")
    if state.problems:
        return
    state.model, state.revision = model, revision
    state.checkpoint = dict(checkpoint or ())
    state.family = family  # as recorded: a hub model not in the cache now keeps the family it rendered with
    _pin_hub_commit(state, runs, model, revision)
    if precision.endswith("+deterministic"):
        # Deterministic kernels give other frames, so they are in the job id: only --deterministic matches.
        state.warnings.append(
            f"{state.display}: the records were rendered with --deterministic; add --deterministic to render "
            "the same jobs (without it they get new ids and other frames)"
        )
        precision = precision.removesuffix("+deterministic")
    # An approximate accelerator is part of the recipe: the same one renders the same jobs again.
    state.approximate = approximate.from_precision(precision)
    exact = approximate.strip(precision)
    state.quality = exact.endswith("+quality")
    base = exact.removesuffix("+quality")
    profiles = {r["profile"] for r in runs if r["profile"]}
    if len(profiles) == 1 and next(iter(profiles)) in PROFILES:
        state.profile = next(iter(profiles))
    elif profile_for_precision(base) is not None:
        # The rows do not agree on a profile (or name none): the one the registry says renders this precision.
        state.profile = profile_for_precision(base)
    hint = kernel_hint(exact)
    if hint:
        owner = kernel_profile(exact)
        state.warnings.append(f"{state.display}: the records are at precision {precision}, {owner} now renders "
                              f"at {precision_of(owner, state.quality, approximate=state.approximate)}{hint}")
    if profile_override and profile_override in PROFILES and profile_override not in ("auto",):
        theirs = precision_of(profile_override, state.quality, approximate=state.approximate)
        if theirs != precision:
            state.warnings.append(
                f"{state.display}: --profile {profile_override} renders at precision "
                f"{theirs}, the records at {precision}: the frames (and job ids) "
                "will differ from the recorded ones"
            )


def _jsonl_rows(state: Draft) -> list[tuple[str, dict, bool]] | None:
    text = read_text(state.path, state.display, state.problems, what="metadata file")
    if text is None:
        return None
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        source = f"{state.display}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            state.entry_problems += 1
            state.problem(
                f"{source}: not valid JSON ({exc.msg} at column {exc.colno}); each line must be one metadata "
                "row as batchgen writes it"
            )
            continue
        if not isinstance(row, dict):
            state.entry_problems += 1
            state.problem(f"{source}: a metadata row must be a JSON object, got {type(row).__name__}")
            continue
        rows.append((source, row, False))
    return rows


def _db_rows(state: Draft) -> list[tuple[str, dict, bool]] | None:
    # Only for a database given as the manifest: the store package brings sqlite-utils, which imports click.
    from batchgen.store.readonly import DatabaseMissing, NotBatchgenDatabase, open_readonly

    path = state.path
    try:
        with open_readonly(path) as store:
            rows = store.all_rows()
    except DatabaseMissing:
        state.problem(f"{state.display}: database not found (looked for {path.expanduser().absolute()})")
        return None
    except NotBatchgenDatabase as exc:
        state.problem(f"{state.display}: {exc.reason}; give OUT/batchgen.db or OUT/metadata.jsonl")
        return None
    result = []
    for row in rows:
        if row.get("metadata"):
            try:
                recorded = json.loads(row["metadata"])
            except ValueError:
                recorded = {}
            row.setdefault("resolved_revision", recorded.get("resolved_revision"))
            row["resolved_revision"] = row["resolved_revision"] or recorded.get("resolved_revision")
        row["file_name"] = f"{row['output_name']}.mp4" if row.get("output_name") else None
        result.append((f"{state.display}:job {row.get('job_id')}", row, True))
    return result


def _entry(state: Draft, source: str, row: dict, textual: bool) -> dict | None:
    """Check one recorded row; add its Entry to `state` and return what the rows must agree on."""
    fields: dict = {}
    ok = True
    for name in (*JOB_FIELDS, "model", "precision", "file_name"):
        if name not in row or (row[name] is None and name != "negative_prompt"):
            state.problem(f"{source}: field '{name}' is missing; a recorded row names every setting of its job")
            ok = False
    if not ok:
        state.entry_problems += 1
        return None
    family = _row_family(state, source, row)
    for name in JOB_FIELDS:
        value = row[name]
        if name == "negative_prompt" and value is None:
            value = ""
        try:
            fields[name] = normalise(name, value, textual=textual, family=family or MOCHI)
        except FieldError as exc:
            state.problem(f"{source}: field '{name}': {exc}")
            ok = False
    stem = PurePosixPath(str(row["file_name"])).name
    stem = stem[: -len(".mp4")] if stem.lower().endswith(".mp4") else stem
    if not stem:
        state.problem(f"{source}: field 'file_name': {show(row['file_name'])} names no file")
        ok = False
    for name in ("model", "precision"):
        if not isinstance(row[name], str) or not row[name].strip():
            state.problem(f"{source}: field '{name}': must be text, got {show(row[name])}")
            ok = False
    if not ok or family is None:
        state.entry_problems += 1
        return None
    loras = _recorded_loras(row)
    if loras:
        fields["loras"] = loras
    state.entries.append(Entry(fields=fields, source=source, index=int(row.get("idx") or 0), output_name=stem))
    return {
        "checkpoint": _recorded_checkpoint(row),
        "source": source,
        "model": row["model"],
        "family": family.name,
        "revision": row.get("revision"),
        "precision": row["precision"],
        "profile": row.get("profile"),
        "resolved_revision": row.get("resolved_revision"),
    }


def _recorded_loras(row: dict) -> tuple:
    """A row's LoRAs: a list in metadata.jsonl, JSON text in the database."""
    value = row.get("loras")
    if isinstance(value, str):
        value = json.loads(value)
    return tuple(Lora.from_dict(d) for d in value or ())


def _recorded_checkpoint(row: dict) -> tuple:
    """What the row loaded beside the model, as (key, value) pairs the rows must agree on."""
    values = json.loads(row["checkpoint"]) if isinstance(row.get("checkpoint"), str) else {}
    for key in CHECKPOINT_FIELDS:
        if row.get(key):
            values[key] = row[key]
    return tuple(sorted(values.items()))
def _row_family(state: Draft, source: str, row: dict) -> Family | None:
    """The family whose rules the row's fields follow: the one it records (rows of Mochi jobs record none),
    checked against what its model says it is; None (the problem recorded) when they disagree."""
    model = row["model"] if isinstance(row["model"], str) else ""
    recorded = row.get("family") if row.get("family") is not None else MOCHI.name
    if not isinstance(recorded, str) or recorded not in FAMILIES:
        state.problem(f"{source}: field 'family': unknown model family {show(recorded)}; known: {', '.join(FAMILIES)}")
        return None
    try:
        return rules_for_model(model, recorded)
    except UnknownFamily as exc:
        state.problem(f"{source}: field 'family': {exc}")
        return None


def _agree(state: Draft, runs: list[dict], key: str):
    first = runs[0]
    for run in runs[1:]:
        if run[key] != first[key]:
            state.problem(
                f"{state.display}: the rows disagree on '{key}': {first[key]!r} at {first['source']} but "
                f"{run[key]!r} at {run['source']}; a batch renders one model at one precision, so split the "
                "records by model, revision and precision"
            )
            return None
    return first[key]


def _pin_hub_commit(state: Draft, runs: list[dict], model: str, revision: str | None) -> None:
    """Render a hub model from the commit the rows record, not from wherever `revision` points today."""
    commits = {r["resolved_revision"] for r in runs if r["resolved_revision"] and _HUB_COMMIT.fullmatch(r["resolved_revision"])}
    if not commits or builtin(model) is not None or Path(model).expanduser().is_dir():
        return
    if len(commits) > 1:
        first = runs[0]
        other = next(r for r in runs if r["resolved_revision"] != first["resolved_revision"])
        state.problem(
            f"{state.display}: the rows were rendered from different commits of {model}: "
            f"{first['resolved_revision']} at {first['source']}, {other['resolved_revision']} at {other['source']}; "
            "split the records by commit"
        )
        return
    commit = next(iter(commits))
    if revision != commit:
        state.revision = commit
        state.warnings.append(
            f"{state.display}: rows name revision {revision or 'main'!r} of {model}, rendered from commit {commit}: "
            "rendering from that commit so the weights are the recorded ones (the job ids follow the revision)"
        )
