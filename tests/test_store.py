import sqlite3

import pytest
import sqlite_utils

from batchgen.errors import StoreError
from batchgen.job import Job
from batchgen.store.migrations import MIGRATIONS, MIGRATIONS_TABLE, migrate
from batchgen.store import Store


def jobs(n, **kw):
    return [Job(prompt=f"prompt {i}", seed=i, output_name=f"v{i}", source=f"m.yaml:{i}", **kw) for i in range(n)]


def test_migrations_are_recorded_and_applied_once(tmp_path):
    db = sqlite_utils.Database(tmp_path / "x.db")
    assert migrate(db) == [m.__name__ for m in MIGRATIONS]
    assert migrate(db) == []
    assert {r["name"] for r in db[MIGRATIONS_TABLE].rows} == {m.__name__ for m in MIGRATIONS}


def test_add_is_idempotent_and_claims_each_job_once(tmp_path):
    store = Store(tmp_path)
    assert store.add_jobs(jobs(3)) == 3
    assert store.add_jobs(jobs(3)) == 0
    seen = []
    while (job := store.claim(model="tiny", precision="fp32")) is not None:
        seen.append(job.job_id)
    assert sorted(seen) == sorted(j.job_id for j in jobs(3))
    assert store.counts() == {"total": 3, "pending": 0, "running": 3, "done": 0, "failed": 0}


def test_claim_filters_by_pipeline(tmp_path):
    store = Store(tmp_path)
    store.add_jobs(jobs(2, precision="bf16"))
    assert store.claim(model="tiny", precision="fp32") is None
    assert store.claim(model="tiny", precision="bf16") is not None


def test_release_reset_and_retry(tmp_path):
    store = Store(tmp_path)
    store.add_jobs(jobs(2))
    a = store.claim(model="tiny", precision="fp32")
    b = store.claim(model="tiny", precision="fp32")
    store.release(a.job_id)
    assert store.get_row(a.job_id)["status"] == "pending"
    assert store.get_row(a.job_id)["attempts"] == 0
    store.mark_failed(b.job_id, "RuntimeError: boom")
    assert store.counts()["failed"] == 1
    assert store.retry_failed() == 1
    c = store.claim(model="tiny", precision="fp32")
    assert store.reset_running() == 1
    assert store.get_row(c.job_id)["status"] == "pending"


def test_seed_beyond_signed_64_bits_round_trips(tmp_path):
    store = Store(tmp_path)
    job = Job(prompt="p", seed=2**64 - 1, output_name="big")
    store.add_jobs([job])
    assert store.get_job(job.job_id).seed == 2**64 - 1
    assert store.get_job(job.job_id).job_id == job.job_id


def test_output_name_taken_by_a_different_job_is_refused(tmp_path):
    store = Store(tmp_path)
    store.add_jobs([Job(prompt="p", seed=1, output_name="same")])
    with pytest.raises(StoreError, match="already used"):
        store.add_jobs([Job(prompt="p", seed=2, output_name="SAME", source="m.yaml:3")])


def test_foreign_and_corrupt_databases_are_explained(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    sqlite3.connect(foreign / "batchgen.db").execute("create table photos (id int)").connection.commit()
    with pytest.raises(StoreError, match="not batchgen's"):
        Store(foreign)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "batchgen.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a usable batchgen database"):
        Store(corrupt)


def test_missing_database_is_explained(tmp_path):
    with pytest.raises(StoreError, match="No batchgen database"):
        Store(tmp_path / "nowhere", create=False)
