"""Same job, same frames? Render one job twice per profile through batchgen's Renderer and compare.

For each profile the job is rendered twice by one Renderer (as two jobs of a batch are), or with
`--fresh` by two Renderers (the model built or loaded again, as a second process would), and the script
prints whether the frames hashes match, with the max absolute pixel difference of the raw frames.

`--deterministic` renders in batchgen's deterministic mode. `--deterministic-cost` additionally renders the
job once more per profile in deterministic mode and prints the seconds per step with and without it, and
whether deterministic mode changes the frames: the hook for measuring what `--deterministic` costs.

Model sources:
  --tiny          the embedded random-weight model on the CPU (profile cpu): a smoke test of this script
  --realsize      published-size Mochi 1 with random weights, built on the GPU (no download needed)
  --model ID      real weights through from_pretrained (hub id or a local save_pretrained folder)

  python benchmarks/gpu_repro.py --tiny
  python benchmarks/gpu_repro.py --realsize --profiles resident,fp8,int8,nf4 --frames 19 --height 480 --width 848 \
      --steps 8 --deterministic-cost --json benchmarks/results/gpu_repro.json
"""

from __future__ import annotations

from batchgen.engine import placement

import argparse
import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = "a red fox running through fresh snow, golden hour"
NEGATIVE = "blurry, low quality"


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--tiny", action="store_true", help="embedded tiny model on the CPU")
    src.add_argument("--realsize", action="store_true", help="published-size random-weight model on the GPU")
    src.add_argument("--model", help="hub id or local folder (real weights)")
    p.add_argument("--profiles", default="resident,fp8,int8,nf4", help="comma-separated (ignored with --tiny: cpu)")
    p.add_argument("--frames", type=int, default=19)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=848)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--guidance", type=float, default=4.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true", help="second render by a new Renderer (model rebuilt/reloaded)")
    p.add_argument("--deterministic", action="store_true", help="render in batchgen's deterministic mode")
    p.add_argument("--deterministic-cost", action="store_true", help="also time one render in deterministic mode")
    p.add_argument("--device", default=None)
    p.add_argument("--json", type=Path, help="write the results here")
    return p.parse_args(argv)


def _free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def _renderer(args, profile: str):
    """A Renderer for `profile`, with its texts encoded and its denoiser placed."""
    from batchgen.engine import profiles
    from batchgen.engine.renderer import Renderer

    device = "cpu" if args.tiny else (args.device or "cuda")
    if args.realsize:
        from batchgen.engine.realsize import build_realsize_pipeline, materialize_transformer, quantize_transformer_inplace

        pipe = build_realsize_pipeline(device, transformer_on_meta=True)
        if profiles.REGISTRY[profile].streams_text_encoder:
            pipe.text_encoder.to("cpu")
        renderer = Renderer("realsize", profile=profile, device=device, progress=False, pipeline=pipe)
        renderer.encode([PROMPT, NEGATIVE])
        placement.release_text_encoder(pipe)
        materialize_transformer(pipe, device)
        if profile in ("int8", "nf4"):
            quantize_transformer_inplace(pipe.transformer, profile)
    else:
        model = "tiny" if args.tiny else args.model
        renderer = Renderer(model, profile=profile, device=device, progress=False)
        renderer.encode([PROMPT, NEGATIVE])
    return renderer


def _render(renderer, job):
    start = time.perf_counter()
    rendered = renderer.render(job)
    return rendered, time.perf_counter() - start


def _max_abs(a, b) -> int | None:
    import numpy as np

    if a.shape != b.shape:
        return None
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def run_profile(args, profile: str, job) -> dict:
    from batchgen.engine import determinism
    from batchgen.engine import fingerprint

    result: dict = {"profile": profile}
    try:
        with determinism.settings(args.deterministic):
            renderer = _renderer(args, profile)
            first, _ = _render(renderer, job)
            if args.fresh:
                del renderer
                _free()
                renderer = _renderer(args, profile)
            second, _ = _render(renderer, job)
            fp = fingerprint.collect(renderer)
        result.update(
            precision=renderer.precision,
            gpu=fp["gpu"],
            deterministic=args.deterministic,
            fresh=args.fresh,
            frames_sha256=[first.frames_sha256, second.frames_sha256],
            identical=first.frames_sha256 == second.frames_sha256,
            max_abs_diff=_max_abs(first.frames, second.frames),
            seconds_per_step=round(second.seconds_per_step, 4),
        )
        if args.deterministic_cost and not args.deterministic:
            try:
                with determinism.settings(True):
                    det, _ = _render(renderer, job)
                result.update(
                    deterministic_seconds_per_step=round(det.seconds_per_step, 4),
                    deterministic_cost_percent=round(100 * (det.seconds_per_step / second.seconds_per_step - 1), 1),
                    deterministic_same_frames=det.frames_sha256 == second.frames_sha256,
                    deterministic_max_abs_diff=_max_abs(det.frames, second.frames),
                )
            except Exception as exc:  # an op without a deterministic kernel: that is the finding
                result["deterministic_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        del renderer
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        if os.environ.get("BATCHGEN_DEBUG"):
            traceback.print_exc()
    _free()
    return result


def _line(r: dict) -> str:
    if "error" in r:
        return f"{r['profile']:>14}: ERROR {r['error']}"
    a, b = r["frames_sha256"]
    verdict = "identical" if r["identical"] else f"DIFFER (max abs {r['max_abs_diff']})"
    text = f"{r['profile']:>14} ({r['precision']}): {a[:16]} / {b[:16]}: {verdict}; {r['seconds_per_step']} s/step"
    if "deterministic_seconds_per_step" in r:
        same = "same frames" if r["deterministic_same_frames"] else f"other frames (max abs {r['deterministic_max_abs_diff']})"
        text += (f"; deterministic {r['deterministic_seconds_per_step']} s/step "
                 f"({r['deterministic_cost_percent']:+.1f}%), {same}")
    if "deterministic_error" in r:
        text += f"; deterministic mode fails: {r['deterministic_error']}"
    return text


def main(argv=None) -> list[dict]:
    args = parse(argv if argv is not None else sys.argv[1:])
    from batchgen.engine import determinism

    if args.deterministic or args.deterministic_cost:
        determinism.prepare_env()  # before torch touches CUDA
    if not (args.tiny or args.realsize or args.model):
        args.realsize = True
    from batchgen.job import Job

    job = Job(prompt=PROMPT, negative_prompt=NEGATIVE, seed=args.seed, num_frames=args.frames, height=args.height,
              width=args.width, num_inference_steps=args.steps, guidance_scale=args.guidance)
    names = ["cpu"] if args.tiny else [p.strip() for p in args.profiles.split(",") if p.strip()]
    source = "tiny" if args.tiny else ("realsize (random weights)" if args.realsize else args.model)
    print(f"gpu_repro: {source}, {args.frames} frames {args.height}x{args.width}, {args.steps} steps, seed {args.seed}, "
          f"{'two renderers' if args.fresh else 'one renderer'}{', deterministic' if args.deterministic else ''}"
          f"{'; CUBLAS_WORKSPACE_CONFIG=' + os.environ['CUBLAS_WORKSPACE_CONFIG'] if os.environ.get('CUBLAS_WORKSPACE_CONFIG') else ''}",
          flush=True)
    results = []
    for name in names:
        results.append(run_profile(args, name, job))
        print(_line(results[-1]), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                        indent=2) + "\n")
    return results


if __name__ == "__main__":
    outcome = main()
    sys.exit(0 if all(r.get("identical") for r in outcome) else 1)
