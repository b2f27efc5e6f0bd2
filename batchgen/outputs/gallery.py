"""OUT/index.html: a static, offline gallery of a batch, regenerated as jobs finish.

One self-contained file (inline CSS and JS, no network): the jobs are embedded as JSON and drawn by the
page's script with textContent, so no prompt is ever parsed as HTML. Videos are referenced by relative
path, so the folder can be copied, zipped or served as it is.
"""

from __future__ import annotations

import html
import json
import re
import sys
import time
from pathlib import Path
from urllib.parse import quote

from batchgen import settings
from batchgen.outputs.atomic import write_text_atomic

GALLERY_NAME = "index.html"

# Above this many jobs a rewrite costs enough (and happens often enough) that the runner's per-job call
# is throttled to one rewrite per BATCHGEN_GALLERY_INTERVAL seconds (batchgen.settings); the end of a run always writes.
BIG_BATCH = 2000

_last_write: dict[str, float] = {}
_warned: set[str] = set()

_SETTINGS = ("num_frames", "height", "width", "num_inference_steps", "guidance_scale", "fps")


def gallery_items(store) -> list[dict]:
    """Finished and failed jobs, in manifest order, with what the page shows."""
    items = []
    for row in store.rows():
        if row["status"] not in ("done", "failed"):
            continue
        item = {
            "job_id": row["job_id"],
            "status": row["status"],
            "prompt": row["prompt"],
            "negative_prompt": row["negative_prompt"] or "",
            # Seeds go up to 2**64: as a JS number they would be rounded, so they travel as text.
            "seed": str(row["seed"]),
            **{k: row[k] for k in _SETTINGS},
            "model": row["model"],
            "profile": row.get("profile") or "",
            "precision": row["precision"],
            "render_seconds": row.get("render_seconds"),
            "finished_at": row.get("finished_at") or "",
            "attempts": row.get("attempts") or 0,
            "source": row.get("source") or "",
            "file": row.get("output_path") if row["status"] == "done" else None,
            "error": row.get("error") if row["status"] == "failed" else None,
        }
        items.append(item)
    return items


