"""How a run shows its progress: `--progress auto|bars|lines|none`, shared by the batch and the steps bar.

Bars (tqdm) redraw one line with carriage returns and escape codes, which is right on a terminal and
wrong in a log file (`nohup batchgen render ... > run.log`); lines are plain text, one per event.
"""

from __future__ import annotations

import sys

MODES = ("auto", "bars", "lines", "none")


def resolve(progress: bool | str | None, stream=None) -> str:
    """'bars', 'lines' or 'none' for a --progress value; True means auto, False and None mean none.
    auto: bars when `stream` (default stderr) is a terminal, lines otherwise."""
    if progress is None or progress is False:
        return "none"
    mode = "auto" if progress is True else str(progress).lower()
    if mode not in MODES:
        raise ValueError(f"progress mode {progress!r}: choose one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    stream = sys.stderr if stream is None else stream
    try:
        return "bars" if stream.isatty() else "lines"
    except (AttributeError, ValueError):  # a closed or odd stream: plain lines are always safe
        return "lines"
