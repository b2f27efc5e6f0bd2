"""Plain-text manifests (and a YAML manifest's `prompts_file`): one prompt per line, blank lines skipped."""

from __future__ import annotations

from batchgen.manifest.entries import Draft, add_entries
from batchgen.manifest.fields import FieldError, normalise


def read_txt(text: str, display: str, draft: Draft, *, defaults: dict, seeds: list[int] | None) -> None:
    """Add one entry per non-blank line of `text` to `draft`; locations are ``prompts.txt:line 4``."""
    # split on "\n" only: str.splitlines() would also split on \x0c, \x1c, \u2028... and shift
    # the line numbers.
    for n, line in enumerate(text.split("\n"), start=1):
        prompt = line.strip()
        if not prompt:
            continue
        source = f"{display}:line {n}"
        try:
            own = {"prompt": normalise("prompt", prompt, textual=True)}
        except FieldError as exc:
            draft.entry_problems += 1
            draft.problem(f"{source}: field 'prompt': {exc}")
            continue
        add_entries(draft, source, defaults, own, seeds)
