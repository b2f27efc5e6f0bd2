"""What every command shares: user errors printed as one paragraph with their exit code, never a traceback."""

from __future__ import annotations

import functools
import sys

import click

from batchgen.errors import BatchgenError


def friendly(fn):
    """Print BatchgenError as one paragraph and exit with its code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BatchgenError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper


def progress_options(fn):
    """`--progress auto|bars|lines|none` and its older spelling `--no-progress` (= none), handed to the
    command as one `progress` mode string."""

    @functools.wraps(fn)
    def wrapper(*args, progress: str, no_progress: bool, **kwargs):
        return fn(*args, progress="none" if no_progress else progress, **kwargs)

    wrapper = click.option("--no-progress", is_flag=True, help="No progress output: same as --progress none.")(wrapper)
    return click.option(
        "--progress", type=click.Choice(["auto", "bars", "lines", "none"]), default="auto", show_default=True,
        help="bars: redrawn bars for a terminal; lines: one plain line per finished job with the batch's ETA, "
             "for a log file; auto: bars on a terminal, lines otherwise.")(wrapper)
