"""The rules for one job field's value, whatever the manifest format: one integer rule for every integer
field, documented bounds, and messages in the user's words (never a Python type name).

`normalise(name, value, textual=...)` returns the checked value or raises `FieldError` whose message is
the part after "field 'x': ". `textual` says the value was written as text (CSV, TXT, records from the
database), where numbers are text; in YAML a number in quotes is refused, so a typo cannot hide.
"""

from __future__ import annotations

import math
import re
import reprlib
import unicodedata
from decimal import Decimal, InvalidOperation

from batchgen.engine.families.family import Family
from batchgen.engine.families.registry import MOCHI
from batchgen.job import JOB_DEFAULTS

SEED_LIMIT = 2**64
MIN_FRAMES = MOCHI.min_frames
# Upper bounds, each with its reason (README's manifest reference lists them):
# Mochi was trained on clips of up to 163 frames; attention grows with the square of the latent frames, so
# 511 frames (85 latent frames, about three times the training length) is already far beyond any GPU's memory.
MAX_FRAMES = 511
# Mochi was trained at 480x848; memory grows with the area, and 2048 pixels a side is 10x the trained area.
MAX_SIDE = 2048
# The flow-matching scheduler has 1000 training timesteps: more steps than that only repeat timesteps.
MAX_STEPS = 1000
# An MP4 player's practical ceiling.
MAX_FPS = 240
# T5 reads 256 tokens (about 1000 characters); 10,000 characters is a pasted file, not a prompt.
MAX_TEXT_CHARS = 10_000
# A float holds every whole number up to 2**53 exactly; above it `1e19` is not the number the user wrote.
_EXACT_FLOAT = 2**53
_FAR_OUT = 10**30  # beyond every bound (the largest, seeds, is below 2**64)

# T5 (Mochi's text encoder) truncates at 256 tokens. Without a tokenizer we estimate: a prompt
# with more than 256 whitespace-separated words or more than 1000 characters probably exceeds it.
T5_MAX_TOKENS = 256
LONG_PROMPT_WORDS = 256
LONG_PROMPT_CHARS = 1000

INT_FIELDS = ("seed", "num_frames", "height", "width", "num_inference_steps", "fps")
TEXT_FIELDS = ("prompt", "negative_prompt")

# Numbers as text (CSV cells, quoted YAML): YAML 1.2 core schema's decimal forms, ASCII digits only.
_INT_TEXT = re.compile(r"[-+]?[0-9]+")
_FLOAT_TEXT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_LONGEST_NUMBER = 100  # characters; longer "numbers" are refused before Python converts them

# YAML 1.1 wrote these as numbers or booleans; YAML 1.2 (and batchgen) reads them as text.
_YAML11_HINT = (
    " (YAML 1.2 reads 1:30, 1_000, 0b101, yes/no/on/off as text; octal is 0o17, hexadecimal 0x1f)"
)

_repr = reprlib.Repr()
_repr.maxstring = 50
_repr.maxother = 50
_repr.maxlevel = 2
_repr.maxlist = _repr.maxdict = _repr.maxtuple = _repr.maxset = 4


class FieldError(ValueError):
    """A field value problem; the message is the part after "field 'x': "."""


