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
    errno.EIO: ("the disk reported an I/O error", "check its free space and health (or use another --out)"),
}

# SQLite reports a disk that filled while it grew its write-ahead log as an I/O error: below this much
# free space that is what it is.
NEARLY_FULL = 1 << 20

# What SQLite says instead of an errno.
_SQLITE_MESSAGES = {
    "database or disk is full": errno.ENOSPC,
    "attempt to write a readonly database": errno.EACCES,
    "disk i/o error": errno.EIO,
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
    if code == errno.EIO and _free_bytes(filename) < NEARLY_FULL:
        code = errno.ENOSPC
    what, fix = _CAUSES.get(code, ("it could not be written", "make it writable (or use another --out)"))
    folder = str(Path(filename).parent)
    return f"Cannot write {filename}: {what}; {fix.format(folder=folder)}, then run the same command again."


def _free_bytes(path: str) -> int:
    for candidate in [Path(path), *Path(path).parents]:
        try:
            st = os.statvfs(candidate)
            return st.f_bavail * st.f_frsize
        except OSError:
            continue
    return NEARLY_FULL


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


# Kernel views, not storage: a batch written there would vanish or fail in odd ways.
_PSEUDO_FILESYSTEMS = {"proc", "sysfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs", "bpf"}


def make_output_folder(out: Path | str, fstype_of=None) -> None:
    """Create OUT, or refuse (exit 2, naming --out) a path that cannot be a folder; a full or read-only disk
    is OutputUnwritable (exit 4) as everywhere else."""
    out = Path(out)
    blocker = next((p for p in [out, *out.parents] if p.exists() or p.is_symlink()), None)
    if blocker is not None and not blocker.is_dir():
        raise BatchgenError(f"--out {out}: {blocker} is a file, not a folder. Give --out a folder path.")
    fstype = (fstype_of or filesystem_type)(blocker or Path("/"))
    if fstype in _PSEUDO_FILESYSTEMS:
        raise BatchgenError(f"--out {out}: {blocker} is on the kernel's {fstype} file system, which holds no "
                            "files of yours. Give --out a folder on a disk.")
    try:
        with guard(out):
            out.mkdir(parents=True, exist_ok=True)
    except (NotADirectoryError, FileNotFoundError, FileExistsError) as exc:
        raise BatchgenError(f"--out {out}: cannot create this folder ({exc.strerror}). Give --out a folder path.") from exc


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem holding `path`, from /proc/mounts (Linux); None where unknown."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best, fstype = "", None
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1].replace("\\040", " ")
        if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
            best, fstype = mount, parts[2]
    return fstype


class SpaceReserve:
    """A little room kept free in OUT for the run's last bookkeeping: when the disk fills, the reserve is
    given up so the database (on the same disk) can still send the job in flight back to the queue and
    close the run, instead of leaving it `running`."""

    NAME = "space-reserve"
    SIZE = 512 * 1024

    def __init__(self, out: Path | str):
        self.path = Path(out) / "cache" / self.NAME

    def claim(self) -> None:
        """Make sure the reserve is there; a disk too full to hold it stops the run before it starts."""
        try:
            if self.path.stat().st_size == self.SIZE:
                return
        except FileNotFoundError:
            pass
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "wb") as f:
                f.write(b"\0" * self.SIZE)
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            self.release()
            raise

    def release(self) -> None:
        self.path.unlink(missing_ok=True)