def script_json(data) -> str:
    """JSON that is safe inside a <script> element: no '<', '>' or '&' survive literally, so neither
    '</script>' nor '<!--' can end or confuse the element, whatever a prompt contains."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(raw, escaped)
    return text


def render_html(out: Path, store) -> str:
    items = gallery_items(store)
    counts = store.counts()
    title = f"batchgen: {Path(out).resolve().name}"
    data = {"title": title, "counts": counts, "generated_at": _now(), "items": items}
    parts = {"TITLE": html.escape(title), "CSS": _CSS, "NOSCRIPT": _noscript(items), "JS": _JS, "DATA": script_json(data)}
    # One pass, so a prompt that happens to contain "%%DATA%%" is never taken for a placeholder.
    return re.sub(r"%%(TITLE|CSS|NOSCRIPT|JS|DATA)%%", lambda m: parts[m.group(1)], _TEMPLATE)


def write_gallery(out: Path, store) -> Path:
    """Write OUT/index.html atomically from the database; returns its path."""
    out = Path(out)
    path = out / GALLERY_NAME
    write_text_atomic(path, render_html(out, store))
    _last_write[str(out.resolve())] = time.monotonic()
    return path


def maybe_write_gallery(out: Path, store, *, force: bool = False) -> Path | None:
    """The runner's call after each job (and, with force, at the end of a run).

    Small batches are rewritten every time; big ones at most every BATCHGEN_GALLERY_INTERVAL seconds. A gallery
    that cannot be written (disk full, permissions) never fails a job: it is reported once and skipped.
    """
    out = Path(out)
    key = str(out.resolve())
    if not force:
        last = _last_write.get(key)
        if last is not None and time.monotonic() - last < settings.gallery_interval():
            if store.counts()["total"] > BIG_BATCH:
                return None
    try:
        return write_gallery(out, store)
    except Exception as exc:  # the gallery is a convenience: rendering goes on without it
        if key not in _warned:
            _warned.add(key)
            print(f"batchgen: warning: could not write {out / GALLERY_NAME}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


def _now() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _href(rel: str) -> str:
    return quote(rel, safe="/")


def _noscript(items: list[dict]) -> str:
    """A plain list for browsers without JavaScript: links to the videos, failed jobs with their error."""
    lines = ["<ul>"]
    for it in items:
        prompt = html.escape(it["prompt"])
        if it["status"] == "done" and it["file"]:
            lines.append(
                f'<li><a href="{html.escape(_href(it["file"]))}">{html.escape(it["file"])}</a>: {prompt} '
                f"(seed {html.escape(it['seed'])})</li>"
            )
        else:
            lines.append(f"<li>FAILED {html.escape(it['job_id'])}: {prompt}: {html.escape(it['error'] or '')}</li>")
    lines.append("</ul>")
    return "\n".join(lines)


_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%%TITLE%%</title>
<style>%%CSS%%</style>
</head>
<body>
<header>
<h1 id="title">%%TITLE%%</h1>
<p id="summary"></p>
<div id="controls">
<input id="q" type="search" placeholder="Filter: prompt, seed, job id, error..." aria-label="Filter">
<label>Show <select id="status-filter"><option value="all">all</option><option value="done">done</option><option value="failed">failed</option></select></label>
<label>Sort <select id="sort">
<option value="newest">finished, newest first</option>
<option value="oldest">finished, oldest first</option>
<option value="prompt">prompt, A to Z</option>
<option value="slowest">render time, slowest first</option>
<option value="manifest">manifest order</option>
</select></label>
<span id="shown"></span>
</div>
<p id="test-status"></p>
</header>
<main id="grid"></main>
<button id="more" hidden>Show more</button>
<noscript>%%NOSCRIPT%%</noscript>
<script type="application/json" id="batchgen-data">%%DATA%%</script>
<script>%%JS%%</script>
</body>
</html>
"""

_CSS = """
:root { color-scheme: light dark; --bg: #f6f6f4; --fg: #1d1d1b; --card: #fff; --muted: #6b6b66; --bad: #b3261e; }
@media (prefers-color-scheme: dark) { :root { --bg: #151514; --fg: #eceae4; --card: #232321; --muted: #a09e97; --bad: #ff8a80; } }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, sans-serif; background: var(--bg); color: var(--fg); }
header { position: sticky; top: 0; z-index: 1; background: var(--bg); padding: 12px 16px 8px; border-bottom: 1px solid #8884; }
h1 { font-size: 18px; margin: 0 0 4px; }
#summary, #shown, #test-status { color: var(--muted); margin: 0 0 6px; }
#controls { display: flex; flex-wrap: wrap; gap: 8px 16px; align-items: center; }
#q { flex: 1 1 280px; padding: 6px 8px; font: inherit; }
#grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 12px; padding: 12px 16px; }
.card { margin: 0; background: var(--card); border-radius: 6px; overflow: hidden; box-shadow: 0 1px 3px #0003; }
.card.failed { outline: 2px solid var(--bad); }
.card video { display: block; width: 100%; aspect-ratio: var(--ar, 16 / 9); background: #000; object-fit: contain; cursor: pointer; }
.card pre.error { margin: 0; padding: 10px; color: var(--bad); white-space: pre-wrap; word-break: break-word; max-height: 12em; overflow: auto; }
.card figcaption { padding: 8px 10px 10px; }
.card .prompt { margin: 0 0 4px; font-weight: 600; word-break: break-word; }
.card .neg, .card .meta { margin: 0 0 2px; color: var(--muted); font-size: 12px; word-break: break-word; }
.card .note { color: var(--bad); font-size: 12px; margin: 0; }
.card a { color: inherit; font-size: 12px; }
#more { display: block; margin: 0 auto 24px; padding: 8px 16px; font: inherit; }
#more[hidden] { display: none; }
"""

