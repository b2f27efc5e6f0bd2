"""Output file names: render the manifest's `output_name` template, then make it a safe file stem.

`render_output_name` fills the template; `safe_file_stem` turns whatever it produced into a name
that is valid on Linux, macOS and Windows. Two different jobs that end up with the same stem are
*not* disambiguated here: `Manifest.expand` detects that and reports it.
"""

from __future__ import annotations

import difflib
import hashlib
import string
import unicodedata

#: Placeholders an output_name template may use.
PLACEHOLDERS = ("prompt", "index", "seed", "job_id")

#: Longest stem, in bytes of UTF-8. Most file systems allow 255 bytes per name; this leaves room
#: for ".mp4" and temporary suffixes such as ".partial.mp4" / ".metadata.json".
MAX_STEM_BYTES = 200

_HASH_LEN = 8  # hex digits appended when a name is truncated

# Characters refused by Windows (and "/" everywhere); control characters are handled separately.
_FORBIDDEN = set('/\\:*?"<>|')

# Windows device names, reserved with or without an extension and in any case.
_RESERVED = (
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"COM{i}" for i in "123456789\u00b9\u00b2\u00b3"}
    | {f"LPT{i}" for i in "123456789\u00b9\u00b2\u00b3"}
)


def render_output_name(template: str, *, prompt: str, index: int, seed: int, job_id: str) -> str:
    """Fill `{prompt}`, `{index}`, `{seed}` and `{job_id}` in `template` (str.format syntax, so
    `{index:03d}` works). The result is NOT sanitised: pass it through `safe_file_stem`.

    Raises ValueError with a user-facing message for an unknown placeholder or a malformed template.
    """
    if not isinstance(template, str):
        raise ValueError(f"output_name must be text, got {type(template).__name__}")
    known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(
            f"output_name {template!r} is not a valid template ({exc}); "
            f"use placeholders {known} and write a literal brace as '{{{{' or '}}}}'"
        ) from None
    for _literal, field_name, _spec, _conversion in parsed:
        if field_name is None:
            continue
        if field_name == "" or field_name.isdigit():
            raise ValueError(
                f"output_name {template!r} has a positional placeholder '{{{field_name}}}'; "
                f"name one of {known}"
            )
        if field_name not in PLACEHOLDERS:
            base = field_name.split(".")[0].split("[")[0]
            close = difflib.get_close_matches(base, PLACEHOLDERS, n=1)
            hint = f"did you mean '{{{close[0]}}}'? " if close else ""
            raise ValueError(
                f"output_name {template!r} has an unknown placeholder '{{{field_name}}}'; "
                f"{hint}known placeholders: {known}"
            )
    try:
        return template.format(prompt=prompt, index=index, seed=seed, job_id=job_id)
    except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
        raise ValueError(
            f"output_name {template!r} cannot be rendered ({exc}); "
            f"check the format specs, e.g. '{{index:03d}}' (index and seed are integers, "
            f"prompt and job_id are text)"
        ) from None


_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _is_unsafe_char(ch: str) -> bool:
    if ch in _FORBIDDEN:
        return True
    # Cc: C0/C1 controls incl. \n \t DEL; Zl/Zp: line/paragraph separators (break terminals/listings).
    # Bidirectional controls (RLO and friends) make a name display as something else ("a\u202egnp.exe"
    # shows as "aexe.png"); ZWJ (U+200D) stays, emoji sequences need it.
    return unicodedata.category(ch) in ("Cc", "Zl", "Zp") or ch in _BIDI_CONTROLS


def _is_reserved(name: str) -> bool:
    base = name.split(".", 1)[0].rstrip(" ")
    return base.upper() in _RESERVED


def safe_file_stem(name: str) -> str:
    """Return a file stem that is safe on Linux, macOS and Windows.

    - normalised to NFC (macOS stores NFD; comparing NFC names avoids surprises);
    - `/ \\ : * ? " < > |`, control characters and line separators become `_`;
    - surrounding whitespace is stripped, trailing dots are stripped (Windows drops them) and
      leading dots become `_` (no hidden files, never "." or "..");
    - Windows device names (CON, PRN, AUX, NUL, COM1-9, LPT1-9, any case, with or without an
      extension) get a `_` after the device part: "con.txt" -> "con_.txt";
    - at most MAX_STEM_BYTES (200) bytes of UTF-8: longer names are cut on a character boundary
      and end with "-" + 8 hex digits of the sha256 of the whole sanitised name, so different
      long names stay different;
    - never empty ("_").

    Other characters (emoji, RTL scripts, accents) are kept.
    """
    text = unicodedata.normalize("NFC", str(name))
    text = "".join("_" if _is_unsafe_char(ch) else ch for ch in text)
    text = text.strip()
    text = text.rstrip(". ")
    if text.startswith("."):
        stripped = text.lstrip(".")
        text = "_" * (len(text) - len(stripped)) + stripped
    if not text:
        return "_"
    if _is_reserved(text):
        head, dot, tail = text.partition(".")
        text = head.rstrip(" ") + "_" + dot + tail
    encoded = text.encode("utf-8")
    if len(encoded) > MAX_STEM_BYTES:
        digest = hashlib.sha256(encoded).hexdigest()[:_HASH_LEN]
        room = MAX_STEM_BYTES - 1 - _HASH_LEN
        # errors="ignore" drops a multi-byte character cut in half: a character boundary.
        head = encoded[:room].decode("utf-8", errors="ignore").rstrip(" ")
        text = f"{head}-{digest}"
    return text
