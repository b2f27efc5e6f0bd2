"""Every BATCHGEN_* environment variable: its type, default and meaning, read when it is used.

Nothing is read at import time, so a test (or a library caller) that sets a variable sees it take effect,
and a bad value fails where it is used with a BatchgenError naming the variable, not at some import.

One rule for on/off variables: unset, "", 0, false, no, off mean off; 1, true, yes, on mean on (any case);
anything else is an error. `README.md`'s table of variables is checked against `VARIABLES` by
tests/test_settings.py (`python -m batchgen.settings` prints it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from batchgen.errors import BatchgenError

_ON = ("1", "true", "yes", "on")
_OFF = ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class Variable:
    name: str
    default: str  # as a user would write it; "" means unset
    doc: str


VARIABLES: tuple[Variable, ...] = (
    Variable("BATCHGEN_CPU_THREADS", "1", "threads of the `cpu` profile (a fixed count, so frames do not depend on the machine)"),
    Variable("BATCHGEN_GROUP_OFFLOAD_RESIDENT_GIB", "4", "GiB of transformer blocks `group-offload` keeps on the GPU"),
    Variable("BATCHGEN_DECODE_LATENT_FRAMES", "1", "latent frames per VAE decode chunk on GPU profiles (0: all at once)"),
    Variable("BATCHGEN_INT8_KERNEL", "dequant", "the `int8` profile's multiply: `dequant` (precision int8-bf16) or `llm-int8` (bitsandbytes, precision int8)"),
    Variable("BATCHGEN_FP8_ATTN_RECIPE", "v1", "the `fp8-attn` profile's attention: `v1` (per-head scales, K and V smoothed), `v2` (Q scaled by its RMSNorm bound) or `v2h` (v2, query/key channels in half-split order); each its own precision"),
    Variable("BATCHGEN_PRECOMPUTE_MODULATION", "", "unset: the profile decides; off: never precompute AdaLN modulation; on: also under `cpu`"),
    Variable("BATCHGEN_WRITE_BEHIND", "on", "encode each MP4 on a thread while the next job renders"),
    Variable("BATCHGEN_GALLERY_INTERVAL", "60", "seconds between gallery rewrites during batches of over 2000 jobs"),
    Variable("BATCHGEN_LEASE_SECONDS", "120", "how long a `--workers` job claim lasts without a heartbeat"),
    Variable("BATCHGEN_DEBUG", "off", "show the traceback of an unexpected error"),
    Variable("BATCHGEN_BENCH_INT8_THRESHOLD", "6.0", "benchmarks only: LLM.int8 outlier threshold of the real-size stand-in"),
    Variable("BATCHGEN_DETERMINISTIC", "off", "internal: set by `--deterministic` for the worker processes it starts"),
    Variable("BATCHGEN_FAULT", "", "tests only: `name[:n]` SIGKILLs the process the n-th time it passes crash point `name`"),
    Variable("BATCHGEN_FAULT_ONCE", "", "tests only: a path; BATCHGEN_FAULT fires in one process only (the one that creates it)"),
    Variable("BATCHGEN_FAULT_WORKER", "", "tests only: aim BATCHGEN_FAULT at the `--workers` worker of this index"),
    Variable("BATCHGEN_FAULT_HOLD", "", "tests only: a path; where BATCHGEN_FAULT fires, write the process id there and stop (sleep) instead of SIGKILL"),
)
_BY_NAME = {v.name: v for v in VARIABLES}


def _raw(name: str) -> str:
    if name not in _BY_NAME:
        raise KeyError(f"{name} is not declared in batchgen.settings.VARIABLES")
    return os.environ.get(name, "").strip()


def _bad(name: str, value: str, expected: str) -> BatchgenError:
    return BatchgenError(f"environment variable {name}={value!r}: expected {expected}")


def flag(name: str) -> bool:
    """An on/off variable under the one rule (see the module docstring); unset takes the declared default."""
    value = _raw(name) or _BY_NAME[name].default
    lowered = value.lower()
    if lowered in _ON:
        return True
    if lowered in _OFF:
        return False
    raise _bad(name, value, "on or off (1/true/yes/on, 0/false/no/off)")


def optional_flag(name: str) -> bool | None:
    """An on/off variable whose absence means "let batchgen decide": None when unset or empty."""
    return flag(name) if _raw(name) else None


def number(name: str, *, minimum: float | None = None) -> float:
    value = _raw(name) or _BY_NAME[name].default
    try:
        result = float(value)
    except ValueError:
        raise _bad(name, value, "a number") from None
    if result != result or (minimum is not None and result < minimum):
        raise _bad(name, value, f"a number of at least {minimum:g}" if minimum is not None else "a number")
    return result


def integer(name: str, *, minimum: int | None = None) -> int:
    value = _raw(name) or _BY_NAME[name].default
    try:
        result = int(value)
    except ValueError:
        raise _bad(name, value, "a whole number") from None
    if minimum is not None and result < minimum:
        raise _bad(name, value, f"a whole number of at least {minimum}")
    return result


def choice(name: str, choices: tuple[str, ...]) -> str:
    value = _raw(name) or _BY_NAME[name].default
    if value not in choices:
        raise _bad(name, value, "one of " + ", ".join(choices))
    return value


def default(name: str) -> str:
    """The declared default of a variable, as a user would write it."""
    return _BY_NAME[name].default


def text(name: str) -> str:
    """A free-form variable ("" when unset)."""
    return _raw(name) or _BY_NAME[name].default


# Typed accessors, one per variable that batchgen's own code reads.

INT8_KERNELS = ("dequant", "llm-int8")


def cpu_threads() -> int:
    return integer("BATCHGEN_CPU_THREADS", minimum=1)


def group_offload_resident_gib() -> float:
    return number("BATCHGEN_GROUP_OFFLOAD_RESIDENT_GIB", minimum=0)


def decode_latent_frames() -> int:
    return integer("BATCHGEN_DECODE_LATENT_FRAMES", minimum=0)


def int8_kernel() -> str:
    return choice("BATCHGEN_INT8_KERNEL", INT8_KERNELS)


def precompute_modulation() -> bool | None:
    return optional_flag("BATCHGEN_PRECOMPUTE_MODULATION")


def write_behind() -> bool:
    return flag("BATCHGEN_WRITE_BEHIND")


def gallery_interval() -> float:
    return number("BATCHGEN_GALLERY_INTERVAL", minimum=0)


def lease_seconds() -> float:
    # Below a second the heartbeat could not keep up: a live worker's jobs would be taken from it.
    return number("BATCHGEN_LEASE_SECONDS", minimum=1)


def debug() -> bool:
    return flag("BATCHGEN_DEBUG")


def bench_int8_threshold() -> float:
    return number("BATCHGEN_BENCH_INT8_THRESHOLD", minimum=0)


def deterministic_requested() -> bool:
    return flag("BATCHGEN_DETERMINISTIC")


def fault() -> str:
    return text("BATCHGEN_FAULT")


def fault_once() -> str:
    return text("BATCHGEN_FAULT_ONCE")


def fault_hold() -> str:
    return text("BATCHGEN_FAULT_HOLD")


def fault_worker() -> str:
    return text("BATCHGEN_FAULT_WORKER")


def markdown_table() -> str:
    """The README's table of variables."""
    rows = ["| variable | default | what it does |", "| --- | --- | --- |"]
    rows += [f"| `{v.name}` | {f'`{v.default}`' if v.default else 'unset'} | {v.doc} |" for v in VARIABLES]
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
