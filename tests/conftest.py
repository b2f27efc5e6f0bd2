import json
import os
import textwrap
from pathlib import Path

import pytest

# Nothing in the tests may reach the network; tiny and saved pipelines need none.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SMALL = {"num_frames": 7, "height": 32, "width": 48, "num_inference_steps": 2, "fps": 8}


def write_manifest(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def small_yaml(tmp_path: Path, prompts: list[str], seeds: list[int] = (0,), extra: str = "", name: str = "jobs.yaml") -> Path:
    lines = ["model: tiny", "defaults:"]
    lines += [f"  {k}: {v}" for k, v in SMALL.items()]
    lines.append(f"seeds: [{', '.join(str(s) for s in seeds)}]")
    lines.append("jobs:")
    lines += [f"  - prompt: {json.dumps(p)}" for p in prompts]
    if extra:
        lines.append(textwrap.dedent(extra).strip())
    return write_manifest(tmp_path / name, "\n".join(lines) + "\n")


@pytest.fixture
def small_manifest(tmp_path):
    return small_yaml(tmp_path, ["a red fox in snow", "waves on a rocky shore"], seeds=[1, 2])


def run_cli(*args):
    """Drive the CLI in-process, as a user would from a shell; exceptions propagate to the test."""
    from click.testing import CliRunner

    from batchgen.cli.app import cli

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def render_small_batch(base: Path, prompts: list[str], seeds: list[int]) -> tuple[Path, Path]:
    """Render a small tiny-model batch into base/out; returns (manifest, out)."""
    manifest = small_yaml(base, prompts, seeds=seeds)
    out = base / "out"
    result = run_cli("render", manifest, "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    return manifest, out


@pytest.fixture(autouse=True)
def _no_batchgen_settings(monkeypatch):
    """A developer's own BATCHGEN_* settings never leak into a test; tests that need one set it themselves."""
    for name in [n for n in os.environ if n.startswith("BATCHGEN_")]:
        monkeypatch.delenv(name)
