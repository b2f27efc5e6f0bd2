"""Reading OUT/batchgen.db without ever writing it: for reproduce, doctor and previous runs' records.

`Store` creates, migrates and locks rows; a reader must do none of that (a published dataset may sit on a
read-only disk, and a render may be running in the folder), so this opens the file with SQLite's
read-only mode and offers typed reads instead of SQL spread over the callers. No torch, no click.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from batchgen.errors import StoreError
from batchgen.store.queue import DB_NAME


class DatabaseMissing(StoreError):
    """There is no database file where one was expected."""


class NotBatchgenDatabase(StoreError):
    """The file exists but is not a database batchgen can read (corrupt, foreign, not SQLite)."""

    def __init__(self, path: Path, reason: str, hint: str = ""):
        # `reason` alone, for callers that name the file their own way (a manifest's problem list).
        self.reason = reason
        super().__init__(f"{path} is {reason}{hint}")


class ReadOnlyStore:
    """One read-only connection to a batchgen database; use it as a context manager or close() it."""

    def __init__(self, path: Path, conn: sqlite3.Connection):
        self.path = path
        self._conn = conn

    def __enter__(self) -> "ReadOnlyStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    def _rows(self, sql: str, args: tuple = ()) -> list[dict]:
        try:
            return [dict(r) for r in self._conn.execute(sql, args)]
        except sqlite3.DatabaseError as exc:
            raise NotBatchgenDatabase(self.path, f"not a usable batchgen database ({exc})") from exc

    def all_rows(self) -> list[dict]:
        """Every job row, in batch order."""
        return self._rows("select * from jobs order by position")

    def done_job_ids(self) -> list[str]:
        return [r["job_id"] for r in self._rows("select job_id from jobs where status='done' order by position")]

    def rows_by_prefix(self, prefix: str) -> list[dict]:
        """The rows whose job id is `prefix`, or else every row whose id starts with it."""
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        found = self._rows("select * from jobs where job_id like ? || '%' escape '\\' order by position", (escaped,))
        exact = [r for r in found if r["job_id"] == prefix]
        return exact or found

    def done_fingerprints(self) -> list[str]:
        """The fingerprint JSON texts recorded with finished jobs (jobs from before fingerprints have none)."""
        rows = self._rows("select fingerprint from jobs where status='done' and fingerprint is not null")
        return [r["fingerprint"] for r in rows]

    def remaining_count(self) -> int:
        """Jobs still to render: pending, or running (a crashed run's, which the next render takes again)."""
        return self._rows("select count(*) as n from jobs where status in ('pending', 'running')")[0]["n"]

    def done_output_paths(self, limit: int = 50) -> list[str]:
        """Up to `limit` recorded video paths (relative to OUT) of finished jobs, in batch order."""
        rows = self._rows("select output_path from jobs where status='done' and output_path is not null "
                          "order by position limit ?", (limit,))
        return [r["output_path"] for r in rows]


def database_path(out_or_db: Path) -> Path:
    """OUT/batchgen.db for an output folder, or the path itself when it names a file."""
    path = Path(out_or_db).expanduser()
    if path.is_dir() or (not path.exists() and path.suffix != ".db"):
        return path / DB_NAME
    return path


def open_readonly(out_or_db: Path, *, timeout: float = 30) -> ReadOnlyStore:
    """Open an output folder's database (or a database file) for reading only.

    Raises DatabaseMissing when there is no file, NotBatchgenDatabase when the file is not one batchgen
    wrote; both are StoreErrors (exit 2) whose message names the path."""
    path = database_path(out_or_db)
    if not path.is_file():
        folder = path.parent
        raise DatabaseMissing(f"No batchgen database at {path.absolute()}: is '{folder}' a batchgen output folder?")
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=timeout)
    except sqlite3.Error as exc:
        raise NotBatchgenDatabase(path, f"not a database SQLite can open ({exc})") from exc
    conn.row_factory = sqlite3.Row
    try:
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise NotBatchgenDatabase(path, f"not a usable batchgen database ({exc})") from exc
    if "jobs" not in tables:
        conn.close()
        raise NotBatchgenDatabase(path, "an SQLite database, but not batchgen's (no jobs table)",
                                  "; give an output folder of `batchgen render` or its batchgen.db")
    return ReadOnlyStore(path, conn)
