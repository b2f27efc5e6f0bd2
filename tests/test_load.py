"""A 10,000-job batch's bookkeeping, without rendering: every job claimed once, done once, indexed once.
The timings are printed by benchmarks/bookkeeping.py; here only the outcome is checked."""

import sys
from pathlib import Path

from click.testing import CliRunner

from batchgen.cli.app import cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bookkeeping  # noqa: E402

JOBS = 10_000


def test_ten_thousand_jobs_are_each_claimed_done_and_indexed_exactly_once(tmp_path, capsys):
    result = bookkeeping.run(tmp_path, JOBS)
    assert result["jobs"] == JOBS and result["added"] == JOBS
    assert len(result["claimed"]) == JOBS and len(set(result["claimed"])) == JOBS
    assert result["counts"] == {"total": JOBS, "pending": 0, "running": 0, "done": JOBS, "failed": 0}
    rows = result["index_rows"]
    assert len(rows) == JOBS and {r["job_id"] for r in rows} == set(result["claimed"])
    assert len({r["file_name"] for r in rows}) == JOBS
    # The start-of-run check finds nothing to requeue, and the rebuild writes the same rows.
    assert result["requeued"] == 0 and result["rebuilt_rows"] == JOBS
    # Claims follow the queue's order: one shape, then manifest position.
    assert result["claimed"][:3] == [r["job_id"] for r in rows[:3]]
    s = result["seconds"]
    per_job = 1000 * sum(s[k] for k in ("claim", "set_output_path", "mark_done", "index.append")) / JOBS
    with capsys.disabled():
        print(f"\nbookkeeping at {JOBS} jobs: validate {s['load_manifest'] + s['expand']:.2f} s, {per_job:.2f} ms/job "
              "(claim + set_output_path + mark_done + index.append)")


def test_a_ten_thousand_job_manifest_validates(tmp_path):
    manifest = bookkeeping.write_manifest(tmp_path, JOBS)
    result = CliRunner().invoke(cli, ["validate", str(manifest)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"OK, {JOBS} job(s)" in result.output
