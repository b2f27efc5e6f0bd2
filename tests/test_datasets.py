"""The output folder is a Hugging Face VideoFolder as it stands: `load_dataset("videofolder", data_dir=OUT)`."""

from pathlib import Path

import datasets
from click.testing import CliRunner

from batchgen.cli.app import cli
from batchgen.outputs.metadata_index import read as read_index
from conftest import small_yaml


def test_out_loads_as_a_videofolder_dataset(tmp_path):
    manifest = small_yaml(tmp_path, ["a red fox in snow", "waves on a rocky shore"], seeds=[3, 4],
                          extra='output_name: "{prompt}-{index}"')
    out = tmp_path / "out"
    runner = CliRunner()
    assert runner.invoke(cli, ["render", str(manifest), "--out", str(out), "--no-progress"]).exit_code == 0
    # What else batchgen leaves in OUT (gallery, contact sheet, database, embedding cache) must not confuse it.
    assert runner.invoke(cli, ["sheet", str(out)]).exit_code == 0
    assert (out / "index.html").exists() and (out / "contact_sheet.png").exists()
    assert sorted(p.name for p in (out / "videos").iterdir()) == [
        "a red fox in snow-0.mp4", "a red fox in snow-1.mp4", "waves on a rocky shore-0.mp4", "waves on a rocky shore-1.mp4"]

    ds = datasets.load_dataset("videofolder", data_dir=str(out), split="train", cache_dir=str(tmp_path / "hf-cache"))
    # Decoding needs torchcodec; the rows, their metadata and the file each points at are what is checked here.
    ds = ds.cast_column("video", datasets.Video(decode=False))
    rows = read_index(out)
    assert ds.num_rows == len(rows) == 4
    for column in ("video", "job_id", "prompt", "seed", "num_frames", "model", "sha256", "render_seconds"):
        assert column in ds.column_names, column
    by_path = {str((out / r["file_name"]).resolve()): r for r in rows}
    for item in ds:
        row = by_path[str(Path(item["video"]["path"]).resolve())]
        assert (item["job_id"], item["prompt"], item["seed"]) == (row["job_id"], row["prompt"], row["seed"])
