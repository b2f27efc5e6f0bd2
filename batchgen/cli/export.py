"""`batchgen export OUT --layout vbench|webdataset DEST`: a finished run in another tool's layout."""

from __future__ import annotations

from pathlib import Path

import click

from batchgen.cli.common import friendly


@click.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--layout", type=click.Choice(["vbench", "webdataset"]), required=True,
              help="vbench: DEST/<prompt>-<index>.mp4 (hard links where possible); webdataset: tar shards.")
@click.option("--shard-size", type=click.IntRange(min=1), default=100, show_default=True,
              help="Samples per webdataset shard.")
@friendly
def export(out: Path, dest: Path, layout: str, shard_size: int) -> None:
    """Write the finished videos of OUT into DEST in another layout, without re-rendering.

    Nothing in DEST is overwritten; files already there with the same content are skipped, so the
    export can be repeated as a batch grows.
    """
    from batchgen.outputs.export import export as run_export
    from batchgen.store.queue import Store

    store = Store(out, create=False)
    try:
        result = run_export(out, store, layout, dest, shard_size=shard_size)
    finally:
        store.close()
    how = f" ({result.linked} hard-linked, {result.copied} copied)" if layout == "vbench" else ""
    click.echo(f"{len(result.written)} file(s) written to {dest}{how}, {len(result.skipped)} already there")
