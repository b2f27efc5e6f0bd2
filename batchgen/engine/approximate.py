"""Opt-in approximate accelerators from diffusers: faster, and other frames than the exact render.

Off unless a manifest says `approximate: NAME` (or `--approximate NAME`). Each one changes pixels, so it
becomes part of the job's precision (`bf16+pab`, `bf16+fbc0.05`): its jobs get ids of their own, their
records say what made them, and `batchgen reproduce` turns the same accelerator on again.

| name                        | what diffusers does                                                  |
|-----------------------------|----------------------------------------------------------------------|
| `first-block-cache[:T]`     | runs block 0; when its residual changed by less than T (default 0.05) since the last full step, reuses the other blocks' cached residual |
| `pab`                       | pyramid attention broadcast: between timesteps 100 and 800 each block's attention output is reused every other step |

FasterCache is left out: it drops the unconditional half of the CFG batch on some steps, which neither
batchgen's precomputed modulation (batch-2 tables) nor its frame hashes are built for.

Only option parsing and checking live here (no torch: manifest/ uses them); turning an accelerator on is
approximate_hooks.py's.
"""

from __future__ import annotations

import re

from batchgen.engine.profile_registry import names as _profiles_where

NAMES = ("first-block-cache", "pab")
# The cache hooks wrap block and attention forwards: compiled blocks (fast) would trace them, and the
# streaming hooks of group-offload/offload move weights around the very calls they skip. Each profile's
# declaration says (profile_registry.Profile.allows_approximate).
PROFILES_ALLOWED = _profiles_where(allows_approximate=True)
DEFAULT_FBC_THRESHOLD = 0.05

_SPEC = re.compile(r"^(?:fbc(?P<t>\d+(?:\.\d+)?)|pab)$")


def parse(value: object) -> str | None:
    """A user's `approximate:` value to its canonical spec ("fbc0.05", "pab"), or None for none.
    Raises ValueError with a message that lists what is accepted."""
    if value is None or value is False:
        return None
    if not isinstance(value, str):
        raise ValueError(f"must be one of {', '.join(NAMES)} (or none), got {value!r}")
    text = value.strip().lower()
    if text in ("", "none", "off", "exact"):
        return None
    name, _, arg = text.partition(":")
    if name == "pab" and not arg:
        return "pab"
    if name == "first-block-cache":
        if not arg:
            return f"fbc{_fixed(DEFAULT_FBC_THRESHOLD)}"
        try:
            threshold = float(arg)
        except ValueError:
            threshold = -1.0
        # Written out in fixed point (never 1e-05), so the spec in the precision parses back.
        if 0 < threshold < 1 and float(_fixed(threshold)) > 0:
            return f"fbc{_fixed(threshold)}"
        raise ValueError(f"first-block-cache:THRESHOLD needs a threshold between 0.000001 and 1 (e.g. 0.05), got {arg!r}")
    raise ValueError(f"unknown accelerator {value!r}: choose one of {', '.join(NAMES)} "
                     "(first-block-cache takes an optional threshold: first-block-cache:0.1), or none")


def _fixed(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".")


def suffix(spec: str | None) -> str:
    return f"+{spec}" if spec else ""


def from_precision(precision: str) -> str | None:
    """The accelerator a recorded precision was rendered with (None: exact)."""
    for part in precision.split("+")[1:]:
        if _SPEC.match(part):
            return part
    return None


def strip(precision: str) -> str:
    spec = from_precision(precision)
    return precision.replace(suffix(spec), "") if spec else precision


def check_profile(spec: str | None, profile: str) -> str | None:
    """None when `spec` can run under `profile`, else why not."""
    if spec and profile not in PROFILES_ALLOWED:
        return (f"approximate accelerators run with profiles {', '.join(PROFILES_ALLOWED)}, not '{profile}' "
                "(its compiled or streamed blocks would fight the cache hooks)")
    return None


def describe(spec: str | None) -> str:
    if not spec:
        return "exact"
    if spec == "pab":
        return "pyramid attention broadcast"
    return f"first-block cache (threshold {spec[3:]})"
