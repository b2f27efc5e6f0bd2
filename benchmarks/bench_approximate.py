"""Speed-up and output difference of the opt-in approximate accelerators (batchgen.engine.approximate) against
the exact render of the same job, on the real-size Mochi pipeline with random weights.

One job (same prompt, seed, size, steps) is rendered exact and then under each accelerator with one
Renderer (profile resident by default). Printed per variant: s/step, speed-up, how often blocks 0 and 1
ran their attention (PAB skips attention, first-block cache skips blocks 1..47), and the difference from
the exact frames (PSNR in dB over uint8 frames, mean and max absolute difference).

Random weights give real timings for PAB, whose skips follow a fixed timestep schedule; for the
first-block cache, whose skips depend on how much block 0's output changes between steps, random weights
say little about how often a trained model would skip, so its counted skips are printed beside its time.

Usage: python benchmarks/bench_approximate.py [--variants exact,pab,first-block-cache,first-block-cache:0.1]
       [--frames 25] [--steps 50] [--profile resident] [--json out.json] [--tiny]
"""

from __future__ import annotations

from helpers import remove_approximate

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class _Counting:
    """Wraps an attention processor to count its calls (skipped attention never reaches it)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


def _difference(a: np.ndarray, b: np.ndarray) -> dict:
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = float(np.mean(diff**2))
    return {
        "psnr_db": round(10 * math.log10(255.0**2 / mse), 2) if mse > 0 else None,
        "mean_abs": round(float(np.mean(np.abs(diff))), 3),
        "max_abs": int(np.max(np.abs(diff))),
        "identical": bool(mse == 0),
    }


def main(argv=None) -> int:
    import torch

    from batchgen.engine import approximate
    from batchgen.job import Job
    from batchgen.engine.renderer import Renderer

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="exact,pab,first-block-cache,first-block-cache:0.1")
    ap.add_argument("--frames", type=int, default=25)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=848)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--profile", default="resident")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test with the tiny model")
    args = ap.parse_args(argv)
    if args.tiny:
        args.profile, args.height, args.width, args.frames = "cpu", 48, 64, 13
        pipe = None
        model = "tiny"
    else:
        from batchgen.engine.realsize import build_realsize_pipeline

        pipe, model = build_realsize_pipeline("cuda"), "realsize"
    renderer = Renderer(model, profile=args.profile, device="cpu" if args.tiny else "cuda", progress=False,
                        pipeline=pipe)
    job = Job("a red fox running through fresh snow, golden hour", "blurry, low quality", seed=11,
              num_frames=args.frames, height=args.height, width=args.width, num_inference_steps=args.steps)
    warm = Job(job.prompt, job.negative_prompt, seed=1, num_frames=args.frames, height=args.height,
               width=args.width, num_inference_steps=2)
    renderer.encode([job.prompt, job.negative_prompt])
    renderer.render(warm)  # kernels chosen, allocator warmed: the first timed job is not penalised
    blocks = renderer.pipe.transformer.transformer_blocks
    counters = [_Counting(blocks[i].attn1.processor) for i in (0, 1)]
    for i, counter in zip((0, 1), counters):
        blocks[i].attn1.processor = counter
    rows, exact = [], None
    for variant in [v for v in args.variants.split(",") if v]:
        spec = approximate.parse(variant)
        remove_approximate(renderer.pipe)
        renderer.approximate = spec
        approximate.apply(renderer.pipe, spec)
        for c in counters:
            c.calls = 0
        start = time.perf_counter()
        rendered = renderer.render(job)
        wall = time.perf_counter() - start
        row = {
            "variant": variant,
            "spec": spec,
            "precision": renderer.precision,
            "s_per_step": round(rendered.seconds_per_step, 4),
            "denoise_s": round(rendered.denoise_seconds, 2),
            "decode_s": round(rendered.decode_seconds, 2),
            "wall_s": round(wall, 2),
            "block0_attention_calls": counters[0].calls,
            "block1_attention_calls": counters[1].calls,
            "steps": args.steps,
            "frames_sha256": rendered.frames_sha256[:16],
        }
        if spec is None:
            exact = (rendered.frames, rendered.seconds_per_step)
        if exact is not None:
            row["speedup_vs_exact"] = round(exact[1] / rendered.seconds_per_step, 3)
            row["vs_exact"] = _difference(rendered.frames, exact[0])
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.json:
        env = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
        args.json.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "environment": env,
                                         "settings": {k: str(v) for k, v in vars(args).items()}, "results": rows},
                                        indent=1))
    print(f"\n{'variant':28} {'s/step':>7} {'speed-up':>8} {'blk0 attn':>9} {'blk1 attn':>9} {'PSNR dB':>8} {'max abs':>7}")
    for r in rows:
        d = r.get("vs_exact", {})
        print(f"{r['variant']:28} {r['s_per_step']:7.4f} {r.get('speedup_vs_exact', 0):8.3f} {r['block0_attention_calls']:9d} "
              f"{r['block1_attention_calls']:9d} {str(d.get('psnr_db')):>8} {str(d.get('max_abs')):>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
