import pytest
from click.testing import CliRunner
from PIL import Image

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
