"""Every manifest shipped in jobs/ and examples/ is valid as it stands, and the quick start renders."""

from pathlib import Path

import pytest

from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for folder in ("jobs", "examples") for p in (ROOT / folder).iterdir()
                 if p.suffix in (".yaml", ".yml", ".csv"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_manifest_validates(path, monkeypatch):
    # Online, validate checks no hub model (it never downloads); offline it would need the model cached.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    result = run_cli("validate", path)
    assert result.exit_code == 0, result.output
    assert "OK," in result.output


def test_the_quick_start_renders_as_the_readme_says(tmp_path):
    out = tmp_path / "quickstart"
    result = run_cli("render", ROOT / "jobs" / "quickstart.yaml", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    assert len(list((out / "videos").glob("*.mp4"))) == 4
