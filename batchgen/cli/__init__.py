"""The command line, the only part of batchgen that imports click: one module per command group."""

from batchgen.cli.app import cli, main

__all__ = ["cli", "main"]
