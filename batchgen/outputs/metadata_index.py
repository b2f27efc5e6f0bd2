"""OUT/metadata.jsonl: one row per finished video, `file_name` first (Hugging Face VideoFolder).

A row is appended as each job finishes (cheap), and the whole file is rewritten atomically from the
database at the start and end of every run, so a crash between the two writes heals itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from batchgen import faults
from batchgen.outputs.atomic import write_text_atomic
from batchgen.store.queue import Store

METADATA_FILE = "metadata.jsonl"


def row_line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def rebuild(out: Path, store: Store) -> int:
    rows = store.metadata_rows()
    write_text_atomic(Path(out) / METADATA_FILE, "".join(row_line(r) for r in rows))
    return len(rows)


def append(out: Path, row: dict) -> None:
    path = Path(out) / METADATA_FILE
    data = row_line(row).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            # No fsync per row: the database is the record, and every run rewrites this file from it
            # atomically (synced) at its start and end, so a row lost to a power cut comes back.
            faults.point("index_appended")
        except OSError:
            # A full disk can take half a line: cut it off, so the index stays whole JSON lines.
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass
            raise
    finally:
        os.close(fd)


def read(out: Path) -> list[dict]:
    path = Path(out) / METADATA_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
