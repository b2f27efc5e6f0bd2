"""The database schema as append-only named migrations, so every old batchgen.db upgrades itself.

Never edit or reorder a migration once released: add a new one. Applied names are recorded in
`_batchgen_migrations`.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

import sqlite_utils

MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = []
migration = MIGRATIONS.append

MIGRATIONS_TABLE = "_batchgen_migrations"


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply every migration not yet recorded; returns the names applied now."""
    table = db[MIGRATIONS_TABLE]
    if not table.exists():
        table.create({"name": str, "applied_at": str}, pk="name")
    done = {row["name"] for row in table.rows}
    applied = []
    for fn in MIGRATIONS:
        if fn.__name__ in done:
            continue
        with db.conn:
            fn(db)
            table.insert({"name": fn.__name__, "applied_at": _now()})
        applied.append(fn.__name__)
    return applied


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@migration
def m001_initial(db: sqlite_utils.Database) -> None:
    db["jobs"].create(
        {
            "job_id": str,
            "position": int,
            "status": str,
            "prompt": str,
            "negative_prompt": str,
            "seed": str,  # text: seeds reach 2**64-1, beyond SQLite's signed 64-bit integers
            "num_frames": int,
            "height": int,
            "width": int,
            "num_inference_steps": int,
            "guidance_scale": float,
            "fps": int,
            "model": str,
            "revision": str,
            "precision": str,
            "output_name": str,
            "source": str,
            "idx": int,
            "attempts": int,
            "error": str,
            "created_at": str,
            "started_at": str,
            "finished_at": str,
            "render_seconds": float,
            "seconds_per_step": float,
            "peak_vram_allocated": int,
            "peak_vram_reserved": int,
            "output_path": str,
            "sha256": str,
            "frames_sha256": str,
            "profile": str,
            "worker": str,
            "metadata": str,
        },
        pk="job_id",
        not_null={"status", "prompt", "output_name"},
        defaults={"status": "pending", "attempts": 0},
    )
    db["jobs"].create_index(["status", "model", "precision"])
    db["jobs"].create_index(["output_name"])
    db["runs"].create(
        {
            "id": int,
            "started_at": str,
            "finished_at": str,
            "pid": int,
            "host": str,
            "manifest": str,
            "model": str,
            "profile": str,
            "profile_reason": str,
            "exit": str,
        },
        pk="id",
    )


@migration
def m004_leases(db: sqlite_utils.Database) -> None:
    # Epoch seconds until which a worker holds its running job; NULL for a single run's own claims.
    db["jobs"].add_column("lease_until", float)


@migration
def m002_fingerprint(db: sqlite_utils.Database) -> None:
    # JSON of batchgen.engine.fingerprint.collect(): what besides the job's settings decided its pixels.
    db["jobs"].add_column("fingerprint", str)


@migration
def m003_reliability(db: sqlite_utils.Database) -> None:
    # Claim order as an index: taking the next job reads one index entry instead of sorting every pending
    # job each time (about 7 ms a claim at 10,000 jobs without it).
    db["jobs"].create_index(
        ["status", "model", "precision", "height", "width", "num_frames", "position"],
        index_name="idx_jobs_claim_order",
        if_not_exists=True,
    )


@migration
def m005_notes(db: sqlite_utils.Database) -> None:
    # Free-text history of a job (OOM step-downs), kept apart from `error`, which a success clears.
    db["jobs"].add_column("notes", str)


@migration
def m006_video_bytes(db: sqlite_utils.Database) -> None:
    # The finished video's size in bytes: every render's start compares it with one stat per video, which
    # catches a truncated file without hashing it. A size left from an earlier file would send a good video
    # to quarantine, so it is forgotten whenever the recorded sha256 changes without it (mark_pending, a
    # re-render that does not record its size).
    db["jobs"].add_column("video_bytes", int)
    db.execute(
        """
        create trigger if not exists jobs_video_bytes_follow_sha256
        after update of sha256 on jobs
        when new.sha256 is not old.sha256 and new.video_bytes is old.video_bytes
        begin
            update jobs set video_bytes = null where job_id = new.job_id;
        end
        """
    )


@migration
def m007_checkpoints(db: sqlite_utils.Database) -> None:
    # The checkpoint beside the model (JSON of variant / transformer / transformer_revision, NULL for the
    # model's own files) and the job's LoRAs (JSON list). Claims filter on the checkpoint: a folder that also
    # holds jobs of another transformer never renders them with this one. `lora_set` groups jobs with the
    # same LoRAs at the same scales, so a batch loads each set once ('' for none).
    db["jobs"].add_column("checkpoint", str)
    db["jobs"].add_column("loras", str)
    db["jobs"].add_column("lora_set", str, not_null_default="")
    db["jobs"].create_index(
        ["status", "model", "precision", "lora_set", "height", "width", "num_frames", "position"],
        index_name="idx_jobs_claim_order_lora",
        if_not_exists=True,
    )


@migration
def m008_family(db: sqlite_utils.Database) -> None:
    # The job's model family (batchgen.engine.families): part of non-Mochi job ids, so a row read back must
    # keep it. NULL in rows from before families: Mochi.
    db["jobs"].add_column("family", str)
