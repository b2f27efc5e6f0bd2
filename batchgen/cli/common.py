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
