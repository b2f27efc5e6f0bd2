"""The README's Commands table lists every command the CLI has, and the options it documents exist."""

import re
from pathlib import Path

from batchgen.cli.app import cli

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def commands_table() -> str:
    section = README.split("## Commands", 1)[1].split("\n## ", 1)[0]
    return "\n".join(line for line in section.splitlines() if line.startswith("| `batchgen "))


def test_every_command_is_in_the_commands_table():
    listed = set(re.findall(r"^\| `batchgen ([a-z-]+)", commands_table(), flags=re.M))
    assert listed == set(cli.commands), sorted(set(cli.commands) ^ listed)


def test_the_render_row_names_options_render_has():
    row = next(line for line in commands_table().splitlines() if line.startswith("| `batchgen render"))
    options = {p.opts[0] for p in cli.commands["render"].params if p.opts[0].startswith("--")}
    named = set(re.findall(r"`(--[a-z-]+)", row.split("|")[2]))
    assert named and named <= options, named - options
    assert "--progress" in named
