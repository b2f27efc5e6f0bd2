"""batchgen.settings: every BATCHGEN_* variable declared once, read when used, one on/off rule."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from batchgen import settings
from batchgen.errors import BatchgenError

ROOT = Path(__file__).resolve().parent.parent


def test_readme_table_is_the_declared_one():
    assert settings.markdown_table() in (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_variable_the_package_names_is_declared():
    declared = {v.name for v in settings.VARIABLES}
    named = set()
    for path in (ROOT / "batchgen").rglob("*.py"):
        named |= set(re.findall(r"BATCHGEN_[A-Z0-9_]*[A-Z0-9]", path.read_text(encoding="utf-8")))
    assert named - declared == set()


def test_reads_happen_when_used_not_at_import(monkeypatch):
    assert settings.lease_seconds() == 120
    monkeypatch.setenv("BATCHGEN_LEASE_SECONDS", "7")
    assert settings.lease_seconds() == 7


@pytest.mark.parametrize("value, expected", [("1", True), ("TRUE", True), ("yes", True), ("on", True),
                                             ("0", False), ("false", False), ("No", False), ("off", False), ("", True)])
def test_one_on_off_rule(monkeypatch, value, expected):
    # BATCHGEN_WRITE_BEHIND defaults to on: empty means "unset", so the default.
    monkeypatch.setenv("BATCHGEN_WRITE_BEHIND", value)
    assert settings.write_behind() is expected


@pytest.mark.parametrize("name, value, call", [
    ("BATCHGEN_WRITE_BEHIND", "maybe", settings.write_behind),
    ("BATCHGEN_LEASE_SECONDS", "soon", settings.lease_seconds),
    ("BATCHGEN_LEASE_SECONDS", "0.1", settings.lease_seconds),
    ("BATCHGEN_CPU_THREADS", "two", settings.cpu_threads),
    ("BATCHGEN_INT8_KERNEL", "fast", settings.int8_kernel),
])
def test_a_bad_value_names_its_variable(monkeypatch, name, value, call):
    monkeypatch.setenv(name, value)
    with pytest.raises(BatchgenError, match=name):
        call()


def test_the_autouse_fixture_cleared_a_developers_setting():
    import os

    assert not [n for n in os.environ if n.startswith("BATCHGEN_")]
