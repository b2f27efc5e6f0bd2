"""Re-render recorded jobs and check that the same frames come out.

A job is re-rendered from its database row alone (prompt, seed, every setting, model, precision, and the
profile and hub commit it was rendered with) into a scratch folder, `OUT/.reproduce/<job_id>/` by default:
hidden, so dataset loaders skip it. OUT itself is only read: its videos, index and database rows are never
written (the database is opened read-only).

Frames are judged by `frames_sha256`, the hash of the decoded uint8 frames. When they differ, the size of
the difference is measured between the recorded video and the re-render encoded the same way (the raw
frames of the original run are not kept), and the fingerprint recorded with the job is compared with now,
so the report says what changed: a library version, the GPU, the profile...
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from batchgen.engine import approximate
from batchgen.engine import determinism, families
from batchgen.engine import fingerprint
from batchgen.engine import profiles
from batchgen.errors import BatchgenError
from batchgen.job import Job, checkpoint_key
from batchgen.store.queue import row_to_job
from batchgen.store.readonly import open_readonly

SCRATCH_DIR = ".reproduce"
_HUB_COMMIT = re.compile(r"[0-9a-f]{40}")


class ReproduceError(BatchgenError):
    """A job that cannot be re-rendered as recorded (unknown, unfinished, needs a GPU this machine lacks)."""


@dataclass
class Reproduction:
    job_id: str
    file_name: str | None
    recorded_frames_sha256: str | None
    frames_sha256: str
    max_abs_diff: int | None = None
    psnr: float | None = None
    # How the pixel difference was measured, or why it could not be.
    compared: str = ""
    video_sha256_matches: bool | None = None
    # What is wrong with the recorded MP4 in OUT ("" when it is whole): frames are judged by the recorded
    # frames_sha256 either way, but a user checking a dataset must hear that a file is gone.
    recorded_video_problem: str = ""
    fingerprint_diff: list[str] = field(default_factory=list)
    fingerprint_recorded: bool = True
    # False when the row's settings no longer hash to its job id: the database was edited by hand.
    settings_match_id: bool = True
    scratch: str = ""

    @property
    def identical(self) -> bool:
        return self.recorded_frames_sha256 is not None and self.frames_sha256 == self.recorded_frames_sha256

    def report(self) -> str:
        name = f" ({self.file_name})" if self.file_name else ""
        if self.identical:
            lines = [f"{self.job_id}{name}: identical (frames sha256 {self.frames_sha256[:16]})"]
        else:
            psnr = "n/a" if self.psnr is None else ("inf" if math.isinf(self.psnr) else f"{self.psnr:.2f}")
            mad = "n/a" if self.max_abs_diff is None else str(self.max_abs_diff)
            lines = [
                f"{self.job_id}{name}: differs: max abs pixel difference {mad}, PSNR {psnr} dB "
                f"(frames sha256 {self.frames_sha256[:16]}, recorded {(self.recorded_frames_sha256 or 'none')[:16]})",
                f"  {self.compared}",
            ]
        if self.recorded_video_problem:
            lines.append(f"  {self.recorded_video_problem}; frames were compared with the recorded frames_sha256 "
                         "(`batchgen verify OUT` puts the job back in the queue)")
        if not self.settings_match_id:
            lines.append("  the recorded settings no longer hash to this job id: the database row was edited")
        if self.video_sha256_matches is False and self.identical:
            lines.append("  the same frames encode to a different MP4 here (another ffmpeg / libx264 build)")
        if not self.fingerprint_recorded:
            lines.append("  no fingerprint was recorded with this job (an older batchgen): compared what its metadata row holds")
        if self.fingerprint_diff:
            lines.append("  fingerprint fields that differ from now:")
            lines += [f"    {line}" for line in self.fingerprint_diff]
        elif not self.identical:
            lines.append("  the fingerprint is the same as now")
        lines.append(f"  re-rendered into {self.scratch}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["identical"] = self.identical
        if data["psnr"] is not None and math.isinf(data["psnr"]):
            data["psnr"] = "inf"
        return data


# -- reading OUT, read-only ---------------------------------------------------------------------------
def _read_rows(out: Path, job_ids: list[str]) -> list[dict]:
    with open_readonly(out) as store:
        rows = []
        for given in job_ids:
            found = store.rows_by_prefix(given)
            if not found:
                raise ReproduceError(f"No job {given!r} in {store.path}; `batchgen status {out}` lists the batch")
            if len(found) > 1:
                raise ReproduceError(f"{given!r} is the start of {len(found)} job ids in {out}; give more of it")
            row = found[0]
            if row["status"] != "done":
                raise ReproduceError(
                    f"Job {row['job_id']} in {out} is {row['status']}, not done: only a finished job has recorded "
                    "frames to compare with"
                )
            if not row.get("frames_sha256"):
                raise ReproduceError(f"Job {row['job_id']} in {out} has no recorded frames hash to compare with")
            rows.append(row)
        return rows


def done_job_ids(out: Path) -> list[str]:
    with open_readonly(out) as store:
        return store.done_job_ids()


def sample_job_ids(out: Path, n: int, seed: int | None = None) -> list[str]:
    """`n` done jobs of OUT drawn at random (all of them when there are fewer), in batch order."""
    ids = done_job_ids(out)
    if not ids:
        raise ReproduceError(f"{out} has no finished jobs to reproduce")
    picked = set(random.Random(seed).sample(ids, min(n, len(ids))))
    return [i for i in ids if i in picked]


def recorded_fingerprint(row: dict) -> tuple[dict, bool]:
    """The fingerprint recorded with a job; for a job from before fingerprints, what its metadata row
    holds of one. The flag says whether it is a full fingerprint."""
    if row.get("fingerprint"):
        return json.loads(row["fingerprint"]), True
    meta = json.loads(row["metadata"]) if row.get("metadata") else {}
    if meta.get("fingerprint"):
        return meta["fingerprint"], True
    partial = {k: meta[k] for k in ("resolved_revision", "profile", "precision", "versions") if k in meta}
    return partial, False


# -- rendering -----------------------------------------------------------------------------------------
@dataclass
class _Plan:
    row: dict
    job: Job
    recorded: dict
    full: bool
    revision: str | None
    profile: str
    vae_tiling: bool
    deterministic: bool
    threads: int | None  # the CPU profile's thread count: it changes how float sums round

    def group(self) -> tuple:
        return (self.job.model, self.revision, self.profile, self.job.precision, self.vae_tiling, self.deterministic,
                self.threads, checkpoint_key(self.job))


def _plan(row: dict, *, profile: str | None, device: str | None, deterministic: bool | None) -> _Plan:
    job, jid = row_to_job(row), row["job_id"]
    recorded, full = recorded_fingerprint(row)
    quality = "+quality" in job.precision
    det = "+deterministic" in job.precision
    approx = approximate.from_precision(job.precision)
    if profile is not None and (profile not in profiles.PROFILES or profile == "auto"):
        raise ReproduceError(f"--profile: {profile!r} is not a profile to reproduce with; choose one of "
                             f"{', '.join(p for p in profiles.PROFILES if p != 'auto')} of precision {job.precision}")
    chosen = profile or row.get("profile") or recorded.get("profile")
    if chosen not in profiles.PROFILES or chosen == "auto":
        raise ReproduceError(f"Job {jid} has no recorded profile; give --profile (one that renders at precision {job.precision})")
    if profiles.precision(chosen, quality, det, approx) != job.precision:
        raise ReproduceError(
            f"--profile {chosen} renders at precision {profiles.precision(chosen, quality, det, approx)}, but job {jid} was "
            f"rendered at {job.precision}: only a profile of the same precision can reproduce it"
            + profiles.kernel_hint(job.precision)
        )
    here = profiles.resolve(chosen, device)
    if profiles.precision(here.name, quality, det, approx) != job.precision:
        raise ReproduceError(
            f"Job {jid} was rendered at precision {job.precision} with profile '{chosen}'; here that resolves to "
            f"profile '{here.name}' ({here.reason}), precision {profiles.precision(here.name, quality, det, approx)}, which cannot "
            "give the same frames. Reproduce it on a machine like the one it was rendered on (see its fingerprint)."
        )
    resolved = recorded.get("resolved_revision") or ""
    revision = job.revision
    # A hub model is loaded at the commit it was rendered from, not wherever its branch points today.
    if _HUB_COMMIT.fullmatch(resolved) and families.builtin(job.model) is None and not Path(job.model).expanduser().is_dir():
        revision = resolved
    wanted = recorded.get("deterministic", {}).get("deterministic_algorithms", False) if full else False
    return _Plan(
        row=row,
        job=job,
        recorded=recorded,
        full=full,
        revision=revision,
        profile=here.name,
        vae_tiling=bool(recorded.get("vae_tiling", True)),
        deterministic=bool(deterministic) or bool(wanted) or det,
        threads=recorded.get("cpu_threads") if here.name == "cpu" and full else None,
    )


def scratch_folder(out: Path, job_id: str, scratch: Path | None = None) -> Path:
    """Where a job's re-render goes: SCRATCH/<job_id>, by default OUT/.reproduce/<job_id>, or a temporary
    folder when OUT cannot be written to (a read-only published dataset)."""
    base = Path(scratch) if scratch is not None else Path(out) / SCRATCH_DIR
    folder = base / job_id
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.touch()
        probe.unlink()
    except OSError:
        if scratch is not None:
            raise ReproduceError(f"Cannot write to the scratch folder {folder}") from None
        folder = Path(tempfile.mkdtemp(prefix=f"batchgen-reproduce-{job_id}-"))
    return folder


def pixel_difference(a, b) -> tuple[int, float]:
    """Max absolute difference and PSNR (dB, inf when equal) of two uint8 frame arrays of one shape."""
    import numpy as np

    diff = a.astype(np.int16) - b.astype(np.int16)
    mse = float(np.mean(diff.astype(np.float64) ** 2))
    psnr = math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)
    return int(np.abs(diff).max()) if diff.size else 0, psnr


def recorded_video_problem(out: Path, row: dict, sha256_file) -> str:
    """What is wrong with a done job's MP4 in OUT: missing, or its size or sha256 not the recorded ones;
    "" when it is the file that was recorded."""
    rel = row.get("output_path")
    if not rel:
        return "no video path was recorded for this job"
    path = Path(out) / rel
    if not path.is_file():
        return f"the recorded video {rel} is missing"
    size, recorded_size = path.stat().st_size, row.get("video_bytes")
    if recorded_size is not None and size != recorded_size:
        return f"the recorded video {rel} is damaged: {size} bytes, {recorded_size} recorded"
    if row.get("sha256") and sha256_file(path) != row["sha256"]:
        return f"the recorded video {rel} is damaged: its sha256 is not the recorded one"
    return ""


def _compare_videos(recorded_video: Path, new_video: Path) -> tuple[int | None, float | None, str]:
    from batchgen.outputs.video import read_mp4

    if not recorded_video.is_file():
        return None, None, f"the recorded video {recorded_video} is missing, so the size of the difference is unknown"
    a, b = read_mp4(recorded_video), read_mp4(new_video)
    if a.shape != b.shape:
        return None, None, f"the recorded video has shape {a.shape}, the re-render {b.shape}"
    mad, psnr = pixel_difference(a, b)
    how = "measured between the recorded video and the re-render encoded the same way"
    if mad == 0:
        how += (
            "; they decode to the same pixels: the frames differ by less than the video keeps, or the recorded "
            "hash is not this video's"
        )
    return mad, psnr, how


def reproduce(
    out: Path,
    job_ids: list[str],
    *,
    scratch: Path | None = None,
    profile: str | None = None,
    device: str | None = None,
    deterministic: bool | None = None,
    progress: bool = False,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
    on_result: Callable[[Reproduction], None] | None = None,
) -> list[Reproduction]:
    """Re-render each job of `job_ids` (full ids or unique prefixes) from OUT's records and compare.

    `profile` overrides the recorded profile with another of the same precision (e.g. group-offload for
    resident on a smaller GPU); `deterministic` forces deterministic mode (it is on anyway for a job that
    was rendered with it). Jobs that share a pipeline are rendered with one loaded model.
    """
    from batchgen.outputs.atomic import sha256_file
    from batchgen.engine.renderer import Renderer
    from batchgen.outputs.video import write_mp4

    out = Path(out)
    plans = [_plan(row, profile=profile, device=device, deterministic=deterministic) for row in _read_rows(out, job_ids)]
    groups: dict[tuple, list[_Plan]] = {}
    for plan in plans:
        groups.setdefault(plan.group(), []).append(plan)
    results: dict[str, Reproduction] = {}
    for (model, revision, prof, precision, vae_tiling, det, threads, checkpoint), members in groups.items():
        log(f"batchgen: re-rendering {len(members)} job(s) of {model} at {precision} (profile {prof}"
            f"{', deterministic' if det else ''}{f', {threads} CPU thread(s) as recorded' if threads else ''})")
        with determinism.settings(det), _cpu_threads(threads) as pin_threads:
            renderer = Renderer(
                model,
                revision=revision,
                profile=prof,
                quality="+quality" in precision,
                approximate=approximate.from_precision(precision),
                device=device,
                cache_dir=None,  # encode the texts again: the check covers the whole pipeline
                vae_tiling=vae_tiling,
                progress=progress,
                checkpoint=json.loads(checkpoint) if checkpoint else None,
            )
            pin_threads()  # the cpu profile's Renderer just set BATCHGEN_CPU_THREADS' count: the recorded one wins
            texts = []
            for plan in members:
                texts.append(plan.job.prompt)
                if plan.job.guidance_scale > 1:
                    texts.append(plan.job.negative_prompt)
            renderer.encode(texts)
            for plan in members:
                result = _one(out, plan, renderer, scratch, write_mp4, sha256_file)
                results[plan.row["job_id"]] = result
                if on_result is not None:
                    on_result(result)
    return [results[p.row["job_id"]] for p in plans]


@contextlib.contextmanager
def _cpu_threads(n: int | None):
    """Render with the recorded number of CPU threads: on the CPU it decides how sums are split, and so
    the last bits of the frames."""
    import torch

    old = torch.get_num_threads()

    def pin() -> None:
        if n:
            torch.set_num_threads(int(n))

    pin()
    try:
        yield pin
    finally:
        torch.set_num_threads(old)


def _one(out: Path, plan: _Plan, renderer, scratch, write_mp4, sha256_file) -> Reproduction:
    job, row = plan.job, plan.row
    rendered = renderer.render(job)
    folder = scratch_folder(out, row["job_id"], scratch)
    video = folder / f"{job.output_name}.mp4"
    write_mp4(rendered.frames, video, job.fps)
    now = fingerprint.collect(renderer)
    recorded = plan.recorded
    if not plan.full:
        now = fingerprint.restrict(now, recorded)
    result = Reproduction(
        job_id=row["job_id"],
        file_name=row.get("output_path"),
        recorded_frames_sha256=row.get("frames_sha256"),
        frames_sha256=rendered.frames_sha256,
        fingerprint_diff=fingerprint.diff(recorded, now),
        fingerprint_recorded=plan.full,
        settings_match_id=job.job_id == row["job_id"],
        scratch=str(folder),
    )
    if row.get("sha256"):
        result.video_sha256_matches = sha256_file(video) == row["sha256"]
    result.recorded_video_problem = recorded_video_problem(out, row, sha256_file)
    if not result.identical and result.recorded_video_problem:
        result.compared = f"{result.recorded_video_problem}, so the size of the difference is unknown"
    elif not result.identical:
        recorded_video = out / (row.get("output_path") or f"videos/{job.output_name}.mp4")
        result.max_abs_diff, result.psnr, result.compared = _compare_videos(recorded_video, video)
    (folder / "report.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    return result