def show(value: object) -> str:
    """The value as the user wrote it, short: never the whole of a huge (or aliased) structure."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return _repr.repr(str(value))
    if isinstance(value, dict):
        return "a mapping" if not value else f"a mapping with keys {_repr.repr(list(value)[:4])}"
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)"
    if value is None:
        return "null"
    return _repr.repr(value)


def _whole(name: str, value: float | Decimal) -> int:
    example = JOB_DEFAULTS[name]
    finite = value.is_finite() if isinstance(value, Decimal) else math.isfinite(value)
    if not finite:
        raise FieldError(f"{name} {show(value)} is not a whole number; write e.g. {example}")
    if abs(value) > _FAR_OUT:
        # Checked before int(): int(Decimal("1e999999999")) would build a billion-digit number.
        raise FieldError(f"{name} {show(value)} is far out of range; write e.g. {example}")
    if value != int(value):
        raise FieldError(f"{name} {value} is not a whole number; write e.g. {example}")
    if isinstance(value, float) and abs(value) > _EXACT_FLOAT:
        raise FieldError(
            f"{name} {value!r} is too large to be exact as a decimal number; write its digits, without "
            f"a decimal point or exponent"
        )
    return int(value)


def _parse_number_text(name: str, text: str) -> int | None:
    """A whole number written as text, or None when the text is no number at all."""
    s = text.strip()
    if len(s) > _LONGEST_NUMBER and _FLOAT_TEXT.fullmatch(s):
        raise FieldError(f"{name} has {len(s)} digits; it is far out of range")
    if _INT_TEXT.fullmatch(s):
        return int(s)
    if _FLOAT_TEXT.fullmatch(s):
        try:
            return _whole(name, Decimal(s))
        except InvalidOperation:  # pragma: no cover - the pattern only lets numbers through
            return None
    return None


def to_int(name: str, value: object, *, textual: bool) -> int:
    """The one rule for every integer field: a whole number, or a number with a zero fraction (25.0, 2.5e1)."""
    example = JOB_DEFAULTS[name]
    if isinstance(value, bool):
        raise FieldError(f"must be a whole number, not the boolean {str(value).lower()}; write e.g. {example}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return _whole(name, value)
    if isinstance(value, str):
        parsed = _parse_number_text(name, value)
        if parsed is None:
            raise FieldError(f"{name} {show(value)} is not a whole number; write e.g. {example}{_YAML11_HINT}")
        if textual:
            return parsed
        raise FieldError(f"{name} is the quoted text {show(value)}, not a number; remove the quotes")
    raise FieldError(f"must be a whole number, got {show(value)}; write e.g. {example}")


def to_float(name: str, value: object, *, textual: bool) -> float:
    example = JOB_DEFAULTS[name]
    if isinstance(value, bool):
        raise FieldError(f"must be a number, not the boolean {str(value).lower()}; write e.g. {example}")
    if isinstance(value, (int, float)):
        try:
            result = float(value)
        except OverflowError:
            raise FieldError(f"{name} {show(value)} is far out of range; write e.g. {example}") from None
    elif isinstance(value, str):
        s = value.strip()
        if len(s) > _LONGEST_NUMBER or not _FLOAT_TEXT.fullmatch(s):
            raise FieldError(f"{name} {show(value)} is not a number; write e.g. {example}{_YAML11_HINT}")
        result = float(s)
        if not textual:
            raise FieldError(f"{name} is the quoted text {show(value)}, not a number; remove the quotes")
    else:
        raise FieldError(f"must be a number, got {show(value)}; write e.g. {example}")
    if not math.isfinite(result):
        raise FieldError(f"{name} {show(value)} is not a finite number; write e.g. {example}")
    return result


def to_text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise FieldError(f"must be text, got {show(value)}; put it in quotes")
    text = value.strip()
    if len(text) > MAX_TEXT_CHARS:
        raise FieldError(
            f"{name} has {len(text)} characters, more than the limit of {MAX_TEXT_CHARS} (T5 reads only about "
            f"the first {LONG_PROMPT_CHARS}); shorten it"
        )
    for pos, ch in enumerate(text):
        if ch not in "\n\t" and unicodedata.category(ch) == "Cc":
            raise FieldError(
                f"{name} contains the control character U+{ord(ch):04X} at position {pos + 1}; "
                f"remove it (only newlines and tabs are allowed: control characters break file "
                f"names and terminals)"
            )
    return text


def to_bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    hint = " (YAML 1.2 reads yes/no/on/off as text)" if isinstance(value, str) else ""
    raise FieldError(f"must be true or false, got {show(value)}{hint}; write true or false")


def _check_frames(n: int, family: Family) -> None:
    if n > MAX_FRAMES:
        trained = " (Mochi was trained on up to 163 frames and" if family is MOCHI else " ("
        raise FieldError(
            f"num_frames {n} is above the limit of {MAX_FRAMES}{trained} memory grows with the square of the "
            f"length); use at most {MAX_FRAMES}"
        )
    problem = family.frames_problem(n)  # the family's frame rule (Mochi 6k+1, Wan 4k+1, LTX 8k+1)
    if problem:
        raise FieldError(problem)


def _check_side(name: str, n: int, family: Family) -> None:
    if n > MAX_SIDE:
        trained = "Mochi was trained at 480x848 and " if family is MOCHI else ""
        raise FieldError(
            f"{name} {n} is above the limit of {MAX_SIDE} ({trained}memory grows with the area); use at most {MAX_SIDE}"
        )
    problem = family.size_problem(name, n)
    if problem:
        raise FieldError(problem)


def _check_int(name: str, n: int, family: Family) -> None:
    if name == "num_frames":
        _check_frames(n, family)
    elif name in ("height", "width"):
        _check_side(name, n, family)
    elif name == "num_inference_steps":
        if n < 2:
            raise FieldError(
                f"num_inference_steps {n} is too small: diffusers' {family.title} schedule needs at least 2; "
                f"use 2 or more (default {family.defaults['num_inference_steps']})"
            )
        if n > MAX_STEPS:
            raise FieldError(
                f"num_inference_steps {n} is above the limit of {MAX_STEPS} (the scheduler has {MAX_STEPS} "
                f"timesteps; more only repeat them); use at most {MAX_STEPS}"
            )
    elif name == "seed":
        if not 0 <= n < SEED_LIMIT:
            raise FieldError(f"seed {n} is out of range; use a whole number from 0 to 2**64-1 ({SEED_LIMIT - 1})")
    elif name == "fps":
        if not 1 <= n <= MAX_FPS:
            raise FieldError(
                f"fps {n} is out of range; use a whole number from 1 to {MAX_FPS} (default {family.defaults['fps']})"
            )


def normalise(name: str, value: object, *, textual: bool, family: Family = MOCHI) -> str | int | float:
    """Check one job field and return its normalised value (str, int or float); raises FieldError with a hint.

    `textual`: the value comes from CSV/TXT (or a database row), where numbers are written as text.
    `family`: the model's family (with its own size multiple: registry.rules_for_model), whose frame and size
    rules and defaults apply.
    """
    if name in TEXT_FIELDS:
        text = to_text(name, value)
        if name == "prompt" and not text:
            raise FieldError("prompt is empty; write the text to render")
        return text
    if name == "guidance_scale":
        g = to_float(name, value, textual=textual)
        if g < 1:
            raise FieldError(
                f"guidance_scale {g:g} is below 1; use a number >= 1 (1 turns classifier-free "
                f"guidance off; the default is {family.defaults['guidance_scale']})"
            )
        return g
    n = to_int(name, value, textual=textual)
    _check_int(name, n, family)
    return n


def count_tokens_warning(text: str, *, source: str, field_name: str = "prompt") -> str | None:
    """A warning when `text` probably exceeds T5's 256-token limit, else None.

    This is a conservative *estimate* made without a tokenizer: more than 256 whitespace-separated
    words or more than 1000 characters. Exact counting happens later with the real tokenizer.
    """
    words = len(text.split())
    chars = len(text)
    if words <= LONG_PROMPT_WORDS and chars <= LONG_PROMPT_CHARS:
        return None
    return (
        f"{source}: field '{field_name}': {words} words / {chars} characters probably exceeds "
        f"T5's {T5_MAX_TOKENS}-token limit (estimate); the text encoder will ignore the end, "
        f"so shorten it"
    )
