"""The production int8/nf4 path on a GPU: a saved pipeline loaded through `MochiPipeline.from_pretrained`
with diffusers' PipelineQuantizationConfig (batchgen.engine.profiles.load_kwargs), then rendered twice.

No real checkpoint can be downloaded here, so the tiny random pipeline is saved with `save_pretrained`
and loaded back through exactly the code `batchgen render` uses for a local folder or hub id.
Prints, per profile: the transformer's linear layer types after loading and while rendering, its weight bytes, whether the
two renders agree, and the peak VRAM.

Usage: python benchmarks/gpu_quantized_load.py [--profiles int8,nf4] [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    import torch

    from batchgen.job import Job
    from batchgen.engine.loading import build_tiny_pipeline
    from batchgen.engine.renderer import Renderer

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profiles", default="int8,nf4")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "saved-tiny"
        build_tiny_pipeline().save_pretrained(folder)
        for profile in args.profiles.split(","):
            renderer = Renderer(str(folder), profile=profile, device="cuda", progress=False)
            transformer = renderer.pipe.transformer
            kinds = collections.Counter(
                type(m).__name__ for m in transformer.modules() if "Linear" in type(m).__name__
            )
            weight_bytes = transformer.get_memory_footprint() if hasattr(transformer, "get_memory_footprint") else None
            job = Job("a red fox running through snow", "blurry", seed=7, num_frames=13, height=64, width=96,
                      num_inference_steps=4, model=str(folder), precision=renderer.precision)
            renderer.encode([job.prompt, job.negative_prompt])
            first = renderer.render(job)
            second = renderer.render(job)
            # What the layers are once the batch is set up (int8's are swapped for batchgen's kernel then).
            rendering = collections.Counter(
                type(m).__name__ for m in renderer.pipe.transformer.modules() if "Linear" in type(m).__name__
            )
            row = {
                "profile": profile,
                "precision": renderer.precision,
                "quantized": bool(getattr(transformer, "is_quantized", False)),
                "linear_layer_types": dict(kinds),
                "linear_layer_types_rendering": dict(rendering),
                "transformer_bytes": weight_bytes,
                "device": str(next(transformer.parameters()).device),
                "frames_shape": list(first.frames.shape),
                "two_renders_identical": first.frames_sha256 == second.frames_sha256,
                "peak_allocated_mib": round(first.peak_vram_allocated / 2**20, 1),
                "s_per_step": round(second.seconds_per_step, 4),
            }
            print(json.dumps(row), flush=True)
            results.append(row)
            del renderer, transformer
            torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "results": results}, indent=1))
    return 0 if all(r["quantized"] and r["two_renders_identical"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
