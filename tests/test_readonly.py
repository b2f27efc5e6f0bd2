"""store/readonly.py: the read-only access that reproduce, doctor and previous runs' records share."""

import re
import sqlite3
from pathlib import Path

import pytest

from batchgen.errors import StoreError
from batchgen.store.readonly import DatabaseMissing, NotBatchgenDatabase, open_readonly
from fakerun import make_run

PACKAGE = Path(__file__).resolve().parents[1] / "batchgen"


@pytest.fixture
def out(tmp_path):
    store = make_run(tmp_path / "out", [
        {"prompt": "a", "seed": 1}, {"prompt": "b", "seed": 2},
        {"prompt": "c", "status": "pending"}, {"prompt": "d", "status": "failed"},
    ])
    store.close()
    return tmp_path / "out"


def test_typed_reads_of_a_batch(out):
    with open_readonly(out) as store:
        rows = store.all_rows()
        assert [r["prompt"] for r in rows] == ["a", "b", "c", "d"]
        done = store.done_job_ids()
        assert done == [r["job_id"] for r in rows if r["status"] == "done"] and len(done) == 2
        assert store.remaining_count() == 1
        assert store.done_output_paths() == [r["output_path"] for r in rows[:2]]
        assert store.done_fingerprints() == []  # fakerun records none
        [row] = store.rows_by_prefix(done[0][:10])
        assert row["job_id"] == done[0]
        assert store.rows_by_prefix("zz") == []
        # A prefix with LIKE's wildcards matches literally, not as a pattern.
        assert store.rows_by_prefix("%") == [] and store.rows_by_prefix("_") == []


def test_the_database_file_itself_can_be_given(out):
    with open_readonly(out / "batchgen.db") as store:
        assert len(store.all_rows()) == 4


def test_reading_never_writes(out):
    db = out / "batchgen.db"
    before = db.read_bytes()
    with open_readonly(out) as store:
        store.all_rows()
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store._conn.execute("delete from jobs")
    assert db.read_bytes() == before


def test_missing_foreign_and_damaged_files_are_named(tmp_path):
    with pytest.raises(DatabaseMissing, match=r"No batchgen database at .*nowhere"):
        open_readonly(tmp_path / "nowhere")
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("create table things (x)")
    conn.commit()
    conn.close()
    with pytest.raises(NotBatchgenDatabase, match="not batchgen's .no jobs table.") as info:
        open_readonly(foreign)
    assert str(foreign) in str(info.value)
    junk = tmp_path / "junk" / "batchgen.db"
    junk.parent.mkdir()
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(NotBatchgenDatabase, match="not a usable batchgen database") as info:
        open_readonly(junk.parent)
    assert isinstance(info.value, StoreError) and info.value.exit_code == 2


def test_only_the_store_opens_sqlite_connections():
    # reproduce, doctor and the records reader go through store/readonly.py, not SQL of their own.
    offenders = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
                 if p.parent.name != "store" and re.search(r"sqlite3\.connect\(", p.read_text(encoding="utf-8"))]
    assert offenders == []
