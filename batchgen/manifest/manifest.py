"""The Manifest value: a batch's run-wide settings and its validated entries, expanded into `Job`s once the
precision is known (dropping exact duplicates, refusing two jobs with one file name).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from batchgen.errors import ManifestError
from batchgen.job import CHECKPOINT_FIELDS, Job
from batchgen.manifest.entries import Entry
from batchgen.outputs.naming import render_output_name, safe_file_stem


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
    # What is loaded beside the model (engine/checkpoints.py; manifest/checkpoint_keys.py reads the keys).
    variant: str | None = None
    transformer: str | None = None
    transformer_revision: str | None = None
    # The model's family (batchgen.engine.families) whose rules the entries were checked by; the jobs carry it.
    family: str = "mochi"
    # Filled by expand(): (source of the dropped duplicate, source of the entry kept).
    duplicates: list[tuple[str, str]] = field(default_factory=list)

    @property
    def checkpoint(self) -> dict:
        """The checkpoint keys that are set, as the renderer takes them."""
        return {k: getattr(self, k) for k in CHECKPOINT_FIELDS if getattr(self, k)}

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
                **self.checkpoint,
                family=self.family,
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
