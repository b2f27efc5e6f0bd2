"""Output that cannot be written: a full disk, a quota, a read-only mount, missing permission.

Such a failure is not the job's fault and would fail every later job the same way, so the runner
stops the batch (exit 4) instead of marking job after job failed; the job in flight goes back to
pending with the message recorded, and the same command resumes once the cause is fixed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from pathlib import Path

from batchgen.errors import BatchgenError

EXIT_CODE = 4

# errno -> (what happened, what to do); "{folder}" is the folder that could not be written.
_CAUSES = {
    errno.ENOSPC: ("the disk is full", "free some space there (or use another --out)"),
    errno.EDQUOT: ("the disk quota is exceeded", "free some space within your quota (or use another --out)"),
    errno.EROFS: ("the file system is read-only", "remount it writable (or use another --out)"),
    errno.EACCES: ("permission denied", "give this user write permission on {folder} (or use another --out)"),
    errno.EPERM: ("operation not permitted", "give this user write permission on {folder} (or use another --out)"),
}

# What SQLite says instead of an errno.
_SQLITE_MESSAGES = {
    "database or disk is full": errno.ENOSPC,
    "attempt to write a readonly database": errno.EACCES,
}


class OutputUnwritable(BatchgenError):
    """The output folder cannot take more data; the batch stopped, and the same command resumes it."""

    exit_code = EXIT_CODE


def unwritable_errno(exc: BaseException | None, out: Path | str | None = None) -> int | None:
    """The errno of a write failure that is the output's fault (not the job's), else None.

    With `out`, a permission or read-only error about a file outside it (a model file, say) is not the
    output's fault. Follows `__cause__` / `__context__`, since libraries wrap OSErrors in their own errors.
    """
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in _CAUSES:
            if out is not None and exc.errno not in (errno.ENOSPC, errno.EDQUOT) and exc.filename:
                if not _inside(exc.filename, out):
                    return None
            return exc.errno
        if isinstance(exc, sqlite3.OperationalError):
            text = str(exc).lower()
            for fragment, code in _SQLITE_MESSAGES.items():
                if fragment in text:
                    return code
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def describe(exc: BaseException, path: Path | str) -> str:
    """'Cannot write PATH: the disk is full; free some space there ... and run the same command again.'"""
    code = unwritable_errno(exc)
    filename = _filename(exc) or str(path)
    what, fix = _CAUSES.get(code, ("it could not be written", "make it writable (or use another --out)"))
    folder = str(Path(filename).parent)
    return f"Cannot write {filename}: {what}; {fix.format(folder=folder)}, then run the same command again."


def _inside(filename, out) -> bool:
    try:
        Path(os.path.abspath(filename)).relative_to(os.path.abspath(out))
        return True
    except ValueError:
        return False


def _filename(exc: BaseException | None) -> str | None:
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.filename:
            return str(exc.filename)
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


@contextlib.contextmanager
def guard(out: Path | str):
    """Turn a write failure of the output folder (creating it, locking it, the database) into OutputUnwritable."""
    try:
        yield
    except (OSError, sqlite3.Error) as exc:
        if unwritable_errno(exc, out) is None:
            raise
        raise OutputUnwritable(describe(exc, out)) from exc
