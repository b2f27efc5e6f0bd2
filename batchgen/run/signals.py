"""Ctrl-C and SIGTERM: the handler only records the request; the run acts on it at safe points.

Raising from a signal handler lands wherever the main thread happens to be: inside diffusers' lazy
imports (which then fail with "interrupted by signal 15"), inside a `__del__` ("Exception ignored"), or in
SQLite bookkeeping. So the handler never raises. While a run is at work (`acting()`), the job loop calls
`check()` between denoising steps, between jobs and between phases, and puts the job in flight back.
Outside that (start-up: imports, planning, loading the pipeline) nothing has been rendered yet, so the
CLI's handler ends the process at once, quietly, with 128 + the signal number. A second signal always
ends it at once: the next run takes back whatever job was left `running`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """Ctrl-C or SIGTERM, acted on at a safe point: the job in flight went back to pending."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by signal {signum}")


def _quiet_exit(signum: int, text: str) -> None:
    # os.write, not print: a handler may run while the main thread holds sys.stderr's lock.
    try:
        os.write(2, text.encode())
    except OSError:
        pass
    os._exit(128 + signum)


class StopSignals:
    """The process's one record of a stop request (see the module docstring)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._acting = 0
        self._exit_outside_runs = False
        self._installed: dict[int, object] = {}

    def install(self, *, exit_outside_runs: bool) -> bool:
        """Take over SIGINT and SIGTERM; False where signals cannot be handled (not the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        self._exit_outside_runs = self._exit_outside_runs or exit_outside_runs
        for signum in HANDLED:
            if signum not in self._installed:
                self._installed[signum] = signal.signal(signum, self._handle)
        return True

    def uninstall(self) -> None:
        for signum, old in self._installed.items():
            signal.signal(signum, old)
        self._installed.clear()
        self._exit_outside_runs = False

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:
            _quiet_exit(signum, "\nbatchgen: stopped at once; the next run takes back the job in flight.\n")
        self.received = signum
        if self._acting == 0 and self._exit_outside_runs:
            _quiet_exit(signum, "\nbatchgen: interrupted before rendering began; nothing was lost. "
                                "Run the same command to start again.\n")

    def check(self) -> None:
        """A safe point: raise Interrupted if a stop was asked for."""
        if self.received is not None:
            raise Interrupted(self.received)

    def note_keyboard_interrupt(self) -> None:
        """Python's own KeyboardInterrupt (no handler of ours installed) counts as a request too."""
        if self.received is None:
            self.received = signal.SIGINT

    @contextlib.contextmanager
    def acting(self):
        """A region whose work calls check() at its safe points, so a first signal only records."""
        self._acting += 1
        try:
            yield self
        finally:
            self._acting -= 1

    def reset(self) -> None:
        self.received = None


STOP = StopSignals()


def install_for_cli() -> None:
    """First thing a command that renders does: from here on no signal is swallowed or shows a traceback."""
    STOP.install(exit_outside_runs=True)
