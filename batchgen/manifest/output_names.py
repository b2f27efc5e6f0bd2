"""The manifest's `output_name` template, checked once: placeholders `{prompt}`, `{index}`, `{seed}`,
`{job_id}` with Python format specs (`{index:03d}`, `{seed:05d}`, `{prompt:.40}` for the first 40
characters); no conversions (`{prompt!r}` would put quotes and escapes in file names); a template that ends
in `.mp4` means the same without it (batchgen adds the extension).
"""

from __future__ import annotations

import string

from batchgen.outputs.naming import PLACEHOLDERS, render_output_name

VIDEO_SUFFIX = ".mp4"
# A file name is at most 200 bytes; a template far longer than that is a mistake (and is not quoted whole).
MAX_TEMPLATE_CHARS = 1000


def check_template(template: str) -> str:
    """The template to render names with (`.mp4` dropped), or raises ValueError with a message for the user."""
    text = template.strip()
    if len(text) > MAX_TEMPLATE_CHARS:
        raise ValueError(
            f"output_name has {len(text)} characters, more than {MAX_TEMPLATE_CHARS}; file names are at most 200 "
            f"bytes, so write a short template such as \"{{prompt:.40}}-{{index}}\""
        )
    if text.lower().endswith(VIDEO_SUFFIX):
        text = text[: -len(VIDEO_SUFFIX)]
    if not text:
        raise ValueError(f"output_name {template!r} names no file; use e.g. \"{{prompt}}-{{index}}\"")
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError:
        parsed = []  # render_output_name below says what is wrong with it
    for _literal, field_name, _spec, conversion in parsed:
        if conversion:
            raise ValueError(
                f"output_name {template!r} uses the conversion '!{conversion}' in '{{{field_name}!{conversion}}}'; "
                f"write '{{{field_name}}}' (conversions add quotes and escapes to file names)"
            )
    render_output_name(text, prompt="p", index=0, seed=0, job_id="0" * 16)
    return text


__all__ = ["PLACEHOLDERS", "VIDEO_SUFFIX", "check_template"]
