from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from batchgen.outputs import caption_font
from batchgen.outputs import sheet as sheet_module
from batchgen.cli.app import cli
from fakerun import FRAMES, frames_for, make_run


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_pick_frames():
    assert sheet_module.pick_frames(163) == [0, 81, 162]
    assert sheet_module.pick_frames(7) == [0, 3, 6]
    assert sheet_module.pick_frames(2) == [0, 1]
    assert sheet_module.pick_frames(1) == [0]


def test_sheet_shows_first_middle_and_last_frame_of_every_video(tmp_path):
    out = tmp_path / "out"
    store = make_run(out, [{"prompt": "a red fox", "seed": 1}, {"prompt": "waves", "seed": 2},
                           {"prompt": "broken", "status": "failed"}])
    store.close()
    result = run("sheet", out, "--thumb-width", "48")
    assert result.exit_code == 0, result.output
    path = out / "contact_sheet.png"
    assert result.output.strip() == str(path)
    image = Image.open(path).convert("RGB")
    pad, thumb_h = 8, 32
    cell_w = 3 * 48 + 2 * pad
    caption_h = 2 * 17 + pad
    assert image.size == (cell_w + 2 * pad, 2 * (thumb_h + caption_h) + 3 * pad)
    # Row r, frame k: the green channel ramps with the frame index in fakerun's clips.
    for r in range(2):
        expected = frames_for(r)
        y = pad + r * (thumb_h + caption_h + pad) + thumb_h // 2
        for k, f in enumerate([0, FRAMES // 2, FRAMES - 1]):
            x = pad + k * (48 + pad) + 36  # right half: no blue stripe
            got = image.getpixel((x, y))
            want = expected[f, 16, 36]
            assert all(abs(int(a) - int(b)) <= 12 for a, b in zip(got, want)), (r, k, got, want)


def test_columns_and_pages(tmp_path, monkeypatch):
    out = tmp_path / "out"
    store = make_run(out, [{"prompt": f"p{i}", "seed": i} for i in range(5)])
    paths = sheet_module.write_sheets(out, store, output=tmp_path / "s.png", columns=2, per_page=4, thumb_width=32)
    store.close()
    assert [p.name for p in paths] == ["s-001.png", "s-002.png"]
    first, second = (Image.open(p) for p in paths)
    assert first.size[0] == 2 * (3 * 32 + 16) + 3 * 8
    assert first.size[1] > second.size[1]  # 2 rows of 2 videos, then 1 row of 1


def test_sheet_errors_are_one_line(tmp_path):
    out = tmp_path / "out"
    store = make_run(out, [{"prompt": "x", "status": "failed"}])
    store.close()
    result = run("sheet", out)
    assert result.exit_code == 2 and "no finished videos" in result.output
    result = run("sheet", tmp_path / "nowhere")
    assert result.exit_code == 2 and "No batchgen database" in result.output
    out2 = tmp_path / "out2"
    store = make_run(out2, [{"prompt": "x"}])
    store.close()
    result = run("sheet", out2, "--output", tmp_path / "s.jpg")
    assert result.exit_code == 2 and "PNG" in result.output
    next((out2 / "videos").iterdir()).unlink()
    result = run("sheet", out2)
    assert result.exit_code == 2 and "missing" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("columns", ["0", "-1"])
def test_bad_columns(tmp_path, columns):
    result = run("sheet", tmp_path, "--columns", columns)
    assert result.exit_code == 2 and "columns" in result.output


# --- captions in every script -----------------------------------------------------------------------

CJK_FALLBACK = ["\u4e00\u53ea\u732b\u5728\u96ea\u91cc", "\u4e24\u6761\u72d7\u5728\u6d77\u8fb9"]


def cjk_prompts(n: int = 2) -> list[str]:
    """Two Chinese prompts of the same length from VBench's Chinese suite (when it is on this machine)."""
    suite = Path(__file__).resolve().parents[2] / "shared" / "data" / "vbench" / "all_dimension_cn.txt"
    if not suite.is_file():
        suite = Path("/work/shared/data/vbench/all_dimension_cn.txt")
    if suite.is_file():
        lines = [line.strip() for line in suite.read_text(encoding="utf-8").splitlines() if line.strip()]
        by_len: dict[int, list[str]] = {}
        for line in lines:
            by_len.setdefault(len(line), []).append(line)
        same = [group for group in by_len.values() if len(group) >= n]
        if same:
            return max(same, key=len)[:n]
    return CJK_FALLBACK[:n]


def cjk_font_or_skip():
    fonts = caption_font.CaptionFonts(13)
    font, _, missing = fonts.fit("".join(cjk_prompts()))
    if missing:
        pytest.skip("no font with CJK glyphs on this machine (apt-get install fonts-noto-cjk); .ci/run installs one")
    return font


def caption_strip(image, row: int, thumb_width: int = 48):
    pad, thumb_h, caption_h = 8, 32, 2 * 17 + 8
    top = pad + row * (thumb_h + caption_h + pad) + thumb_h
    return image.crop((pad, top, pad + 3 * thumb_width + 2 * pad, top + caption_h))


def test_cjk_captions_draw_their_glyphs(tmp_path):
    cjk_font_or_skip()
    prompts = cjk_prompts()
    out = tmp_path / "out"
    store = make_run(out, [{"prompt": p, "seed": 7} for p in prompts])
    store.close()
    result = run("sheet", out, "--thumb-width", "48")
    assert result.exit_code == 0, result.output
    image = Image.open(out / "contact_sheet.png").convert("L")
    first, second = caption_strip(image, 0), caption_strip(image, 1)
    # Same seed, same length: drawn as missing-glyph boxes the two captions are pixel for pixel the same.
    assert first.tobytes() != second.tobytes()
    # And every character is a real glyph of the font the sheet chose, no box, no '?' fallback.
    for prompt in prompts:
        font, text = sheet_module.caption(sheet_module.Entry(Path("x"), prompt, "7", 7), caption_font.CaptionFonts(13))
        assert "?" not in text and prompt[:5] in text
        assert all(caption_font.has_glyph(font, ch) for ch in prompt if caption_font.needs_glyph(ch))


def test_a_font_without_cjk_is_told_apart_from_one_with_it():
    font = cjk_font_or_skip()
    from PIL import ImageFont

    latin = ImageFont.load_default(size=13)
    assert not caption_font.has_glyph(latin, "\u732b") and caption_font.has_glyph(latin, "a")
    assert caption_font.has_glyph(font, "\u732b")


def test_caption_without_any_font_for_its_script_says_so(monkeypatch):
    monkeypatch.setattr(caption_font, "fontconfig_files", lambda chars: ())
    monkeypatch.setattr(caption_font, "FALLBACK_FILES", ())
    entry = sheet_module.Entry(Path("x"), "\u4e00\u53ea\u732b in snow", "3", 7)
    font, text = sheet_module.caption(entry, caption_font.CaptionFonts(13))
    assert text.startswith("(no installed font draws 3 of its characters, shown as ?)")
    assert text.endswith("seed 3 \u00b7 ??? in snow")
    assert all(caption_font.has_glyph(font, ch) for ch in text if caption_font.needs_glyph(ch))


def test_long_unspaced_prompt_wraps_within_the_cell():
    from PIL import Image as PILImage, ImageDraw

    font = cjk_font_or_skip()
    draw = ImageDraw.Draw(PILImage.new("RGB", (10, 10)))
    text = "seed 1 \u00b7 " + "".join(cjk_prompts()) * 3
    lines = sheet_module._wrap(draw, text, font, 160, 2)
    assert len(lines) == 2 and lines[0].startswith("seed 1 \u00b7 ")
    assert all(draw.textlength(line, font=font) <= 160 for line in lines[:1])
    assert lines[1].endswith("\u2026")
