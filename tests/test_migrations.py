"""The schema that the append-only migrations build, column by column, and an upgrade from the first one."""

from __future__ import annotations

import sqlite3

import sqlite_utils

from batchgen.job import Job
from batchgen.store.migrations import MIGRATIONS, MIGRATIONS_TABLE
from batchgen.store.queue import DB_NAME, Store, job_row

# The contract every later step must keep: a new column is a new migration, added at the end here too.
JOBS = [
    ("job_id", "TEXT"), ("position", "INTEGER"), ("status", "TEXT"), ("prompt", "TEXT"), ("negative_prompt", "TEXT"),
    ("seed", "TEXT"), ("num_frames", "INTEGER"), ("height", "INTEGER"), ("width", "INTEGER"),
    ("num_inference_steps", "INTEGER"), ("guidance_scale", "REAL"), ("fps", "INTEGER"), ("model", "TEXT"),
    ("revision", "TEXT"), ("precision", "TEXT"), ("output_name", "TEXT"), ("source", "TEXT"), ("idx", "INTEGER"),
    ("attempts", "INTEGER"), ("error", "TEXT"), ("created_at", "TEXT"), ("started_at", "TEXT"),
    ("finished_at", "TEXT"), ("render_seconds", "REAL"), ("seconds_per_step", "REAL"),
    ("peak_vram_allocated", "INTEGER"), ("peak_vram_reserved", "INTEGER"), ("output_path", "TEXT"),
    ("sha256", "TEXT"), ("frames_sha256", "TEXT"), ("profile", "TEXT"), ("worker", "TEXT"), ("metadata", "TEXT"),
    ("lease_until", "REAL"), ("fingerprint", "TEXT"), ("notes", "TEXT"), ("video_bytes", "INTEGER"),
    ("checkpoint", "TEXT"), ("loras", "TEXT"), ("lora_set", "TEXT"),
    ("family", "TEXT"),
]
RUNS = [("id", "INTEGER"), ("started_at", "TEXT"), ("finished_at", "TEXT"), ("pid", "INTEGER"), ("host", "TEXT"),
        ("manifest", "TEXT"), ("model", "TEXT"), ("profile", "TEXT"), ("profile_reason", "TEXT"), ("exit", "TEXT")]
NAMED = {"idx_jobs_status_model_precision", "idx_jobs_output_name", "idx_jobs_claim_order",
         "jobs_video_bytes_follow_sha256", "idx_jobs_claim_order_lora"}


def _schema(path):
    conn = sqlite3.connect(path)
    try:
        tables = {t: [(r[1], r[2]) for r in conn.execute(f"pragma table_info({t})")] for t in ("jobs", "runs")}
        named = {r[0] for r in conn.execute(
            "select name from sqlite_master where type in ('index', 'trigger') and name not like 'sqlite_%'")}
        applied = [r[0] for r in conn.execute(f"select name from {MIGRATIONS_TABLE} order by rowid")]
    finally:
        conn.close()
    return tables, named, applied


def test_a_new_database_has_the_final_schema_column_by_column(tmp_path):
    Store(tmp_path).close()
    tables, named, applied = _schema(tmp_path / DB_NAME)
    assert tables["jobs"] == JOBS
    assert tables["runs"] == RUNS
    assert named == NAMED
    assert applied == [fn.__name__ for fn in MIGRATIONS]


def test_a_database_made_with_the_first_schema_upgrades_and_keeps_its_jobs(tmp_path):
    db = sqlite_utils.Database(tmp_path / DB_NAME)
    db[MIGRATIONS_TABLE].create({"name": str, "applied_at": str}, pk="name")
    MIGRATIONS[0](db)
    db[MIGRATIONS_TABLE].insert({"name": MIGRATIONS[0].__name__, "applied_at": "2026-01-01T00:00:00+00:00"})
    job = Job(prompt="a fox", seed=7, model="tiny", precision="fp32", output_name="fox")
    first_columns = {c.name for c in db["jobs"].columns}
    db["jobs"].insert({k: v for k, v in job_row(job, 0).items() if k in first_columns})
    db.conn.close()

    store = Store(tmp_path)
    try:
        claimed = store.claim(model="tiny", precision="fp32")
    finally:
        store.close()
    tables, named, applied = _schema(tmp_path / DB_NAME)
    assert tables["jobs"] == JOBS and tables["runs"] == RUNS and named == NAMED
    assert applied == [fn.__name__ for fn in MIGRATIONS]
    assert claimed is not None and claimed.job_id == job.job_id and claimed.prompt == "a fox"
