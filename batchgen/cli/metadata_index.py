"""`batchgen index OUT [--rebuild]`: compare metadata.jsonl with the database, or rewrite it from it.

The command keeps the name users know, `index`; in the code "metadata index" is metadata.jsonl
(outputs/metadata_index.py), "gallery page" is OUT/index.html and "index" alone is a database index.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from batchgen.cli.common import friendly


@click.command(name="index")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--rebuild", is_flag=True, help="Rewrite metadata.jsonl from the database.")
@friendly
def metadata_index_command(out: Path, rebuild: bool) -> None:
    """Check that OUT/metadata.jsonl matches the database (exit 1 if not), or --rebuild it from the database."""
    from batchgen.outputs import metadata_index
    from batchgen.run.lock import FolderLock
    from batchgen.store.queue import Store
    from batchgen.outputs.verify import compare_metadata

    store = Store(out, create=False)
    try:
        report = compare_metadata(out, store)
        if rebuild:
            # A render appending rows meanwhile could land a row in the file being replaced.
            with FolderLock(out):
                rows = metadata_index.rebuild(out, store)
            click.echo(f"{out / metadata_index.METADATA_FILE} rebuilt from the database: {rows} row(s) (it had {report.lines}).")
            return
    finally:
        store.close()
    if report.ok:
        click.echo(f"{out / metadata_index.METADATA_FILE} matches the database: {report.expected} row(s).")
        return
    click.echo(f"{out / metadata_index.METADATA_FILE} does not match the database ({report.lines} row(s), {report.expected} expected):")
    for line in report.explain():
        click.echo(line)
    click.echo(f"The database is the record: `batchgen index {out} --rebuild` rewrites the file from it.")
    sys.exit(1)
