"""Prompts that break naive tools: emoji, right-to-left text, path separators, 10,000 characters, control
characters, nothing but blanks, names that collide once sanitised, names longer than 255 bytes. Each is
rendered under a file name valid on Linux, macOS and Windows, or refused with a message naming the line."""

import json
import unicodedata
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchgen.cli.app import cli
from batchgen.outputs.atomic import sha256_file
from batchgen.outputs.metadata_index import read as read_index
from conftest import SMALL, write_manifest

WINDOWS_FORBIDDEN = set('<>:"/\\|?*')
WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {f"{d}{i}" for d in ("COM", "LPT") for i in range(1, 10)}

LONG = ("a red fox running through fresh snow at dawn, " * 218)[:9999] + "."  # 10,000 characters
RENDERED = {
    "emoji": "🦊 a fox 🎥 in snow ❄️ 👨‍👩‍👧",
    "rtl": "שועל אדום רץ בשלג טרי",
    "separators": "a/b\\c: d*e?f \"g\" <h> |i|",
    "traversal": "../../etc/passwd",
    "reserved": "CON",
    "trailing": "a fox in snow. ",
    "long": LONG,
    "long_bytes": "🦊" * 100,  # 400 bytes of UTF-8
}


def yaml_manifest(tmp_path: Path, prompts: list[str], output_name: str = "{prompt}") -> Path:
    # json.dumps without ensure_ascii: YAML takes UTF-8 as it is, but not JSON's surrogate-pair escapes.
    lines = ["model: tiny", f"output_name: {json.dumps(output_name)}", "defaults:"]
    lines += [f"  {k}: {v}" for k, v in SMALL.items()]
    lines.append("jobs:")
    lines += [f"  - prompt: {json.dumps(p, ensure_ascii=False)}" for p in prompts]
    return write_manifest(tmp_path / "jobs.yaml", "\n".join(lines) + "\n")


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_portable(name: str) -> None:
    """A file name any of Linux, macOS and Windows accepts, that hides nothing and climbs nowhere."""
    assert len(name.encode("utf-8")) <= 255, name
    assert not WINDOWS_FORBIDDEN & set(name), name
    assert not any(unicodedata.category(ch) == "Cc" for ch in name), name
    assert not name.startswith(".") and not name.endswith((" ", ".")), name
    assert name.split(".")[0].rstrip(" ").upper() not in WINDOWS_RESERVED, name
    assert unicodedata.normalize("NFC", name) == name, name


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pathological")
    manifest = yaml_manifest(tmp, list(RENDERED.values()))
    out = tmp / "out"
    result = run("render", manifest, "--out", out, "--no-progress")
    return result, out


def test_every_pathological_prompt_renders_under_a_portable_name(rendered):
    result, out = rendered
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in (out / "videos").iterdir())
    assert len(files) == len(RENDERED)
    for name in files:
        assert_portable(name)
        assert name.endswith(".mp4")
    # Nothing escaped the videos folder.
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".mp4") == []


def test_the_index_keeps_every_prompt_exactly_and_points_at_the_files(rendered):
    _result, out = rendered
    rows = read_index(out)
    # Prompts are kept exactly, but for surrounding blanks, which the manifest trims.
    assert sorted(r["prompt"] for r in rows) == sorted(p.strip() for p in RENDERED.values())
    for row in rows:
        path = out / row["file_name"]
        assert path.parent == out / "videos" and path.is_file()
        assert sha256_file(path) == row["sha256"]
    by_prompt = {r["prompt"]: Path(r["file_name"]).name for r in rows}
    by_prompt[RENDERED["trailing"]] = by_prompt[RENDERED["trailing"].strip()]
    assert by_prompt[RENDERED["separators"]] == "a_b_c_ d_e_f _g_ _h_ _i_.mp4"
    assert by_prompt[RENDERED["traversal"]] == "___.._etc_passwd.mp4"
    assert by_prompt[RENDERED["reserved"]] == "CON_.mp4"
    assert by_prompt[RENDERED["trailing"]] == "a fox in snow.mp4"
    assert by_prompt[RENDERED["rtl"]] == RENDERED["rtl"] + ".mp4"
    assert by_prompt[RENDERED["emoji"]] == RENDERED["emoji"] + ".mp4"


def test_names_too_long_are_cut_under_255_bytes_and_stay_distinct(rendered):
    result, out = rendered
    rows = {r["prompt"]: Path(r["file_name"]).name for r in read_index(out)}
    for key in ("long", "long_bytes"):
        name = rows[RENDERED[key]]
        assert len(name.encode("utf-8")) <= 255 and name.endswith(".mp4")
        # Cut on a character boundary, with a hash of the whole name, so two long prompts sharing their
        # beginning still get different files.
        assert name.encode("utf-8").decode("utf-8") == name and "-" in name
    assert "10000 characters" in result.output  # T5 reads 256 tokens: the long prompt is warned about


@pytest.mark.parametrize(
    "prompts, message",
    [
        (["a fox\x07 in snow"], "jobs.yaml:10: field 'prompt': prompt contains the control character U+0007"),
        (["a fox\x1b[31m in snow"], "jobs.yaml:10: field 'prompt': prompt contains the control character U+001B"),
        (["   \t  "], "jobs.yaml:10: field 'prompt': prompt is empty"),
        (["a/b", "a:b"], ("jobs.yaml:10 and ", "jobs.yaml:11 both get the file name 'a_b'")),
        (["Fox", "fox"], ("jobs.yaml:10 and ", "jobs.yaml:11 both get file names 'Fox' and 'fox' (equal ignoring case")),
        ([LONG[:300] + " one", LONG[:300] + " two", "ok"], None),  # long names differ by their hash
    ],
)
def test_bad_prompts_are_refused_before_anything_renders(tmp_path, prompts, message):
    manifest = yaml_manifest(tmp_path, prompts)
    result = run("validate", manifest)
    if message is None:
        assert result.exit_code == 0, result.output
        return
    assert result.exit_code == 2, result.output
    for fragment in (message,) if isinstance(message, str) else message:
        assert fragment in result.output
    assert "Traceback" not in result.output
    render = run("render", manifest, "--out", tmp_path / "out", "--no-progress")
    assert render.exit_code == 2 and not (tmp_path / "out" / "videos").exists()
