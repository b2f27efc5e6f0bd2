"""The job store: OUT/batchgen.db, SQLite in WAL mode through sqlite-utils. No Click, no torch."""

from __future__ import annotations

import datetime
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

import sqlite_utils

from batchgen.errors import StoreError
from batchgen.job import MOCHI_FAMILY, Job, Lora, checkpoint_key, lora_set_key
from batchgen.store.migrations import MIGRATIONS_TABLE, migrate

DB_NAME = "batchgen.db"
STATUSES = ("pending", "running", "done", "failed")


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def job_row(job: Job, position: int) -> dict:
    return {
        "job_id": job.job_id,
        "position": position,
        "status": "pending",
        "prompt": job.prompt,
        "negative_prompt": job.negative_prompt,
        "seed": str(job.seed),
        "num_frames": job.num_frames,
        "height": job.height,
        "width": job.width,
        "num_inference_steps": job.num_inference_steps,
        "guidance_scale": float(job.guidance_scale),
        "fps": job.fps,
        "model": job.model,
        "revision": job.revision,
        "precision": job.precision,
        "family": job.family,
        "output_name": job.output_name,
        "source": job.source,
        "idx": job.index,
        "checkpoint": checkpoint_key(job),
        "loras": json.dumps([lo.to_dict() for lo in job.loras]) if job.loras else None,
        "lora_set": lora_set_key(job.loras),
        "attempts": 0,
        "created_at": now(),
    }


def row_to_job(row: dict) -> Job:
    return Job(
        prompt=row["prompt"],
        negative_prompt=row["negative_prompt"] or "",
        seed=int(row["seed"]),
        num_frames=row["num_frames"],
        height=row["height"],
        width=row["width"],
        num_inference_steps=row["num_inference_steps"],
        guidance_scale=row["guidance_scale"],
        fps=row["fps"],
        model=row["model"],
        revision=row["revision"],
        precision=row["precision"],
        family=row.get("family") or MOCHI_FAMILY,  # rows from before families (m008) are Mochi's
        source=row["source"] or "",
        index=row["idx"] or 0,
        output_name=row["output_name"],
        **_checkpoint_fields(row),
    )


def _checkpoint_fields(row: dict) -> dict:
    values = json.loads(row["checkpoint"]) if row.get("checkpoint") else {}
    if row.get("loras"):
        values["loras"] = tuple(Lora.from_dict(d) for d in json.loads(row["loras"]))
    return values


def _scope(model: str, precision: str, checkpoint: str | None) -> tuple[str, tuple]:
    """The jobs one loaded pipeline renders: its model, precision and checkpoint."""
    return "model=? and precision=? and checkpoint is ?", (model, precision, checkpoint)


# SQLite's words for a disk that cannot take the write, as opposed to a file that is not a database.
_STORAGE_FAULTS = {"SQLITE_FULL", "SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_IOERR", "SQLITE_PERM"}


_STORAGE_WORDS = ("disk i/o error", "database or disk is full", "readonly database", "unable to open")


def _storage_fault(exc: sqlite3.DatabaseError) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc).lower()
    return "_".join(name.split("_")[:2]) in _STORAGE_FAULTS or any(word in text for word in _STORAGE_WORDS)


