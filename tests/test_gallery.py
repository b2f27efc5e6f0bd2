import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchgen.outputs import gallery
from batchgen.cli.app import cli
from batchgen.outputs.metadata_index import read as read_index
from conftest import small_yaml
from fakerun import make_run

EVIL = "</script><script>alert(1)</script>"
IMG = '<img src=x onerror="document.body.dataset.pwned=1"> %%DATA%% %%JS%%'
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run installs it as root)"
)


def embedded(html: str) -> dict:
    match = re.search(r'<script type="application/json" id="batchgen-data">(.*?)</script>', html, re.S)
    assert match, "no embedded data"
    return json.loads(match.group(1))


@pytest.fixture
def mixed_run(tmp_path):
    out = tmp_path / "out"
    store = make_run(out, [
        {"prompt": "a red fox in snow", "seed": 1},
        {"prompt": "a red fox in snow", "seed": 2},
        {"prompt": "waves " + EVIL, "seed": 1},
        {"prompt": "a lighthouse at night", "seed": 3, "status": "failed",
         "error": "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"},
        {"prompt": IMG, "seed": 4},
        {"prompt": "still waiting", "seed": 5, "status": "pending"},
    ])
    gallery.write_gallery(out, store)
    yield out, store
    store.close()


def test_every_done_video_is_listed_and_failed_jobs_show_their_error(mixed_run):
    out, store = mixed_run
    html = (out / "index.html").read_text(encoding="utf-8")
    data = embedded(html)
    files = {it["file"] for it in data["items"] if it["status"] == "done"}
    assert files == {r["file_name"] for r in read_index(out)}
    assert len(files) == 4
    failed = [it for it in data["items"] if it["status"] == "failed"]
    assert [(f["prompt"], f["error"]) for f in failed] == [
        ("a lighthouse at night", "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    ]
    assert "still waiting" not in html  # pending jobs are counted, not listed
    assert data["counts"] == {"total": 6, "pending": 1, "running": 0, "done": 4, "failed": 1}
    for it in data["items"]:
        if it["status"] == "done":
            assert (out / it["file"]).exists()
            assert it["render_seconds"] > 0 and it["finished_at"] and it["num_inference_steps"] == 2
    # Without JavaScript the page still links every video and names the failure.
    noscript = html.split("<noscript>")[1].split("</noscript>")[0]
    for rel in files:
        assert 'href="' + rel.replace(" ", "%20") + '"' in noscript
    assert "CUDA out of memory" in noscript


def test_prompts_cannot_break_out_of_the_page(mixed_run):
    out, _ = mixed_run
    html = (out / "index.html").read_text(encoding="utf-8")
    # Only the page's own two script elements exist, whatever the prompts say.
    assert html.count("<script") == 2 and html.count("</script>") == 2
    assert "<img" not in html
    # The data still carries the prompts exactly.
    prompts = {it["prompt"] for it in embedded(html)["items"]}
    assert "waves " + EVIL in prompts and IMG in prompts
    # No network: nothing is fetched from anywhere but the folder.
    assert not re.search(r'(src|href)="(https?:)?//', html)


def test_seeds_above_2_53_are_shown_exactly(tmp_path):
    out = tmp_path / "out"
    big = 2**64 - 1
    store = make_run(out, [{"prompt": "p", "seed": big}])
    gallery.write_gallery(out, store)
    store.close()
    assert embedded((out / "index.html").read_text(encoding="utf-8"))["items"][0]["seed"] == str(big)


def test_big_batches_are_rewritten_at_most_every_interval(tmp_path, monkeypatch):
    out = tmp_path / "out"
    store = make_run(out, [{"prompt": "one"}, {"prompt": "two", "status": "failed"}])
    page = out / "index.html"
    monkeypatch.setenv("BATCHGEN_GALLERY_INTERVAL", "3600")
    monkeypatch.setattr(gallery, "BIG_BATCH", 10)
    assert gallery.maybe_write_gallery(out, store) == page
    page.write_text("stale", encoding="utf-8")
    # Small batch: every call rewrites.
    assert gallery.maybe_write_gallery(out, store) == page
    assert page.read_text(encoding="utf-8") != "stale"
    monkeypatch.setattr(gallery, "BIG_BATCH", 1)
    page.write_text("stale", encoding="utf-8")
    assert gallery.maybe_write_gallery(out, store) is None
    assert page.read_text(encoding="utf-8") == "stale"
    # The end of a run always writes.
    assert gallery.maybe_write_gallery(out, store, force=True) == page
    assert page.read_text(encoding="utf-8") != "stale"
    store.close()


def test_a_gallery_that_cannot_be_written_never_fails_the_run(tmp_path, capsys):
    out = tmp_path / "out"
    store = make_run(out, [{"prompt": "one"}])
    (out / "index.html").mkdir()  # something in the way
    assert gallery.maybe_write_gallery(out, store) is None
    assert gallery.maybe_write_gallery(out, store) is None
    err = capsys.readouterr().err
    assert err.count("could not write") == 1 and "index.html" in err
    with pytest.raises(OSError):
        gallery.write_gallery(out, store)
    store.close()


def test_render_keeps_the_gallery_current(tmp_path):
    manifest = small_yaml(tmp_path, ["a red fox in snow", "waves"], seeds=[1, 2])
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["render", str(manifest), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    data = embedded((out / "index.html").read_text(encoding="utf-8"))
    assert sorted(it["file"] for it in data["items"]) == sorted(r["file_name"] for r in read_index(out))
    assert data["counts"]["done"] == 4


# -- in a real browser ------------------------------------------------------------------------------


def chromium(page: Path, tmp_path: Path, *args: str, fragment: str = "") -> str:
    profile = tmp_path / "chromium-profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", *args, page.resolve().as_uri() + fragment]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def figures(dom: str) -> list[tuple[str, str]]:
    return re.findall(r'<figure class="card (done|failed)" data-job-id="([0-9a-f]+)"', dom)


@needs_chromium
def test_browser_lists_every_job_and_plays_a_video(mixed_run, tmp_path):
    out, store = mixed_run
    dom = chromium(out / "index.html", tmp_path, "--virtual-time-budget=3000", "--dump-dom",
                   fragment="#autoplay-test")
    shown = figures(dom)
    done = {r["job_id"] for r in store.rows("done")}
    assert {j for s, j in shown if s == "done"} == done
    assert [j for s, j in shown if s == "failed"] == [r["job_id"] for r in store.rows("failed")]
    assert "CUDA out of memory" in dom
    # The first video really decoded and played (Debian's chromium plays H.264).
    playing = re.search(r'<body[^>]*data-playing="([0-9a-f]+)"', dom)
    assert playing, re.search(r'<p id="test-status">[^<]*', dom).group(0)
    assert playing.group(1) in done
    # Prompts were drawn as text: the <img onerror> prompt never ran.
    assert "data-pwned" not in dom
    assert "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in dom


@needs_chromium
def test_browser_filter_and_sort_from_the_address(mixed_run, tmp_path):
    out, store = mixed_run
    dom = chromium(out / "index.html", tmp_path, "--virtual-time-budget=1000", "--dump-dom", fragment="#q=fox")
    fox = [r["job_id"] for r in store.rows("done") if "fox" in r["prompt"]]
    assert sorted(j for _, j in figures(dom)) == sorted(fox) and len(fox) == 2
    dom = chromium(out / "index.html", tmp_path, "--virtual-time-budget=1000", "--dump-dom",
                   fragment="#sort=prompt&show=done")
    by_prompt = sorted(store.rows("done"), key=lambda r: (r["prompt"].lower(), r["position"]))
    assert [j for _, j in figures(dom)] == [r["job_id"] for r in by_prompt]
    dom = chromium(out / "index.html", tmp_path, "--virtual-time-budget=1000", "--dump-dom", fragment="#show=failed")
    assert [s for s, _ in figures(dom)] == ["failed"]


@needs_chromium
def test_screenshot(mixed_run, tmp_path):
    from PIL import Image

    out, _ = mixed_run
    shot = tmp_path / "gallery.png"
    chromium(out / "index.html", tmp_path, "--virtual-time-budget=2000", f"--screenshot={shot}", "--window-size=1200,800")
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 800)
    # Not a blank page: the cards and their frames put many colours on screen.
    assert len(image.getcolors(maxcolors=1 << 20) or []) > 50
