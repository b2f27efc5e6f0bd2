"""Property: whatever a manifest turns into (characters deleted, types swapped, quotes injected, anchors,
huge numbers), `batchgen validate` never shows a traceback, exits 0 or 2, and every job it accepts is one
the file describes: for CSV, one job per non-blank data row."""

from __future__ import annotations

import csv
import io
import re

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchgen.cli.app import cli

YAML = """\
model: tiny
output_name: "{prompt}-{index}"
defaults: &d {num_frames: 13, height: 64, width: 96, num_inference_steps: 4, fps: 8}
seeds: [0, 1]
jobs:
  - prompt: a red fox running through fresh snow
    guidance_scale: 6
  - {<<: *d, prompt: "waves, on a shore", seed: 3}
  - a lighthouse at night
"""
CSV = 'prompt,seed,num_frames,guidance_scale\na red fox,1,13,4.5\n"waves, on a shore",2,,6\na lighthouse,3,19,\n'
TXT = "a red fox running\n\nwaves on a shore\na lighthouse at night\n"

INSERTS = ['"', "'", ",", ":", "\n", "- ", "&a ", "*a", "<<: *a", "{", "[", "]", "#", "\t", "\\", "!!str ",
           "99999999999999999999999999", "1e999", "-1", "0x1f", "yes", "1:30", "2.0", "~", "\x00", "\ufeff", "é"]
SWAPS = ["true", "null", "[1, 2]", "{a: 1}", '"12"', "12.5", "9" * 400, "*d", "&x [*x]", "'", '"']


@st.composite
def mutated(draw, base: str) -> str:
    text = base
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "insert", "swap"]))
        pos = draw(st.integers(0, len(text)))
        if kind == "delete" and text:
            end = min(len(text), pos + draw(st.integers(1, 5)))
            text = text[:pos] + text[end:]
        elif kind == "insert":
            text = text[:pos] + draw(st.sampled_from(INSERTS)) + text[pos:]
        else:
            # Replace one number or word with a value of another type.
            tokens = list(re.finditer(r"[\w.]+", text))
            if tokens:
                token = draw(st.sampled_from(tokens))
                text = text[: token.start()] + draw(st.sampled_from(SWAPS)) + text[token.end():]
    return text


def _validate(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", newline="")
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 2), result.output
    return result


def _accepted_entries(output: str) -> int:
    found = re.search(r"OK, (\d+) job\(s\)(?: \((\d+) duplicate)?", output)
    assert found, output
    return int(found.group(1)) + int(found.group(2) or 0)


def _data_rows(text: str) -> int | None:
    """Non-blank data rows, counted independently of batchgen (the csv module, strict quoting); None when
    the quoting is broken (a quote left open, a stray quote)."""
    try:
        rows = list(csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""), strict=True, skipinitialspace=True))
    except csv.Error:
        return None
    return sum(1 for row in rows[1:] if any(cell.strip() for cell in row))


SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(text=mutated(YAML))
def test_mutated_yaml_is_validated_or_refused(tmp_path, text):
    _validate(tmp_path, "jobs.yaml", text)


@SETTINGS
@given(text=mutated(CSV))
def test_mutated_csv_gives_one_job_per_row(tmp_path, text):
    result = _validate(tmp_path, "jobs.csv", text)
    rows = _data_rows(text)
    if rows is None:
        assert result.exit_code == 2, result.output  # never a guess at where broken quoting ends
    if result.exit_code == 0:
        assert _accepted_entries(result.output) == rows
        if '"' not in text:  # no quoting: one row per non-blank line
            lines = [line for line in re.split(r"\r\n|\n|\r", text) if line.strip(" \t,")]
            assert _accepted_entries(result.output) == len(lines) - 1


@SETTINGS
@given(text=mutated(TXT))
def test_mutated_txt_gives_one_job_per_line(tmp_path, text):
    result = _validate(tmp_path, "jobs.txt", text)
    if result.exit_code == 0:
        assert _accepted_entries(result.output) == sum(1 for line in text.split("\n") if line.strip())
