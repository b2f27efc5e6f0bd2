"""Checking an output folder against its database: videos deleted or damaged, a metadata.jsonl edited by hand.

The database is the truth. A done job whose video is missing, or whose bytes no longer match the sha256
recorded when it was written, goes back to pending (a damaged file is moved to OUT/quarantine/ first,
never deleted); metadata.jsonl is compared row by row with the database and rewritten from it.
"""

from __future__ import annotations

import datetime
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from batchgen.outputs import metadata_index
from batchgen.outputs.atomic import sha256_file
from batchgen.store.queue import Store

QUARANTINE_DIR = "quarantine"
QUARANTINE_SUFFIX = ".corrupt"  # not .mp4: video loaders and galleries must not pick it up


@dataclass
class VideoProblem:
    job_id: str
    source: str
    path: str  # relative to OUT
    kind: str  # "missing", "corrupt" or "undecodable"
    detail: str
    moved_to: str | None = None

    def line(self) -> str:
        where = f"job {self.job_id}" + (f", {self.source}" if self.source else "")
        moved = f"; moved to {self.moved_to}" if self.moved_to else ""
        return f"  {self.kind:<11} {self.path} ({where}): {self.detail}{moved}; back to pending"


@dataclass
class MetadataReport:
    """How OUT/metadata.jsonl differs from the rows the database says it should hold."""

    expected: int = 0
    lines: int = 0
    missing: list[str] = field(default_factory=list)  # done job ids without a row
    extra: list[str] = field(default_factory=list)  # "line N: ..." rows of jobs not done or unknown
    changed: list[str] = field(default_factory=list)  # "line N: job X: fields a, b differ"
    duplicated: list[str] = field(default_factory=list)  # "line N: job X appears again"
    unreadable: list[str] = field(default_factory=list)  # "line N: not JSON (...)"

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.changed or self.duplicated or self.unreadable)

    @property
    def edited(self) -> bool:
        """Differences a crash cannot leave: a killed run only ever leaves rows out (healed by a rebuild)."""
        return bool(self.extra or self.changed or self.duplicated or self.unreadable)

    def explain(self, limit: int = 10) -> list[str]:
        out: list[str] = []
        for label, items in (
            ("changed", self.changed),
            ("not in the database", self.extra),
            ("duplicated", self.duplicated),
            ("unreadable", self.unreadable),
        ):
            for item in items[:limit]:
                out.append(f"  {label}: {item}")
            if len(items) > limit:
                out.append(f"  ... and {len(items) - limit} more {label}")
        if self.missing:
            shown = ", ".join(self.missing[:limit]) + (f" and {len(self.missing) - limit} more" if len(self.missing) > limit else "")
            out.append(f"  missing rows for {len(self.missing)} done job(s): {shown}")
        return out


def compare_metadata(out: Path, store: Store) -> MetadataReport:
    """Compare metadata.jsonl with the database's metadata rows (order does not matter)."""
    expected = {row["job_id"]: row for row in store.metadata_rows()}
    report = MetadataReport(expected=len(expected))
    path = Path(out) / metadata_index.METADATA_FILE
    seen: dict[str, int] = {}
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        report.lines += 1
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            report.unreadable.append(f"line {number}: not a JSON object ({exc})")
            continue
        jid = row.get("job_id")
        if jid in seen:
            report.duplicated.append(f"line {number}: job {jid} already at line {seen[jid]}")
            continue
        if jid not in expected:
            report.extra.append(f"line {number}: {row.get('file_name', '?')} (job {jid}) is not a done job")
            continue
        seen[jid] = number
        want = expected[jid]
        fields = sorted(k for k in set(want) | set(row) if want.get(k, _ABSENT) != row.get(k, _ABSENT))
        if fields:
            report.changed.append(f"line {number}: job {jid}: field(s) {', '.join(fields)} differ from the database")
    report.missing = [jid for jid in expected if jid not in seen]
    return report


_ABSENT = object()


def check_videos(out: Path, store: Store, *, decode: bool = False, checksums: bool = True) -> list[VideoProblem]:
    """Every done job's video: present, with the recorded sha256 (and, with `decode`, every frame decodes)."""
    out = Path(out)
    problems: list[VideoProblem] = []
    for row in store.done_rows():
        rel = row["output_path"] or ""
        path = out / rel
        base = dict(job_id=row["job_id"], source=row["source"] or "", path=rel)
        if not rel or not path.is_file():
            problems.append(VideoProblem(**base, kind="missing", detail="the video is gone (deleted or moved by hand?)"))
            continue
        if not checksums:
            continue
        if row["sha256"] and sha256_file(path) != row["sha256"]:
            problems.append(
                VideoProblem(**base, kind="corrupt", detail="its sha256 differs from the one recorded when it was written")
            )
            continue
        if decode:
            from batchgen.outputs.video import count_frames

            try:
                frames = count_frames(path)
            except (OSError, RuntimeError):
                frames = -1
            if frames != row["num_frames"]:
                got = "none" if frames < 0 else str(frames)
                problems.append(
                    VideoProblem(**base, kind="undecodable", detail=f"{got} of {row['num_frames']} frames decode")
                )
    return problems


def requeue(out: Path, store: Store, problems: list[VideoProblem]) -> None:
    """Put the jobs of `problems` back to pending; a damaged file is moved aside first, never deleted."""
    out = Path(out)
    for problem in problems:
        path = out / problem.path
        if problem.kind != "missing" and path.is_file():
            target = _quarantine_name(out, path)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(target))
            problem.moved_to = target.relative_to(out).as_posix()
        store.mark_pending(problem.job_id, f"verify: {problem.path}: {problem.detail}")


