"""OUT/metadata.jsonl: one row per finished video, `file_name` first (Hugging Face VideoFolder).

A row is appended as each job finishes (cheap), and the whole file is rewritten atomically from the
database at the start and end of every run, so a crash between the two writes heals itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .files import write_text_atomic
from .store import Store

INDEX_NAME = "metadata.jsonl"


def row_line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def rebuild(out: Path, store: Store) -> int:
    rows = store.metadata_rows()
    write_text_atomic(Path(out) / INDEX_NAME, "".join(row_line(r) for r in rows))
    return len(rows)


def append(out: Path, row: dict) -> None:
    with open(Path(out) / INDEX_NAME, "a", encoding="utf-8") as handle:
        handle.write(row_line(row))
        handle.flush()
        os.fsync(handle.fileno())


def read(out: Path) -> list[dict]:
    path = Path(out) / INDEX_NAME
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
