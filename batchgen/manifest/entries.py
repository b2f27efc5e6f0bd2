"""What every manifest reader builds: `Entry`s (one validated entry each) gathered in a `Draft` with the
run-wide settings, the problems and the warnings; and the helpers all readers share (reading a file as
UTF-8, suggesting a close name, turning one entry's fields into entries, one per seed).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from batchgen.engine.families import MOCHI, Family, UnknownFamily, rules_for_model
from batchgen.job import JOB_DEFAULTS
from batchgen.manifest.fields import TEXT_FIELDS, FieldError, count_tokens_warning, normalise

DEFAULT_MODEL = "tiny"
DEFAULT_PROFILE = "auto"
DEFAULT_OUTPUT_NAME = "{job_id}"

#: Keys allowed at the top level of a YAML manifest (set once per batch, never per job).
TOP_LEVEL_KEYS = (
    "model",
    "family",
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
    "variant",
    "transformer",
    "transformer_revision",
    "loras",
)


@dataclass(frozen=True)
class Entry:
    """One validated manifest entry, before the run's precision is known."""

    fields: dict  # every key of JOB_FIELDS, defaults applied, types normalised (int/float/str)
    source: str  # "jobs.yaml:12", "jobs.csv:row 3", "prompts.txt:line 4"
    index: int  # position in `seeds:` (0 when the entry gave its own seed or there is no list)
    # A file stem given as is, bypassing the output_name template: a re-created batch keeps the recorded names.
    output_name: str | None = None


@dataclass
class Draft:
    """A manifest being read: every reader fills it, `load_manifest` turns it into a Manifest."""

    display: str
    path: Path
    problems: list[str]
    model: str = DEFAULT_MODEL
    # Where the model was named ("jobs.yaml:2", "--model"), for the message when its family cannot be told.
    model_source: str = ""
    # The manifest's `family:` (or the records'): decides only for a hub id not in the local cache.
    family: str | None = None
    revision: str | None = None
    profile: str = DEFAULT_PROFILE
    quality: bool = False
    approximate: str | None = None
    out: Path | None = None
    output_name: str = DEFAULT_OUTPUT_NAME
    output_name_source: str = ""
    checkpoint: dict = field(default_factory=dict)  # variant / transformer / transformer_revision as set
    entries: list[Entry] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    entry_problems: int = 0  # entries refused (so "no entries" is not reported on top)
    _rules: tuple = ()  # ((model, family), Family): rules() of the model as last asked

    def problem(self, msg: str) -> None:
        self.problems.append(msg)

    def rules(self) -> Family:
        """The family whose frame/size rules and defaults the entries follow: the model's (its own size
        multiple included). A model whose family cannot be told is reported once; Mochi's rules stand."""
        key = (self.model, self.family)
        if self._rules and self._rules[0] == key:
            return self._rules[1]
        try:
            found = rules_for_model(self.model, self.family)
        except UnknownFamily as exc:
            self.problem(f"{self.model_source or self.display}: field 'model': {exc}")
            found = MOCHI
        self._rules = (key, found)
        return found

    def check_field(self, into: dict, loc: str, name: str, value: object, *, textual: bool) -> bool:
        """Put the checked value of field `name` in `into`; False (the problem recorded at `loc`) if it is refused."""
        try:
            into[name] = normalise(name, value, textual=textual, family=self.rules())
        except FieldError as exc:
            self.problem(f"{loc}: field '{name}': {exc}")
            return False
        return True


def read_text(path: Path, display: str, problems: list[str], *, what: str) -> str | None:
    """The file as text (a UTF-8 byte-order mark dropped), or None after recording why it cannot be read."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        problems.append(f"{display}: {what} not found (looked for {absolute(path)})")
        return None
    except IsADirectoryError:
        problems.append(f"{display}: {what} is a folder, not a file ({absolute(path)})")
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


def absolute(path: Path) -> str:
    try:
        return str(path.expanduser().absolute())
    except OSError:
        return str(path)


def suggest(word: object, known) -> str:
    if isinstance(word, str):
        close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
        if close:
            return f"; did you mean {close[0]!r}?"
    return f"; known: {', '.join(known)}"


def add_entries(draft: Draft, source: str, defaults: dict, own: dict, seeds: list[int] | None) -> None:
    """Add the entry whose own fields are `own` over `defaults`: one per seed of `seeds` unless it gives its own."""
    fields = dict(JOB_DEFAULTS)
    fields.update(draft.rules().defaults)  # a Wan job not setting num_frames gets Wan's 81, not Mochi's 19
    fields.update(defaults)
    fields.update(own)
    if fields.get("prompt") is None:
        draft.entry_problems += 1
        draft.problem(f"{source}: field 'prompt': this job has no prompt; add prompt: \"...\"")
        return
    for name in TEXT_FIELDS:
        # Only text this entry brings: long text in defaults is reported once, where it is set.
        if name in own:
            warning = count_tokens_warning(fields[name], source=source, field_name=name)
            if warning:
                draft.warnings.append(warning)
    if "seed" in own or seeds is None:
        draft.entries.append(Entry(fields=fields, source=source, index=0))
        return
    for index, seed in enumerate(seeds):
        draft.entries.append(Entry(fields={**fields, "seed": seed}, source=source, index=index))
