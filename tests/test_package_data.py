"""A normal (non-editable) install ships the package's data files: the gallery's HTML, CSS and JS."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from batchgen.outputs import gallery

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_a_built_wheel_ships_the_gallery_assets_and_its_gallery_reads_them(tmp_path):
    # Built from a copy, so the checkout gets no build/ or egg-info; with the setuptools already
    # installed, as nothing may be downloaded.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "batchgen", src / "batchgen", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    build = "import sys; from setuptools import build_meta; print(build_meta.build_wheel(sys.argv[1]))"
    done = subprocess.run([sys.executable, "-c", build, str(dist)], cwd=src, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    wheel = dist / done.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for asset in gallery.ASSET_FILES:
            assert f"batchgen/outputs/{gallery.ASSETS}/{asset}" in names
        site = tmp_path / "site"
        zf.extractall(site)
    # The installed package (not this checkout) reads its own files: the page it builds carries them.
    check = (
        "import sys; from batchgen.outputs import gallery; assert gallery.__file__.startswith(sys.argv[1]);"
        "print(gallery._asset('gallery.html').count('%%'))"
    )
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    read = subprocess.run([sys.executable, "-c", check, str(site)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert read.returncode == 0, read.stderr[-3000:]
    assert int(read.stdout) == 12  # TITLE twice, CSS, NOSCRIPT, DATA, JS: each between two %%


def test_each_gallery_asset_is_found_as_package_data():
    from importlib import resources

    folder = resources.files("batchgen.outputs") / gallery.ASSETS
    found = sorted(p.name for p in folder.iterdir() if p.is_file())
    assert found == sorted(gallery.ASSET_FILES)
    for name in gallery.ASSET_FILES:
        assert gallery._asset(name).strip()
