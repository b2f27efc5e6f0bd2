"""Lay a finished run out for other tools, from the files already rendered (nothing is re-rendered).

- vbench: DEST/<prompt>-<index>.mp4, VBench's naming (index 0..4 over a prompt's seeds), hard-linked when
  DEST is on the same filesystem; plus the prompt and seed of every file.
- webdataset: DEST/shard-000000.tar, ... with <key>.mp4 and <key>.json (the metadata row) per sample.

Nothing in DEST is ever overwritten: a file that is already there with the same content is skipped (so an
export can be repeated after more jobs finished), any other is an error naming it.
"""

from __future__ import annotations

import datetime
import filecmp
import io
import json
import os
import shutil
import tarfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from batchgen.errors import BatchgenError
from batchgen.outputs.atomic import fsync_dir, fsync_file, sha256_file, temp_path
from batchgen.outputs.naming import safe_file_stem

LAYOUTS = ("vbench", "webdataset")
VBENCH_INFO = "batchgen_vbench.json"
VBENCH_PROMPTS = "vbench_prompts.json"
SHARD_SIZE = 100


class ExportError(BatchgenError):
    """An export that would overwrite something, or a run with nothing to export."""


@dataclass
class ExportResult:
    dest: Path
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # already there, identical
    linked: int = 0
    copied: int = 0


def _done_rows(out: Path, store) -> list[dict]:
    rows = [r for r in store.rows("done") if r["output_path"]]
    if not rows:
        raise ExportError(f"{out} has no finished videos yet: nothing to export.")
    missing = [r["output_path"] for r in rows if not (out / r["output_path"]).exists()]
    if missing:
        raise ExportError(
            f"{len(missing)} finished video(s) are missing from {out}, e.g. {out / missing[0]}. Run "
            "`batchgen verify` to see which, and render again to restore them before exporting."
        )
    return rows


def _metadata(row: dict) -> dict:
    if row.get("metadata"):
        return json.loads(row["metadata"])
    return {"file_name": row["output_path"], "job_id": row["job_id"], "prompt": row["prompt"], "seed": int(row["seed"])}


def _publish_new(tmp: Path, final: Path) -> None:
    """Give a finished temporary file its final name, which must not exist yet (FileExistsError if it does).

    os.link refuses an existing name atomically; on a filesystem without hard links the check and the
    rename are two steps, which only a second writer in the same DEST at the same moment could race."""
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise
    except OSError:
        if final.exists() or final.is_symlink():
            raise FileExistsError(final) from None
        os.replace(tmp, final)


def _place(src: Path, final: Path, result: ExportResult) -> None:
    """Hard-link src to final when they share a filesystem, else copy it; never replaces anything."""
    try:
        os.link(src, final)
        result.linked += 1
    except FileExistsError:
        raise
    except OSError:  # another filesystem, or one without hard links
        tmp = temp_path(final)
        try:
            shutil.copyfile(src, tmp)
            fsync_file(tmp)
            _publish_new(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        result.copied += 1
    result.written.append(final)


def _refuse(path: Path, why: str) -> ExportError:
    return ExportError(
        f"{path} already exists {why}; batchgen never overwrites a file. Export into a new or empty DEST, or move "
        "that file aside."
    )


# -- vbench ------------------------------------------------------------------------------------------


def vbench_indices(rows: list[dict]) -> dict[str, int]:
    """job_id -> VBench index for every job: its position in the manifest's `seeds:` when the prompt's jobs
    have distinct ones, else its rank among the prompt's jobs in manifest order."""
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: r["position"]):
        by_prompt[row["prompt"]].append(row)
    index: dict[str, int] = {}
    for group in by_prompt.values():
        idxs = [r["idx"] or 0 for r in group]
        distinct = len(set(idxs)) == len(idxs)
        for rank, row in enumerate(group):
            index[row["job_id"]] = idxs[rank] if distinct else rank
    return index


def vbench_plan(out: Path, store) -> list[tuple[dict, str, int]]:
    """(row, DEST file name, VBench index) for every finished job; refuses names two jobs would share."""
    done = _done_rows(out, store)
    # Ranks come from all jobs of a prompt, failed ones too, so a job keeps its name when a retry fills a gap.
    index = vbench_indices(store.rows())
    plan, seen = [], {}
    for row in done:
        name = safe_file_stem(f"{row['prompt']}-{index[row['job_id']]}") + ".mp4"
        key = name.casefold()
        if key in seen:
            raise ExportError(
                f"jobs {seen[key]['job_id']} ({seen[key]['source']}) and {row['job_id']} ({row['source']}) both "
                f"become {name} in the VBench layout (same prompt and index); VBench names files by prompt and "
                "index only, so export them to separate folders or give each prompt one set of seeds."
            )
        seen[key] = row
        plan.append((row, name, index[row["job_id"]]))
    return plan


