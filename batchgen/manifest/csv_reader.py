"""CSV manifests: a header row of job fields, one job per row; every row is read or refused, never merged.

Rows are CSV records, counted from 1 with the header as row 1 and blank rows counted, so the first data row
is row 2; the row number is the line number unless a quoted cell spans several lines, in which case
messages name the line too. A quote left open is an error naming the row where it opened (the csv module
would otherwise swallow every later row into one cell), and a row with fewer cells than the header is an
error naming the missing columns; an explicitly empty cell means "the default". A byte-order mark, CRLF line
ends and spaces after the commas are fine.
"""

from __future__ import annotations

import csv
import io

from batchgen.job import JOB_FIELDS
from batchgen.manifest.entries import TOP_LEVEL_KEYS, Draft, add_entries, suggest
from batchgen.manifest.fields import show


def _records(text: str, draft: Draft) -> list[tuple[int, int, list[str]]] | None:
    """(row number, first line, cells) for every CSV record, or None after recording a quoting problem."""
    # strict: a stray quote ("a"b) or a quote left open at the end is an error instead of a silent guess;
    # skipinitialspace: `a, "b, c"` is two cells, as a person reads it.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True, skipinitialspace=True)
    records: list[tuple[int, int, list[str]]] = []
    first_line = 1
    while True:
        row_number = len(records) + 1
        try:
            cells = next(reader)
        except StopIteration:
            return records
        except csv.Error as exc:
            where = f"{draft.display}:row {row_number}"
            if reader.line_num > first_line:
                where += f" (line {first_line})"
            if "end of data" in str(exc):
                draft.problem(
                    f"{where}: a quote opened in this row is never closed, so every later line would be read as "
                    f"part of one cell; close the quote, or double a quote that is part of the text (\"\")"
                )
            else:
                draft.problem(
                    f"{where}: the CSV cannot be read ({exc}); a cell that contains a quote must be quoted "
                    f"whole, with the quote doubled: \"say \"\"hi\"\"\""
                )
            return None
        records.append((row_number, first_line, cells))
        first_line = reader.line_num + 1


def _header(cells: list[str], draft: Draft) -> list[str] | None:
    display = draft.display
    header = [c.strip() for c in cells]
    ok = True
    seen: dict[str, int] = {}
    for col, name in enumerate(header, start=1):
        if not name:
            ok = False
            draft.problem(f"{display}:row 1: column {col} has no name; name it after a job field ({', '.join(JOB_FIELDS)})")
        elif name in seen:
            ok = False
            draft.problem(f"{display}:row 1: column '{name}' appears twice (columns {seen[name]} and {col}); keep one")
        elif name not in JOB_FIELDS:
            ok = False
            if name in TOP_LEVEL_KEYS:
                hint = (
                    f"; {name!r} cannot be set in a CSV manifest (only job fields are columns): "
                    f"use the command-line option or a YAML manifest"
                )
            else:
                hint = suggest(name, JOB_FIELDS)
            draft.problem(f"{display}:row 1: unknown column {show(name)}{hint}")
        else:
            seen[name] = col
    if "prompt" not in header:
        ok = False
        draft.problem(f"{display}:row 1: the header has no 'prompt' column; add one (columns: {', '.join(JOB_FIELDS)})")
    return header if ok else None


def _row_fields(source: str, header: list[str], row: list[str], draft: Draft) -> dict | None:
    if len(row) > len(header):
        draft.problem(
            f"{source}: {len(row)} cells but the header has {len(header)} columns; quote "
            f"cells that contain commas (\"a, b\")"
        )
        return None
    if len(row) < len(header):
        missing = ", ".join(repr(name) for name in header[len(row):])
        draft.problem(
            f"{source}: {len(row)} cell(s) but the header has {len(header)} columns: no cell for {missing}; "
            f"add the missing commas (an empty cell, as in 'a fox,,25', takes the default)"
        )
        return None
    own: dict = {}
    ok = True
    for name, cell in zip(header, row):
        cell = cell.strip()
        if cell != "":
            ok = draft.check_field(own, source, name, cell, textual=True) and ok
    return own if ok else None


def read_csv(text: str, draft: Draft) -> None:
    """Add one entry per data row of `text` to `draft`; locations are ``jobs.csv:row 3``."""
    display = draft.display
    records = _records(text, draft)
    if records is None:
        return
    if not records or not any(c.strip() for c in records[0][2]):
        draft.problem(
            f"{display}:row 1: the first row must be a header naming the columns, e.g. prompt,seed,num_frames"
        )
        return
    header = _header(records[0][2], draft)
    if header is None:
        return
    for number, first_line, row in records[1:]:
        if not any(cell.strip() for cell in row):
            continue
        source = f"{display}:row {number}"
        own = _row_fields(source if first_line == number else f"{source} (line {first_line})", header, row, draft)
        if own is None:
            draft.entry_problems += 1
            continue
        add_entries(draft, source, {}, own, None)
