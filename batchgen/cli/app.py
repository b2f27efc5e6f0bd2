"""The command line: a thin layer over the library. Every user error exits non-zero without a traceback."""

from __future__ import annotations

import os

import click

from batchgen.cli.batch import render, retry, status, validate
from batchgen.cli.doctor import doctor
from batchgen.cli.export import export
from batchgen.cli.metadata_index import metadata_index_command
from batchgen.cli.reproduce import reproduce
from batchgen.cli.sheet import sheet
from batchgen.cli.verify import verify


@click.group()
@click.version_option(package_name="batchgen")
def cli() -> None:
    """Render batches of text-to-video jobs with Mochi 1, resumably."""
    # Before CUDA starts (worker processes inherit it): jobs of several shapes in one process fragment the
    # caching allocator; expandable segments cut the 163-frame resident peak reserved from 28.7 to 27.0 GiB
    # on the H100 (benchmarks/RESULTS.md, run 8) at the same speed. A user's own setting wins.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    from batchgen.engine.environment import quiet_library_logs

    quiet_library_logs()


for command in (render, validate, status, retry, reproduce, verify, sheet, doctor, export, metadata_index_command):
    cli.add_command(command)


def main() -> None:
    from batchgen.run.signals import install_for_cli

    install_for_cli()  # every command: a kill is obeyed at once, quietly, or at the run's next safe point
    cli()


if __name__ == "__main__":
    main()
