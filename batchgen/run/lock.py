"""One `batchgen render` per output folder at a time, enforced with an OS lock that dies with its process."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from batchgen.errors import BatchgenError

LOCK_NAME = "batchgen.lock"


class FolderBusy(BatchgenError):
    exit_code = 3


class FolderLock:
    def __init__(self, out: Path):
        self.path = Path(out) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "FolderLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise FolderBusy(
                f"Another batchgen render is already working in {self.path.parent} ({holder}). "
                "Wait for it to finish, stop it, or use another --out; `batchgen status` shows its progress."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        self._fd = fd
        return self

    def fileno(self) -> int | None:
        """The locked descriptor: a worker process that inherits it holds the folder as long as it lives."""
        return self._fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