def export_vbench(out: Path, store, dest: Path) -> ExportResult:
    out, dest = Path(out), Path(dest)
    plan = vbench_plan(out, store)
    result = ExportResult(dest)
    # Every conflict is found before anything is written.
    todo = []
    for row, name, _ in plan:
        final = dest / name
        if final.exists() or final.is_symlink():
            if final.is_file() and (os.path.samefile(final, out / row["output_path"]) or sha256_file(final) == row["sha256"]):
                result.skipped.append(final)
                continue
            raise _refuse(final, "with other content")
        todo.append((row, final))
    info = {
        name: {"prompt": row["prompt"], "index": idx, "seed": int(row["seed"]), "job_id": row["job_id"],
               "sha256": row["sha256"], "source_file": row["output_path"]}
        for row, name, idx in plan
    }
    # VBench's own prompt file for `--custom_input --prompt_file`: {"video path": prompt}.
    prompts = {str((dest / name).resolve()): row["prompt"] for row, name, _ in plan}
    info_text = json.dumps(info, ensure_ascii=False, indent=2) + "\n"
    prompts_text = json.dumps(prompts, ensure_ascii=False, indent=2) + "\n"
    for name, newer in ((VBENCH_INFO, info), (VBENCH_PROMPTS, prompts)):
        _check_json(dest / name, newer)
    dest.mkdir(parents=True, exist_ok=True)
    for row, final in todo:
        try:
            _place(out / row["output_path"], final, result)
        except FileExistsError:  # appeared since the check: someone else is writing DEST
            raise _refuse(final, "(it appeared while exporting)") from None
    for name, text in ((VBENCH_INFO, info_text), (VBENCH_PROMPTS, prompts_text)):
        path = dest / name
        if path.exists() and path.read_text(encoding="utf-8") == text:
            result.skipped.append(path)
            continue
        _write_json(path, text)
        result.written.append(path)
    fsync_dir(dest)
    return result


def _check_json(path: Path, newer: dict) -> None:
    """An index file of an earlier export may be replaced only by one that keeps every entry it had."""
    if not path.exists():
        return
    try:
        older = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise _refuse(path, "and is not an index batchgen wrote") from None
    if not isinstance(older, dict) or any(newer.get(k) != v for k, v in older.items()):
        raise _refuse(path, "with entries this export would change")


def _write_json(path: Path, text: str) -> None:
    tmp = temp_path(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# -- webdataset --------------------------------------------------------------------------------------


def shard_name(n: int) -> str:
    return f"shard-{n:06d}.tar"


def sample_key(row: dict) -> str:
    # WebDataset splits a member name at its first dot into key and extension: a job id has none, is
    # unique within a run and names the same job in metadata.jsonl and the database.
    return row["job_id"]


def _epoch(iso: str | None) -> int:
    try:
        return int(datetime.datetime.fromisoformat(iso).timestamp()) if iso else 0
    except ValueError:
        return 0


def _add(tar: tarfile.TarFile, name: str, data: bytes | None, src: Path | None, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data) if data is not None else src.stat().st_size
    # Same files in, same bytes out: fixed owner, mode and times.
    info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = mtime, 0o644, 0, 0, "", ""
    if data is not None:
        tar.addfile(info, io.BytesIO(data))
    else:
        with open(src, "rb") as handle:
            tar.addfile(info, handle)


def export_webdataset(out: Path, store, dest: Path, shard_size: int = SHARD_SIZE) -> ExportResult:
    out, dest = Path(out), Path(dest)
    if shard_size < 1:
        raise ExportError(f"--shard-size must be at least 1, got {shard_size}")
    rows = _done_rows(out, store)
    keys = [sample_key(r) for r in rows]
    bad = [k for k in keys if "." in k or "/" in k]
    if bad:
        raise ExportError(f"sample key {bad[0]!r} has a dot or slash, which WebDataset cannot split")
    result = ExportResult(dest)
    dest.mkdir(parents=True, exist_ok=True)
    chunks = [rows[i : i + shard_size] for i in range(0, len(rows), shard_size)]
    for n, chunk in enumerate(chunks):
        final = dest / shard_name(n)
        tmp = temp_path(final)
        try:
            with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
                for row in chunk:
                    meta = _metadata(row)
                    mtime = _epoch(row.get("finished_at"))
                    key = sample_key(row)
                    _add(tar, f"{key}.mp4", None, out / row["output_path"], mtime)
                    _add(tar, f"{key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"), None, mtime)
            fsync_file(tmp)
            if final.exists() or final.is_symlink():
                if final.is_file() and filecmp.cmp(tmp, final, shallow=False):
                    result.skipped.append(final)
                    continue
                raise _refuse(final, "with other samples (an export of a different run, or different --shard-size?)")
            try:
                _publish_new(tmp, final)
            except FileExistsError:
                raise _refuse(final, "(it appeared while exporting)") from None
            result.written.append(final)
        finally:
            tmp.unlink(missing_ok=True)
    fsync_dir(dest)
    return result


def export(out: Path, store, layout: str, dest: Path, *, shard_size: int = SHARD_SIZE) -> ExportResult:
    if layout == "vbench":
        return export_vbench(out, store, dest)
    if layout == "webdataset":
        return export_webdataset(out, store, dest, shard_size)
    raise ExportError(f"unknown layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
