"""Contact sheets: the first, middle and last frame of every finished video, with its prompt and seed."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from batchgen.errors import BatchgenError
from batchgen.outputs.caption_font import CaptionFonts
from batchgen.outputs.atomic import publish, temp_path

SHEET_NAME = "contact_sheet.png"
# One PNG holds at most this many videos; more go to contact_sheet-002.png, ... so that a sheet of a
# 10,000-video batch never needs gigabytes of memory or a viewer that can open a 2-million-pixel-tall image.
PER_PAGE = 200
THUMB_WIDTH = 256
_PAD = 8
_CAPTION_LINES = 2
_PROMPT_CHARS = 90


class SheetError(BatchgenError):
    """Nothing to put on a sheet, or a video that cannot be read."""


@dataclass(frozen=True)
class Entry:
    path: Path
    prompt: str
    seed: str
    num_frames: int | None


def pick_frames(count: int) -> list[int]:
    """Indices of the first, middle and last frame (fewer when the video is shorter than three)."""
    if count <= 0:
        return []
    return sorted({0, (count - 1) // 2, count - 1})


def read_frames(path: Path, wanted: list[int]) -> list[np.ndarray]:
    """Decode `path` once, keeping only the frames in `wanted` (and the last one seen, for short files)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        meta = next(reader)
        width, height = meta["size"]
        keep: dict[int, np.ndarray] = {}
        last = None
        n = -1
        for n, raw in enumerate(reader):
            if n in wanted:
                keep[n] = np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)
            last = raw
    finally:
        reader.close()
    if n < 0:
        raise SheetError(f"{path} has no frames: is it a complete video? (`batchgen verify` checks every file)")
    # A file shorter than the database says (it should never be) still shows its real last frame.
    if max(wanted) not in keep and last is not None:
        keep[max(wanted)] = np.frombuffer(last, dtype=np.uint8).reshape(height, width, 3)
    return [keep[i] for i in sorted(keep)]


def entries_from_store(out: Path, store) -> list[Entry]:
    return [
        Entry(Path(out) / row["output_path"], row["prompt"], str(row["seed"]), row["num_frames"])
        for row in store.rows("done")
        if row["output_path"]
    ]


def _truncate(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def _wrap(draw, text: str, font, width: int, lines: int) -> list[str]:
    def fits(candidate: str) -> bool:
        return draw.textlength(candidate, font=font) <= width

    out: list[str] = []
    line = ""
    for word in text.split(" "):
        sep = " " if line else ""
        if fits(line + sep + word):
            line += sep + word
        elif fits(word):
            out.append(line)
            line = word
        else:
            # Wider than a line (Chinese and Japanese write no spaces): cut between characters.
            line += sep
            for ch in word:
                if fits(line + ch) or not line.strip():
                    line += ch
                else:
                    out.append(line.rstrip())
                    line = ch
    out.append(line)
    if len(out) > lines:
        out = out[:lines]
        out[-1] = out[-1].rstrip(".\u2026 ") + "\u2026"
    return out


def caption(entry: Entry, fonts: CaptionFonts):
    """(font, caption text) for one video; characters no installed font draws become '?' with a note."""
    text = f"seed {entry.seed} \u00b7 {_truncate(entry.prompt, _PROMPT_CHARS)}"
    font, text, missing = fonts.fit(text)
    if missing:
        text = f"(no installed font draws {missing} of its characters, shown as ?) {text}"
    return font, text


def render_sheet(entries: list[Entry], *, columns: int = 1, thumb_width: int = THUMB_WIDTH):
    """One PIL image: `columns` videos side by side, each three frames wide with a caption below."""
    from PIL import Image, ImageDraw

    if columns < 1:
        raise SheetError(f"--columns must be at least 1, got {columns}")
    fonts = CaptionFonts(13)
    line_h = 17
    cells = []
    for entry in entries:
        frames = read_frames(entry.path, pick_frames(entry.num_frames or _count(entry.path)))
        h, w = frames[0].shape[:2]
        thumb_h = max(1, round(thumb_width * h / w))
        # Tiny videos are scaled up without smoothing so their pixels stay readable.
        resample = Image.NEAREST if w < thumb_width // 2 else Image.BILINEAR
        thumbs = [Image.fromarray(f).resize((thumb_width, thumb_h), resample) for f in frames]
        cells.append((entry, thumbs, thumb_h))
    cell_w = 3 * thumb_width + 2 * _PAD
    caption_h = _CAPTION_LINES * line_h + _PAD
    rows = [cells[i : i + columns] for i in range(0, len(cells), columns)]
    row_heights = [max(c[2] for c in row) + caption_h for row in rows]
    width = columns * cell_w + (columns + 1) * _PAD
    height = sum(row_heights) + (len(rows) + 1) * _PAD
    sheet = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    y = _PAD
    for row, row_h in zip(rows, row_heights):
        for col, (entry, thumbs, thumb_h) in enumerate(row):
            x = _PAD + col * (cell_w + _PAD)
            for k, thumb in enumerate(thumbs):
                sheet.paste(thumb, (x + k * (thumb_width + _PAD), y))
            font, text = caption(entry, fonts)
            for n, line in enumerate(_wrap(draw, text, font, cell_w, _CAPTION_LINES)):
                draw.text((x, y + thumb_h + 4 + n * line_h), line, fill=(235, 235, 230), font=font)
        y += row_h + _PAD
    return sheet


def _count(path: Path) -> int:
    import imageio_ffmpeg

    return imageio_ffmpeg.count_frames_and_secs(str(path))[0]


def page_paths(output: Path, pages: int) -> list[Path]:
    if pages <= 1:
        return [output]
    return [output.with_name(f"{output.stem}-{n:03d}{output.suffix}") for n in range(1, pages + 1)]


def write_sheets(
    out: Path,
    store,
    *,
    output: Path | None = None,
    columns: int = 1,
    per_page: int = PER_PAGE,
    thumb_width: int = THUMB_WIDTH,
) -> list[Path]:
    """Write the contact sheet(s) of OUT's finished videos; returns the PNG paths, in order."""
    out = Path(out)
    entries = entries_from_store(out, store)
    if not entries:
        raise SheetError(f"{out} has no finished videos yet: nothing to put on a contact sheet.")
    missing = [e.path for e in entries if not e.path.exists()]
    if missing:
        raise SheetError(
            f"{len(missing)} finished video(s) are missing from {out}, e.g. {missing[0]}. "
            "Run `batchgen verify` to see which, and render again to restore them."
        )
    output = Path(output) if output else out / SHEET_NAME
    if output.suffix.lower() != ".png":
        raise SheetError(f"--output {output}: a contact sheet is a PNG; give a name ending in .png")
    output.parent.mkdir(parents=True, exist_ok=True)
    chunks = [entries[i : i + per_page] for i in range(0, len(entries), per_page)]
    paths = page_paths(output, len(chunks))
    for chunk, path in zip(chunks, paths):
        image = render_sheet(chunk, columns=columns, thumb_width=thumb_width)
        tmp = temp_path(path)
        try:
            image.save(tmp, format="PNG", optimize=False)
            publish(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return paths
