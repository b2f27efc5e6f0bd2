import json
import os
import tarfile

import pytest
from click.testing import CliRunner

from batchgen.outputs import export as export_module
from batchgen.cli.app import cli
from batchgen.outputs.export import ExportError, export
from batchgen.outputs.atomic import sha256_file
from fakerun import make_run

VBENCH_SPECS = [
    {"prompt": "a cat", "seed": 10, "index": 0},
    {"prompt": "a cat", "seed": 11, "index": 1},
    {"prompt": "a cat", "seed": 12, "index": 2, "status": "failed"},
    {"prompt": "a cat", "seed": 13, "index": 3},
    {"prompt": "a dog", "seed": 10, "index": 0},
]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def vbench_run(tmp_path):
    out = tmp_path / "out"
    store = make_run(out, VBENCH_SPECS, template="{prompt}-{index}")
    yield out, store
    store.close()


def test_vbench_layout_names_files_by_prompt_and_seed_index(vbench_run, tmp_path):
    out, store = vbench_run
    dest = tmp_path / "vbench"
    result = run("export", out, dest, "--layout", "vbench")
    assert result.exit_code == 0, result.output
    videos = sorted(p.name for p in dest.glob("*.mp4"))
    # The failed job's index (2) is a gap, not renumbered: names follow the manifest's seeds.
    assert videos == ["a cat-0.mp4", "a cat-1.mp4", "a cat-3.mp4", "a dog-0.mp4"]
    info = json.loads((dest / "batchgen_vbench.json").read_text(encoding="utf-8"))
    assert {k: (v["prompt"], v["index"], v["seed"]) for k, v in info.items()} == {
        "a cat-0.mp4": ("a cat", 0, 10), "a cat-1.mp4": ("a cat", 1, 11),
        "a cat-3.mp4": ("a cat", 3, 13), "a dog-0.mp4": ("a dog", 0, 10),
    }
    for name, entry in info.items():
        assert sha256_file(dest / name) == entry["sha256"]
        # Same filesystem: hard links, no second copy of the video.
        assert os.path.samefile(dest / name, out / entry["source_file"])
    prompts = json.loads((dest / "vbench_prompts.json").read_text(encoding="utf-8"))
    assert sorted(prompts.values()) == ["a cat", "a cat", "a cat", "a dog"]
    assert all(os.path.isabs(k) and os.path.exists(k) for k in prompts)


def test_vbench_ranks_by_manifest_order_when_the_run_used_no_seed_list(tmp_path):
    out = tmp_path / "out"
    store = make_run(out, [{"prompt": "a cat", "seed": 7}, {"prompt": "a cat", "seed": 3}, {"prompt": "a cat", "seed": 5}])
    dest = tmp_path / "vbench"
    export(out, store, "vbench", dest)
    info = json.loads((dest / "batchgen_vbench.json").read_text(encoding="utf-8"))
    assert {k: v["seed"] for k, v in info.items()} == {"a cat-0.mp4": 7, "a cat-1.mp4": 3, "a cat-2.mp4": 5}
    store.close()


def test_vbench_copies_across_filesystems(vbench_run, tmp_path, monkeypatch):
    out, store = vbench_run

    def no_links(src, dst):
        if str(src).startswith(str(out)):
            raise OSError(18, "Invalid cross-device link")
        return real_link(src, dst)

    real_link = os.link
    monkeypatch.setattr(export_module.os, "link", no_links)
    result = export(out, store, "vbench", tmp_path / "vbench")
    assert result.copied == 4 and result.linked == 0
    for path in (tmp_path / "vbench").glob("*.mp4"):
        assert not os.path.samefile(path, out / "videos" / path.name)
    assert not list((tmp_path / "vbench").glob(".*"))  # no temporary files left


def test_vbench_never_overwrites_and_repeats_cleanly(vbench_run, tmp_path):
    out, store = vbench_run
    dest = tmp_path / "vbench"
    dest.mkdir()
    (dest / "a dog-0.mp4").write_bytes(b"someone else's video")
    result = run("export", out, dest, "--layout", "vbench")
    assert result.exit_code == 2
    assert "a dog-0.mp4 already exists" in result.output and "Traceback" not in result.output
    assert (dest / "a dog-0.mp4").read_bytes() == b"someone else's video"
    assert not list(dest.glob("a cat*"))  # refused before writing anything
    (dest / "a dog-0.mp4").unlink()
    first = export(out, store, "vbench", dest)
    again = export(out, store, "vbench", dest)
    assert len(first.written) == 6 and again.written == [] and len(again.skipped) == 6


def test_vbench_refuses_two_jobs_with_one_name(tmp_path):
    out = tmp_path / "out"
    # "/" cannot be in a file name, so both prompts become "a_cat-0.mp4".
    store = make_run(out, [{"prompt": "a/cat", "seed": 1}, {"prompt": "a_cat", "seed": 2}])
    with pytest.raises(ExportError, match="both become a_cat-0.mp4"):
        export(out, store, "vbench", tmp_path / "v")
    assert not (tmp_path / "v").exists()
    store.close()


def test_webdataset_shards(vbench_run, tmp_path):
    out, store = vbench_run
    dest = tmp_path / "wds"
    result = run("export", out, dest, "--layout", "webdataset", "--shard-size", "3")
    assert result.exit_code == 0, result.output
    shards = sorted(p.name for p in dest.iterdir())
    assert shards == ["shard-000000.tar", "shard-000001.tar"]
    done = {r["job_id"]: r for r in store.rows("done")}
    seen = []
    for shard in shards:
        with tarfile.open(dest / shard) as tar:
            names = tar.getnames()
            keys = [n.split(".", 1)[0] for n in names]
            for key in dict.fromkeys(keys):
                assert "." not in key
                assert sorted(n for n in names if n.split(".", 1)[0] == key) == [f"{key}.json", f"{key}.mp4"]
                meta = json.loads(tar.extractfile(f"{key}.json").read())
                video = tar.extractfile(f"{key}.mp4").read()
                assert meta["job_id"] == key and meta["file_name"] == done[key]["output_path"]
                assert video == (out / done[key]["output_path"]).read_bytes()
                seen.append(key)
    assert sorted(seen) == sorted(done) and len(seen) == 4


def test_webdataset_never_overwrites_a_shard(vbench_run, tmp_path):
    out, store = vbench_run
    dest = tmp_path / "wds"
    export(out, store, "webdataset", dest, shard_size=2)
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    # The same export again is a no-op: shards are deterministic.
    again = export(out, store, "webdataset", dest, shard_size=2)
    assert again.written == [] and len(again.skipped) == 2
    with pytest.raises(ExportError, match="shard-000000.tar already exists"):
        export(out, store, "webdataset", dest, shard_size=3)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before


def test_export_of_an_empty_run_says_so(tmp_path):
    out = tmp_path / "out"
    store = make_run(out, [{"prompt": "x", "status": "failed"}])
    store.close()
    result = run("export", out, tmp_path / "d", "--layout", "webdataset")
    assert result.exit_code == 2 and "no finished videos" in result.output
