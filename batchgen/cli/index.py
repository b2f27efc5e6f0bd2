"""`batchgen index OUT [--rebuild]`: compare metadata.jsonl with the database, or rewrite it from it."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from batchgen.cli.common import friendly


@click.command(name="index")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--rebuild", is_flag=True, help="Rewrite metadata.jsonl from the database.")
@friendly
def index_command(out: Path, rebuild: bool) -> None:
    """Check that OUT/metadata.jsonl matches the database (exit 1 if not), or --rebuild it from the database."""
    from batchgen.outputs import metadata_index as index
    from batchgen.run.lock import FolderLock
    from batchgen.store.queue import Store
    from batchgen.outputs.verify import compare_index

    store = Store(out, create=False)
    try:
        report = compare_index(out, store)
        if rebuild:
            # A render appending rows meanwhile could land a row in the file being replaced.
            with FolderLock(out):
                rows = index.rebuild(out, store)
            click.echo(f"{out / index.INDEX_NAME} rebuilt from the database: {rows} row(s) (it had {report.lines}).")
            return
    finally:
        store.close()
    if report.ok:
        click.echo(f"{out / index.INDEX_NAME} matches the database: {report.expected} row(s).")
        return
    click.echo(f"{out / index.INDEX_NAME} does not match the database ({report.lines} row(s), {report.expected} expected):")
    for line in report.explain():
        click.echo(line)
    click.echo(f"The database is the record: `batchgen index {out} --rebuild` rewrites the file from it.")
    sys.exit(1)
