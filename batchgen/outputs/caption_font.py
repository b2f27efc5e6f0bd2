"""A font that draws a caption's script: Pillow's own for Latin, then fontconfig's, then known Noto/DejaVu files.

Pillow's embedded font has no CJK, Cyrillic-beyond-basics or Arabic glyphs and draws each missing one as
the same empty box, so a Chinese prompt came out as a row of boxes. A glyph is taken as missing when the
font draws it exactly as it draws a code point no font maps (its .notdef glyph).
"""

from __future__ import annotations

import shutil
import subprocess
import unicodedata
from functools import lru_cache

# A private-use code point no font maps: what a font draws for it is its "missing glyph" box.
NOTDEF_PROBE = "\U0010fffd"
MISSING_MARK = "?"

# Where distributions put Noto CJK and DejaVu when fontconfig is not there to say.
FALLBACK_FILES = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
)
_FC_QUERY_CHARS = 64  # enough distinct characters to pick a font; keeps the command line short


def needs_glyph(ch: str) -> bool:
    """Whether `ch` should draw something visible (spaces, joiners and combining marks need not)."""
    return unicodedata.category(ch) not in ("Zs", "Zl", "Zp", "Cc", "Cf", "Mn", "Me")


def _mask_key(font, text: str) -> tuple:
    from PIL import Image

    mask = font.getmask(text)
    return mask.size, Image.Image()._new(mask).tobytes()


def has_glyph(font, ch: str) -> bool:
    """Whether `font` draws `ch` as something other than its missing-glyph box."""
    return _mask_key(font, ch) != _mask_key(font, NOTDEF_PROBE)


class CaptionFonts:
    """Picks, per caption, the first font that draws all of it (or the one that draws most, and says so)."""

    def __init__(self, size: int):
        self.size = size
        self._fonts: dict[str | None, object] = {}
        self._covered: dict[tuple[str | None, str], bool] = {}

    def fit(self, text: str) -> tuple[object, str, int]:
        """(font, text to draw, characters no font could draw). Those are drawn as '?', never as boxes."""
        wanted = sorted({ch for ch in text if needs_glyph(ch)})
        best = None
        for source in self._candidates(wanted):
            font = self._load(source)
            if font is None:
                continue
            missing = [ch for ch in wanted if not self._covers(source, font, ch)]
            if best is None or len(missing) < len(best[2]):
                best = (source, font, missing)
            if not missing:
                break
        _, font, missing = best
        if missing:
            gone = set(missing)
            text = "".join(MISSING_MARK if ch in gone else ch for ch in text)
        return font, text, len(missing)

    def _candidates(self, wanted: list[str]):
        yield None  # Pillow's embedded font: no lookup at all for Latin captions
        default = self._load(None)
        missing = [ch for ch in wanted if not self._covers(None, default, ch)]
        if not missing:
            return
        yield from fontconfig_files(tuple(missing[:_FC_QUERY_CHARS]))
        yield from FALLBACK_FILES

    def _load(self, source: str | None):
        if source not in self._fonts:
            from PIL import ImageFont

            try:
                if source is None:
                    # Pillow >= 10.1 embeds a scalable font; older ones only have a small bitmap font.
                    try:
                        font = ImageFont.load_default(size=self.size)
                    except TypeError:
                        font = ImageFont.load_default()
                else:
                    font = ImageFont.truetype(source, self.size)
            except OSError:
                font = None
            self._fonts[source] = font
        return self._fonts[source]

    def _covers(self, source: str | None, font, ch: str) -> bool:
        key = (source, ch)
        if key not in self._covered:
            self._covered[key] = has_glyph(font, ch)
        return self._covered[key]


@lru_cache(maxsize=256)
def fontconfig_files(chars: tuple[str, ...]) -> tuple[str, ...]:
    """Font files fontconfig says cover every one of `chars`, upright sans regular weights first."""
    if not chars or shutil.which("fc-list") is None:
        return ()
    charset = " ".join(f"{ord(ch):x}" for ch in chars)
    try:
        done = subprocess.run(
            ["fc-list", "--format=%{file}\n", f":charset={charset}"],
            capture_output=True, text=True, timeout=20, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ()
    files = sorted({line.strip() for line in done.stdout.splitlines() if line.strip()}, key=_preference)
    return tuple(files)


def _preference(path: str) -> tuple:
    name = path.rsplit("/", 1)[-1].lower()
    styled = any(word in name for word in ("bold", "italic", "oblique", "black", "light", "thin", "mono"))
    return (styled, "sans" not in name, "regular" not in name, name)
