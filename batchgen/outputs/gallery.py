"""The gallery page, OUT/index.html: a static, offline view of a batch, regenerated as jobs finish.

One self-contained file (inline CSS and JS, no network): the jobs are embedded as JSON and drawn by the
page's script with textContent, so no prompt is ever parsed as HTML. Videos are referenced by relative
path, so the folder can be copied, zipped or served as it is. The page's HTML, CSS and JS are package
data files in gallery_assets/, inlined into each page written.
"""

from __future__ import annotations

import functools
import html
import json
import re
import sys
import time
from importlib import resources
from pathlib import Path
from urllib.parse import quote

from batchgen import settings
from batchgen.outputs.atomic import write_text_atomic

GALLERY_PAGE = "index.html"
# The page's template, style sheet and script, beside this module: gallery.html, gallery.css, gallery.js.
ASSETS = "gallery_assets"
ASSET_FILES = ("gallery.html", "gallery.css", "gallery.js")

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
            "family": row.get("family") or "mochi",  # rows from before families (m008) are Mochi's
            "profile": row.get("profile") or "",
            "precision": row["precision"],
            "render_seconds": row.get("render_seconds"),
            "finished_at": row.get("finished_at") or "",
            "attempts": row.get("attempts") or 0,
            "source": row.get("source") or "",
            "file": row.get("output_path") if row["status"] == "done" else None,
            "error": row.get("error") if row["status"] == "failed" else None,
            # The transformer and LoRAs (adapter@scale) a job renders with, "" for none.
            "checkpoint": _checkpoint_text(row),
        }
        items.append(item)
    return items


def _checkpoint_text(row: dict) -> str:
    data = json.loads(row["checkpoint"]) if row.get("checkpoint") else {}
    parts = [f"transformer {data['transformer']}"] if data.get("transformer") else []
    if data.get("variant"):
        parts.append(f"variant {data['variant']}")
    for lora in json.loads(row["loras"]) if row.get("loras") else ():
        name = lora.get("adapter_name") or f"lora_{lora.get('sha256', '')[:8]}"
        parts.append(f"LoRA {name}@{float(lora.get('scale', 1.0)):g}")
    return ", ".join(parts)


def script_json(data) -> str:
    """JSON that is safe inside a <script> element: no '<', '>' or '&' survive literally, so neither
    '</script>' nor '<!--' can end or confuse the element, whatever a prompt contains."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(raw, escaped)
    return text


def render_gallery_page(out: Path, store) -> str:
    items = gallery_items(store)
    counts = store.counts()
    title = f"batchgen: {Path(out).resolve().name}"
    data = {"title": title, "counts": counts, "generated_at": _now(), "items": items}
    parts = {"TITLE": html.escape(title), "CSS": _asset("gallery.css"), "NOSCRIPT": _noscript(items),
             "JS": _asset("gallery.js"), "DATA": script_json(data)}
    # One pass, so a prompt that happens to contain "%%DATA%%" is never taken for a placeholder.
    return re.sub(r"%%(TITLE|CSS|NOSCRIPT|JS|DATA)%%", lambda m: parts[m.group(1)], _asset("gallery.html"))


def write_gallery(out: Path, store) -> Path:
    """Write OUT/index.html atomically from the database; returns its path."""
    out = Path(out)
    path = out / GALLERY_PAGE
    write_text_atomic(path, render_gallery_page(out, store))
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
            print(f"batchgen: warning: could not write {out / GALLERY_PAGE}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


@functools.cache
def _asset(name: str) -> str:
    """A file of gallery_assets/ (package data, so an installed wheel has it too); read once per process,
    as the page is rewritten after every job."""
    return (resources.files("batchgen.outputs") / ASSETS / name).read_text(encoding="utf-8")


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