class Store:
    def __init__(self, out: Path, *, create: bool = True):
        self.out = Path(out)
        self.path = self.out / DB_NAME
        if not create and not self.path.exists():
            raise StoreError(f"No batchgen database at {self.path}: is '{self.out}' a batchgen output folder?")
        try:
            conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
            self.db = sqlite_utils.Database(conn)
            self.db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode never corrupts the database; a power cut may lose the last commits, which
            # resume treats like a crash (the video exists, the job is rendered again into a fresh name).
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._check_foreign()
            migrate(self.db)
        except sqlite3.DatabaseError as exc:
            if _storage_fault(exc):
                raise  # a full, read-only or failing disk is not a damaged database (the caller says which)
            raise StoreError(
                f"{self.path} is not a usable batchgen database ({exc}). Move it aside to start a new batch "
                "in this folder; finished videos and metadata.jsonl are left as they are."
            ) from exc

    def _check_foreign(self) -> None:
        names = set(self.db.table_names())
        if names and MIGRATIONS_TABLE not in names:
            raise StoreError(
                f"{self.path} is an SQLite database, but not batchgen's (tables: {', '.join(sorted(names))}). "
                "Choose another output folder, or move that file aside."
            )

    def close(self) -> None:
        self.db.conn.close()

    # -- adding ------------------------------------------------------------------------------------
    def add_jobs(self, jobs: Iterable[Job]) -> int:
        """Insert jobs not yet known; returns how many were new. Refuses a name taken by another job."""
        jobs = list(jobs)
        known = {r["job_id"]: r for r in self.db.query("select job_id, output_name from jobs")}
        names = {r["output_name"].casefold(): jid for jid, r in known.items()}
        start = self.db.execute("select coalesce(max(position), -1) + 1 from jobs").fetchone()[0]
        rows = []
        for job in jobs:
            jid = job.job_id
            if jid in known:
                continue
            other = names.get(job.output_name.casefold())
            if other is not None and other != jid:
                raise StoreError(
                    f"{job.source}: output name '{job.output_name}' is already used in {self.out} by job {other}, "
                    "which has different settings (another model, precision, prompt or seed?). "
                    "Use another --out, or an output_name template with {job_id}; nothing is overwritten."
                )
            names[job.output_name.casefold()] = jid
            rows.append(job_row(job, start + len(rows)))
        with self.db.conn:
            self.db["jobs"].insert_all(rows, batch_size=500)
        return len(rows)

    # -- state changes -----------------------------------------------------------------------------
    def reset_running(self) -> int:
        """Jobs left `running` by a run that died go back to pending (the caller holds the folder lock)."""
        with self.db.conn:
            cur = self.db.execute("update jobs set status='pending', worker=null where status='running'")
        return cur.rowcount

    def claim(self, *, model: str, precision: str, worker: str = "", lease_seconds: float | None = None,
              checkpoint: str | None = None) -> Job | None:
        """Atomically take the next job of this pipeline; jobs of one LoRA set, then of one shape, come together.

        With a lease, a job whose holder stopped renewing it (a dead worker) is taken over once the
        lease lapses; without one, only pending jobs are taken (a single run resets its own leftovers).
        """
        worker = worker or f"{socket.gethostname()}:{os.getpid()}"
        clock = time.time()
        conn = self.db.conn
        conn.execute("begin immediate")
        try:
            # Two look-ups along the claim-order index (m003) rather than one with an OR, which would
            # sort every pending job on every claim: about 7 ms a claim at 10,000 jobs.
            where, args = _scope(model, precision, checkpoint)
            pick = f"select lora_set, height, width, num_frames, position, job_id from jobs where {where} and "
            order = " order by lora_set, height, width, num_frames, position limit 1"
            found = [
                conn.execute(pick + "status='pending'" + order, args).fetchone(),
                conn.execute(
                    pick + "status='running' and lease_until is not null and lease_until < ?" + order,
                    (*args, clock),
                ).fetchone(),
            ]
            found = [f for f in found if f is not None]
            row = (min(found)[5],) if found else None
            if row is None:
                conn.execute("commit")
                return None
            conn.execute(
                "update jobs set status='running', attempts=attempts+1, started_at=?, worker=?, error=null, "
                "lease_until=? where job_id=?",
                (now(), worker, clock + lease_seconds if lease_seconds else None, row[0]),
            )
            conn.execute("commit")
        except BaseException:
            conn.execute("rollback")
            raise
        return self.get_job(row[0])

    def renew(self, job_id: str, worker: str, lease_seconds: float) -> bool:
        """Extend a worker's lease; False when the job is no longer its own (taken over after a lapse)."""
        with self.db.conn:
            cur = self.db.execute(
                "update jobs set lease_until=? where job_id=? and worker=? and status='running'",
                [time.time() + lease_seconds, job_id, worker],
            )
        return cur.rowcount == 1

    def release(self, job_id: str) -> None:
        """Put an interrupted job back to pending; its attempt does not count."""
        with self.db.conn:
            self.db.execute(
                "update jobs set status='pending', worker=null, attempts=max(attempts-1, 0) "
                "where job_id=? and status='running'",
                [job_id],
            )

    def mark_done(self, job_id: str, fields: dict) -> None:
        fields = dict(fields, status="done", finished_at=fields.get("finished_at") or now(), error=None)
        self._update(job_id, fields)

    def note(self, job_id: str, text: str) -> None:
        """Keep a line of what happened to a job (an OOM step-down) beside its record."""
        with self.db.conn:
            self.db.execute(
                "update jobs set notes = coalesce(notes || char(10), '') || ? where job_id=?", [text, job_id]
            )

    def set_output_path(self, job_id: str, output_path: str) -> None:
        self._update(job_id, {"output_path": output_path})

    def _update(self, job_id: str, fields: dict) -> None:
        # Plain SQL: sqlite-utils' update() reads the row first, a second round trip on every job.
        assignments = ", ".join(f"[{name}]=?" for name in fields)
        with self.db.conn:
            self.db.execute(f"update jobs set {assignments} where job_id=?", [*fields.values(), job_id])

    def mark_failed(self, job_id: str, error: str) -> None:
        with self.db.conn:
            self.db["jobs"].update(job_id, {"status": "failed", "error": error, "finished_at": now(), "worker": None})

    def retry_failed(self) -> int:
        with self.db.conn:
            cur = self.db.execute("update jobs set status='pending', error=null where status='failed'")
        return cur.rowcount

    def mark_pending(self, job_id: str, error: str | None = None) -> None:
        with self.db.conn:
            self.db["jobs"].update(
                job_id, {"status": "pending", "error": error, "output_path": None, "sha256": None, "metadata": None}
            )

    # -- reading -----------------------------------------------------------------------------------
    def get_row(self, job_id: str) -> dict | None:
        rows = list(self.db.query("select * from jobs where job_id=?", [job_id]))
        return rows[0] if rows else None

    def get_job(self, job_id: str) -> Job:
        row = self.get_row(job_id)
        if row is None:
            raise StoreError(f"No job {job_id} in {self.path}")
        return row_to_job(row)

    def counts(self) -> dict:
        counts = {s: 0 for s in STATUSES}
        for status, n in self.db.execute("select status, count(*) from jobs group by status").fetchall():
            counts[status] = n
        return {"total": sum(counts.values()), **counts}

    def precisions(self, *, model: str) -> dict[str, int]:
        """How many jobs of `model` the folder holds at each precision."""
        rows = self.db.execute("select precision, count(*) from jobs where model=? group by precision", (model,))
        return dict(rows.fetchall())

    def pending_count(self, *, model: str, precision: str, checkpoint: str | None = None) -> int:
        where, args = _scope(model, precision, checkpoint)
        return self.db.execute(f"select count(*) from jobs where status='pending' and {where}", args).fetchone()[0]

    def running_count(self, *, model: str, precision: str, checkpoint: str | None = None) -> int:
        where, args = _scope(model, precision, checkpoint)
        return self.db.execute(f"select count(*) from jobs where status='running' and {where}", args).fetchone()[0]

    def pending_texts(self, *, model: str, precision: str, checkpoint: str | None = None) -> list[str]:
        """Every text the pending jobs of this pipeline need encoded, prompts and negative prompts."""
        texts: list[str] = []
        where, args = _scope(model, precision, checkpoint)
        for prompt, negative, guidance in self.db.execute(
            "select prompt, negative_prompt, guidance_scale from jobs where status in ('pending', 'running') and "
            f"{where} order by position",
            args,
        ).fetchall():
            texts.append(prompt)
            if guidance > 1:
                texts.append(negative or "")
        return list(dict.fromkeys(texts))

    def job_states(self) -> dict[str, tuple[str, str]]:
        """Every job of the folder: job id -> (status, output name). Read-only."""
        rows = self.db.execute("select job_id, status, output_name from jobs").fetchall()
        return {job_id: (status, name) for job_id, status, name in rows}

    def done_rows(self) -> list[dict]:
        return list(self.db.query("select * from jobs where status='done' order by position"))

    def rows(self, status: str | None = None) -> list[dict]:
        if status:
            return list(self.db.query("select * from jobs where status=? order by position", [status]))
        return list(self.db.query("select * from jobs order by position"))

    # -- runs --------------------------------------------------------------------------------------
    def start_run(self, **fields) -> int:
        with self.db.conn:
            table = self.db["runs"].insert(
                dict(fields, started_at=now(), pid=os.getpid(), host=socket.gethostname())
            )
        return table.last_pk

    def finish_run(self, run_id: int, exit: str) -> None:
        with self.db.conn:
            self.db["runs"].update(run_id, {"finished_at": now(), "exit": exit})

    def metadata_rows(self) -> list[dict]:
        return [json.loads(r["metadata"]) for r in self.done_rows() if r["metadata"]]
