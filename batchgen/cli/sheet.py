"""`batchgen sheet OUT`: a PNG contact sheet of a batch."""

from __future__ import annotations

from pathlib import Path

import click

from batchgen.cli.common import friendly


@click.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="PNG to write (default OUT/contact_sheet.png; big batches get -001, -002, ... pages).")
@click.option("--columns", type=click.IntRange(min=1), default=1, show_default=True,
              help="Videos side by side; each shows its first, middle and last frame.")
@click.option("--per-page", type=click.IntRange(min=1), default=200, show_default=True,
              help="Videos per PNG.")
@click.option("--thumb-width", type=click.IntRange(min=16, max=2048), default=256, show_default=True,
              help="Width of each frame in pixels.")
@friendly
def sheet(out: Path, output: Path | None, columns: int, per_page: int, thumb_width: int) -> None:
    """Write a contact sheet of OUT: first, middle and last frame of every finished video."""
    from batchgen.outputs.sheet import write_sheets
    from batchgen.store.queue import Store

    store = Store(out, create=False)
    try:
        paths = write_sheets(out, store, output=output, columns=columns, per_page=per_page, thumb_width=thumb_width)
    finally:
        store.close()
    for path in paths:
        click.echo(str(path))