_JS = r"""
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("batchgen-data").textContent);
  var PAGE = 120;
  var grid = document.getElementById("grid");
  var q = document.getElementById("q");
  var sortSel = document.getElementById("sort");
  var statusSel = document.getElementById("status-filter");
  var more = document.getElementById("more");
  var shownLine = document.getElementById("shown");
  var testLine = document.getElementById("test-status");
  var limit = PAGE;
  var matches = [];

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function href(path) { return path.split("/").map(encodeURIComponent).join("/"); }
  function secs(s) {
    if (s === null || s === undefined) return "?";
    if (s < 60) return s.toFixed(1) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.round((s % 3600) / 60) + " min";
  }
  function when(iso) {
    if (!iso) return "";
    var d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString();
  }
  function play(v) {
    var p = v.play();
    if (p && p.catch) p.catch(function () {});
  }

  DATA.items.forEach(function (it, i) {
    it._pos = i;
    it._hay = [it.prompt, it.negative_prompt, "seed " + it.seed, it.job_id, it.file || "", it.error || "",
               it.source, it.model, it.profile, it.precision].join("\n").toLowerCase();
  });

  var c = DATA.counts;
  document.getElementById("summary").textContent =
    c.done + " of " + c.total + " done, " + c.failed + " failed, " + c.pending + " pending, " + c.running +
    " running. Page written " + when(DATA.generated_at) + "; reload to see newer videos.";

  function card(it) {
    var f = el("figure", "card " + it.status);
    f.dataset.jobId = it.job_id;
    f.dataset.status = it.status;
    if (it.status === "done" && it.file) {
      var v = document.createElement("video");
      v.muted = true; v.loop = true; v.playsInline = true; v.preload = "metadata";
      v.setAttribute("muted", ""); v.setAttribute("loop", ""); v.setAttribute("playsinline", "");
      v.setAttribute("preload", "metadata");
      v.style.setProperty("--ar", it.width + " / " + it.height);
      v.title = "Hover or click to play";
      v.src = href(it.file);
      v.addEventListener("click", function () { if (v.paused) play(v); else v.pause(); });
      f.addEventListener("mouseenter", function () { play(v); });
      f.addEventListener("mouseleave", function () { v.pause(); });
      v.addEventListener("error", function () {
        f.classList.add("broken");
        f.insertBefore(el("p", "note", "Cannot play " + it.file + " (missing, or a codec this browser lacks)."), v.nextSibling);
      });
      f.appendChild(v);
    } else {
      f.appendChild(el("pre", "error", it.error || "failed (no error recorded)"));
    }
    var cap = el("figcaption");
    cap.appendChild(el("p", "prompt", it.prompt));
    if (it.negative_prompt) cap.appendChild(el("p", "neg", "negative: " + it.negative_prompt));
    cap.appendChild(el("p", "meta", "seed " + it.seed + " \u00b7 " + it.num_frames + " frames \u00b7 " + it.width + "\u00d7" +
      it.height + " \u00b7 " + it.num_inference_steps + " steps \u00b7 guidance " + it.guidance_scale + " \u00b7 " + it.fps + " fps"));
    var how = it.status === "done" ? "rendered in " + secs(it.render_seconds) : "failed (attempt " + it.attempts + ")";
    cap.appendChild(el("p", "meta", how + " \u00b7 " + when(it.finished_at) + " \u00b7 " + it.model + " " +
      (it.profile ? it.profile + " " : "") + it.precision));
    var line = el("p", "meta");
    if (it.file) {
      var a = el("a", null, it.file);
      a.href = href(it.file);
      line.appendChild(a);
      line.appendChild(document.createTextNode(" \u00b7 "));
    }
    line.appendChild(document.createTextNode("job " + it.job_id + (it.source ? " \u00b7 " + it.source : "")));
    cap.appendChild(line);
    f.appendChild(cap);
    return f;
  }

  var SORTS = {
    newest: function (a, b) { return a.finished_at < b.finished_at ? 1 : a.finished_at > b.finished_at ? -1 : a._pos - b._pos; },
    oldest: function (a, b) { return a.finished_at < b.finished_at ? -1 : a.finished_at > b.finished_at ? 1 : a._pos - b._pos; },
    prompt: function (a, b) { return a.prompt.localeCompare(b.prompt) || a._pos - b._pos; },
    slowest: function (a, b) { return (b.render_seconds || 0) - (a.render_seconds || 0) || a._pos - b._pos; },
    manifest: function (a, b) { return a._pos - b._pos; }
  };

  function draw() {
    var words = q.value.toLowerCase().split(/\s+/).filter(Boolean);
    var status = statusSel.value;
    matches = DATA.items.filter(function (it) {
      if (status !== "all" && it.status !== status) return false;
      for (var i = 0; i < words.length; i++) if (it._hay.indexOf(words[i]) < 0) return false;
      return true;
    }).sort(SORTS[sortSel.value] || SORTS.newest);
    grid.textContent = "";
    var frag = document.createDocumentFragment();
    matches.slice(0, limit).forEach(function (it) { frag.appendChild(card(it)); });
    grid.appendChild(frag);
    var n = Math.min(limit, matches.length);
    shownLine.textContent = "showing " + n + " of " + matches.length + (matches.length !== DATA.items.length ? " matching" : "");
    more.hidden = matches.length <= limit;
    more.textContent = "Show more (" + (matches.length - n) + " left)";
    grid.dataset.shown = String(n);
    grid.dataset.matches = String(matches.length);
  }

  // The view lives in the address's #fragment (q=..&sort=..&show=..), so a filtered view can be bookmarked
  // or shared along with the folder.
  var params = {};
  location.hash.replace(/^#/, "").split("&").forEach(function (part) {
    if (!part) return;
    var i = part.indexOf("=");
    var k = i < 0 ? part : part.slice(0, i);
    try { params[k] = i < 0 ? true : decodeURIComponent(part.slice(i + 1).replace(/\+/g, " ")); } catch (e) {}
  });
  if (typeof params.q === "string") q.value = params.q;
  if (SORTS[params.sort]) sortSel.value = params.sort;
  if (params.show === "done" || params.show === "failed") statusSel.value = params.show;

  function remember() {
    var parts = [];
    if (q.value) parts.push("q=" + encodeURIComponent(q.value));
    if (sortSel.value !== "newest") parts.push("sort=" + sortSel.value);
    if (statusSel.value !== "all") parts.push("show=" + statusSel.value);
    try { history.replaceState(null, "", parts.length ? "#" + parts.join("&") : location.pathname); } catch (e) {}
  }
  function reset() { limit = PAGE; draw(); remember(); }
  q.addEventListener("input", reset);
  sortSel.addEventListener("change", reset);
  statusSel.addEventListener("change", reset);
  more.addEventListener("click", function () { limit += PAGE; draw(); });
  draw();
  document.body.dataset.ready = String(DATA.items.length);

  // #autoplay-test: play the first video at load and say whether it really plays (used by the tests).
  if (params["autoplay-test"]) {
    var v = grid.querySelector("video");
    if (!v) {
      testLine.textContent = "autoplay-test: no video on the page";
    } else {
      testLine.textContent = "autoplay-test: waiting";
      v.addEventListener("playing", function () {
        document.body.dataset.playing = v.closest("figure").dataset.jobId;
        testLine.textContent = "autoplay-test: playing " + v.getAttribute("src");
      });
      v.addEventListener("error", function () {
        document.body.dataset.playError = String(v.error ? v.error.code : "?");
        testLine.textContent = "autoplay-test: error " + (v.error ? v.error.code + " " + v.error.message : "");
      });
      var p = v.play();
      if (p && p.catch) p.catch(function (e) { testLine.textContent = "autoplay-test: play() refused: " + e; });
    }
  }
})();
"""
