"""`batchgen verify OUT [--decode]`: check every finished video against its checksum; requeue the bad ones."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from batchgen.cli.common import friendly


@click.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--decode", is_flag=True, help="Also decode every video and count its frames (slower).")
@friendly
def verify(out: Path, decode: bool) -> None:
    """Check every finished video of OUT against the sha256 recorded when it was written.

    Missing or damaged videos go back to pending (damaged ones are moved to OUT/quarantine/, never
    deleted) and metadata.jsonl is rewritten from the database; exit status 1 when anything was wrong.
    """
    from batchgen.outputs import verify as checks
    from batchgen.outputs.metadata_index import METADATA_FILE
    from batchgen.run.lock import FolderLock
    from batchgen.store.queue import Store

    store = Store(out, create=False)
    try:
        # Nothing may render while jobs are requeued and the index rewritten.
        with FolderLock(out):
            report = checks.verify(out, store, decode=decode)
    finally:
        store.close()
    how = "sha256 and decoded" if decode else "sha256"
    bad = len(report.problems)
    click.echo(f"{out}: {report.checked} finished video(s) checked ({how}): {report.checked - bad} ok, {bad} bad")
    for problem in report.problems:
        click.echo(problem.line())
    if not report.metadata.ok:
        click.echo(f"{METADATA_FILE} did not match the database:")
        for line in report.metadata.explain():
            click.echo(line)
    if report.rebuilt:
        click.echo(f"{METADATA_FILE} rewritten from the database: {report.metadata_rows} row(s).")
    if bad:
        click.echo(f"{bad} job(s) back to pending: run `batchgen render` with the same manifest and --out {out} to render them again.")
    sys.exit(0 if report.ok else 1)
