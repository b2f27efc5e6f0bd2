"""batchgen as a library: load a manifest, render it, read the index. Run: python examples/library_use.py"""

from pathlib import Path

from batchgen import Renderer, load_manifest, render_manifest
from batchgen.outputs.metadata_index import read as read_index

here = Path(__file__).parent

# 1. A whole batch, resumable, exactly as `batchgen render` does it.
manifest = load_manifest(here / "batch.csv", out="out/library-example")
summary = render_manifest(manifest, manifest.out, progress=False)
print(f"{summary.rendered} rendered, {summary.skipped} already done, {summary.failed} failed")
for row in read_index(manifest.out):
    print(row["file_name"], row["seed"], row["frames_sha256"][:12])

# 2. One job by hand, frames as a uint8 array, nothing written.
jobs = manifest.expand("fp32")
frames = Renderer("tiny", progress=False).render(jobs[0]).frames
print("frames:", frames.shape, frames.dtype)