def _quarantine_name(out: Path, path: Path) -> Path:
    folder = out / QUARANTINE_DIR
    target = folder / f"{path.name}{QUARANTINE_SUFFIX}"
    n = 1
    while target.exists():
        n += 1
        target = folder / f"{path.name}.{n}{QUARANTINE_SUFFIX}"
    return target


@dataclass
class VerifyReport:
    checked: int
    problems: list[VideoProblem]
    metadata: MetadataReport
    metadata_rows: int  # rows after the rebuild (None-free: always rebuilt when anything differed)
    rebuilt: bool

    @property
    def ok(self) -> bool:
        return not self.problems and self.metadata.ok


def verify(out: Path, store: Store, *, decode: bool = False) -> VerifyReport:
    """Check every done job's video and the index; requeue what is missing or damaged; fix the index.

    The caller holds the folder lock: nothing may render meanwhile.
    """
    checked = store.counts()["done"]
    problems = check_videos(out, store, decode=decode)
    report = compare_metadata(out, store)
    requeue(out, store, problems)
    rebuilt = bool(problems) or not report.ok
    rows = metadata_index.rebuild(out, store) if rebuilt else report.expected
    return VerifyReport(checked, problems, report, rows, rebuilt)


def startup_check(out: Path, store: Store, log: Callable[[str], None]) -> int:
    """At the start of a render: done jobs whose video is gone or cut short go back to pending (a damaged
    file to OUT/quarantine/ first), named in one warning line; an index edited by hand is kept as a copy
    before the run rewrites it. Returns how many were requeued.

    Cheap enough for every run: one stat per done job (a few header reads where no size is recorded yet),
    one read of the index, no hashing. `verify` is the thorough check.
    """
    out = Path(out)
    # The index first: requeueing a job below takes its row out of what the index should hold.
    report = compare_metadata(out, store)
    problems = quick_check(out, store)
    if problems:
        requeue(out, store, problems)
        log(_startup_warning(out, problems))
    if report.edited:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        copy = out / f"{metadata_index.METADATA_FILE}.edited-{stamp}.bak"
        shutil.copy2(out / metadata_index.METADATA_FILE, copy)
        log(
            f"batchgen: warning: {out / metadata_index.METADATA_FILE} differs from the database (edited by hand?); it is "
            f"rewritten from the database, which is the record of what was rendered. Your copy is kept as {copy.name}:\n"
            + "\n".join(report.explain(5))
        )
    return len(problems)


def quick_check(out: Path, store: Store) -> list[VideoProblem]:
    """Done jobs whose video is missing, or whose size is not the recorded one (or, with no size recorded
    yet, is empty or has MP4 boxes running past its end); records the size of the sound ones not yet sized."""
    out = Path(out)
    problems: list[VideoProblem] = []
    sized: list[tuple[int, str]] = []
    for row in store.done_rows():
        rel = row["output_path"] or ""
        path = out / rel
        base = dict(job_id=row["job_id"], source=row["source"] or "", path=rel)
        try:
            size = path.stat().st_size if rel and path.is_file() else None
        except OSError:
            size = None
        if size is None:
            problems.append(VideoProblem(**base, kind="missing", detail="the video is gone (deleted or moved by hand?)"))
            continue
        recorded = row.get("video_bytes")
        if recorded is not None:
            if size != recorded:
                problems.append(VideoProblem(**base, kind="corrupt", detail=f"{size} bytes, {recorded} recorded when it was written"))
            continue
        damage = mp4_damage(path, size)
        if damage:
            problems.append(VideoProblem(**base, kind="corrupt", detail=damage))
        else:
            sized.append((size, row["job_id"]))
    if sized:
        # Older batches recorded no size: from now on a truncation is one stat away from being noticed.
        with store.db.conn:
            store.db.conn.executemany("update jobs set video_bytes=? where job_id=? and video_bytes is null", sized)
    return problems


def mp4_damage(path: Path, size: int) -> str | None:
    """Why `path` cannot be a whole MP4 (empty, or its top-level boxes do not end exactly at its end), or None."""
    if size == 0:
        return "0 bytes (cut short)"
    offset = 0
    with open(path, "rb") as fh:
        while offset < size:
            fh.seek(offset)
            header = fh.read(16)
            if len(header) < 8:
                return f"{size} bytes, ends inside an MP4 box header at byte {offset} (cut short?)"
            box = int.from_bytes(header[:4], "big")
            if box == 1:  # a 64-bit size follows the type
                if len(header) < 16:
                    return f"{size} bytes, ends inside an MP4 box header at byte {offset} (cut short?)"
                box = int.from_bytes(header[8:16], "big")
            elif box == 0:  # the last box runs to the end of the file
                return None
            if box < 8:
                return f"not an MP4: a box of {box} bytes at byte {offset}"
            offset += box
    if offset != size:
        return f"{size} bytes, but its MP4 boxes need {offset} (cut short?)"
    return None


def _startup_warning(out: Path, problems: list[VideoProblem]) -> str:
    def shown(items: list[str]) -> str:
        return ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")

    if all(p.kind == "missing" for p in problems):
        return (
            f"batchgen: warning: {len(problems)} finished video(s) are missing from {out} "
            f"({shown([p.path for p in problems])}); their jobs go back to the queue and render again"
        )
    items = [p.path if p.kind == "missing" else f"{p.path}: {p.detail}, moved to {p.moved_to}" for p in problems]
    return (
        f"batchgen: warning: {len(problems)} finished video(s) in {out} are missing or damaged ({shown(items)}); "
        "their jobs go back to the queue and render again"
    )
