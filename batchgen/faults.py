"""Named crash points for the fault-injection tests.

`BATCHGEN_FAULT=name[:n]` makes the process SIGKILL itself the n-th time (default first) it passes the
point `name`, so tests can prove that a kill at exactly that moment loses nothing. Unset, it costs a
dictionary lookup. With BATCHGEN_FAULT_HOLD=path the process instead writes its id to `path` and stops
there until something kills it: a job held in flight while a test removes a node or kills a driver.
"""

from __future__ import annotations

import os
import signal
import time

from batchgen import settings

_counts: dict[str, int] = {}


def point(name: str) -> None:
    spec = settings.fault()
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] != int(nth or 1):
        return
    # BATCHGEN_FAULT_ONCE=path: fire in one process only, even across restarts (Ray restarts actors).
    once = settings.fault_once()
    if once:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    hold = settings.fault_hold()
    if hold:
        with open(f"{hold}.partial", "w") as handle:
            handle.write(str(os.getpid()))
        os.replace(f"{hold}.partial", hold)  # whole when a test sees it
        while True:
            time.sleep(3600)
    os.kill(os.getpid(), signal.SIGKILL)
