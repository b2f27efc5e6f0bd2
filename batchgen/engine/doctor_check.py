"""One line of `batchgen doctor`'s report, shared by the modules that make them (doctor.py,
doctor_profiles.py, doctor_checkpoints.py)."""

from __future__ import annotations

from dataclasses import dataclass

OK, WARN, FAIL = "OK", "WARN", "FAIL"


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""
    # A FAIL that stops `batchgen render` from working at all (as opposed to working slowly or differently).
    blocking: bool = False
