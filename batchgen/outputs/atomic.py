"""Crash-safe file writing: temporary name, fsync, rename, fsync the folder."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from batchgen import faults

PARTIAL_SUFFIX = ".partial"


def temp_path(final: Path) -> Path:
    # Hidden and without the final extension, so a crash never leaves something that looks like a video.
    # Unique per writer, process and thread: the Ray driver writes the gallery and the index from one
    # thread per actor, and a name shared between two writers lets one's rename take the other's file.
    return final.with_name(f".{final.name}.{os.getpid()}-{threading.get_native_id()}{PARTIAL_SUFFIX}")


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def publish(tmp: Path, final: Path) -> None:
    """Move a fully written temporary file into place, durably."""
    fsync_file(tmp)
    faults.point("publish_synced")
    os.replace(tmp, final)
    fsync_dir(final.parent)


def write_text_atomic(final: Path, text: str) -> None:
    tmp = temp_path(final)
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        faults.point(f"{final.name}_synced")  # e.g. metadata.jsonl_synced: written, not yet renamed
        os.replace(tmp, final)
        fsync_dir(final.parent)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def remove_partials(folder: Path) -> int:
    """Delete temporary files that a killed run left behind; returns how many."""
    removed = 0
    if not folder.is_dir():
        return 0
    for path in folder.glob(f".*{PARTIAL_SUFFIX}"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed
