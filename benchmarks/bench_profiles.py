"""Peak VRAM, s/step and per-video wall time of every memory profile on the real-size Mochi 1 pipeline.

Random weights at the published sizes (batchgen.engine.realsize), built on the GPU. Each recipe renders a batch
of `--jobs` jobs (two prompts, CFG on) through `batchgen.engine.renderer.Renderer`, exactly as a batch run does;
the seed recipes call diffusers' MochiPipeline directly, one `pipe(prompt=...)` per job, as the seed did.

Timing (printed and saved per recipe):
- s/step: median gap between consecutive denoising steps (CUDA-synchronized callbacks), jobs 2..N, so
  the first job's warm-up is left out.
- overhead/video: mean over jobs 2..N of (job wall time - steps * s/step): everything a video costs
  besides its denoising steps (latent prep, decode, postprocess, weight moves).
- setup: text encoding of the batch + placing the denoiser, paid once per batch.
- wall/video@S: S * s/step + overhead/video + setup / jobs, the projected per-video wall time of a batch
  of `--jobs` jobs at S steps (S = 64, Mochi's default).

Usage: python benchmarks/bench_profiles.py --out results.json [--frames 25] [--recipes resident,nf4,...]
       python benchmarks/bench_profiles.py --tiny   # CPU smoke test of the script itself
"""

from __future__ import annotations

from batchgen.engine import placement
from batchgen.engine.module_state import peek

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROFILE_RECIPES = ("resident", "group-offload", "fp8", "nf4", "offload", "int8")
SEED_RECIPES = ("seed-gpu", "seed-offload-tiling", "seed-int8-offload-tiling")
PROMPTS = ("a red fox running through fresh snow, golden hour", "a paper boat drifting down a rainy street")
NEGATIVE = "blurry, low quality"
GIB = 2**30


def _gib(n):
    return None if n is None else round(n / GIB, 2)


def _free_all():
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        # Pinned staging buffers of group offloading stay cached by the host allocator otherwise.
        if hasattr(torch._C, "_host_emptyCache"):
            torch._C._host_emptyCache()


class StepClock:
    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.stamps: list[float] = []

    def __call__(self, *args):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps, self.stamps[1:])]


def _summarize(name, jobs, steps, setup_s, extra):
    gaps = [g for job in jobs[1:] for g in job["step_gaps"]] or [g for job in jobs for g in job["step_gaps"]]
    s_step = statistics.median(gaps)
    later = jobs[1:] or jobs
    overhead = statistics.mean(job["wall_s"] - steps * s_step for job in later)
    n = len(jobs)
    result = {
        "recipe": name,
        "s_per_step": round(s_step, 4),
        "overhead_per_video_s": round(overhead, 3),
        "setup_per_batch_s": round(setup_s, 2),
        "wall_per_video_at_64_steps_s": round(64 * s_step + overhead + setup_s / n, 2),
        "peak_allocated_gib": max(j["peak_allocated_gib"] or 0 for j in jobs),
        "peak_reserved_gib": max(j["peak_reserved_gib"] or 0 for j in jobs),
        "jobs": jobs,
    }
    result.update(extra)
    if extra.get("encode_peak_allocated_gib") is not None:
        result["peak_allocated_gib"] = max(result["peak_allocated_gib"], extra["encode_peak_allocated_gib"])
        result["peak_reserved_gib"] = max(result["peak_reserved_gib"], extra["encode_peak_reserved_gib"])
    return result


def _job_list(args):
    from batchgen.job import Job

    return [
        Job(
            prompt=PROMPTS[i % len(PROMPTS)],
            negative_prompt=NEGATIVE,
            seed=i,
            num_frames=args.frames,
            height=args.height,
            width=args.width,
            num_inference_steps=args.steps,
            guidance_scale=4.5,
        )
        for i in range(args.jobs)
    ]


def _build(args, *, transformer_on_meta=False):
    if args.tiny:
        from batchgen.engine.loading import build_tiny_pipeline

        return build_tiny_pipeline()
    from batchgen.engine.realsize import build_realsize_pipeline

    return build_realsize_pipeline("cuda", transformer_on_meta=transformer_on_meta)


def run_profile(args, profile: str) -> dict:
    """A batch through batchgen's Renderer, as `batchgen run --profile PROFILE` would render it."""
    import torch

    from batchgen.engine import profiles
    from batchgen.engine.renderer import Renderer

    cuda = not args.tiny
    device = "cuda" if cuda else "cpu"
    pipe = _build(args, transformer_on_meta=cuda)
    if cuda and profiles.REGISTRY[profile].streams_text_encoder:
        pipe.text_encoder.to("cpu")  # where from_pretrained leaves it; streaming copies blocks in as needed
    _free_all()
    renderer = Renderer(
        "realsize" if cuda else "tiny",
        profile=profile,
        device=device,
        vae_tiling=not args.no_tiling,
        progress=False,
        pipeline=pipe,
    )
    jobs = _job_list(args)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    renderer.encode([t for j in jobs for t in (j.prompt, j.negative_prompt)])
    if cuda:
        torch.cuda.synchronize()
    encode_s = time.perf_counter() - t0
    encode_peak = (torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()) if cuda else (None, None)
    if cuda:
        # The 20 GB transformer is created now rather than "loaded": only the text phase is over.
        placement.release_text_encoder(pipe)
        from batchgen.engine.realsize import quantize_transformer_inplace
        from helpers import materialize_transformer

        materialize_transformer(pipe, "cuda")
        if profile in ("int8", "nf4"):
            quantize_transformer_inplace(pipe.transformer, profile)
        _free_all()
    t1 = time.perf_counter()
    renderer._ensure_denoiser()
    if cuda:
        torch.cuda.synchronize()
    place_s = time.perf_counter() - t1
    out = []
    for job in jobs:
        clock = StepClock(cuda)
        start = time.perf_counter()
        clock()
        r = renderer.render(job, on_step=clock)
        wall = time.perf_counter() - start
        out.append(
            {
                "wall_s": round(wall, 3),
                "denoise_s": round(r.denoise_seconds, 3),
                "decode_s": round(r.decode_seconds, 3),
                # Outside the denoising loop and the decode: latents, precomputed modulation, postprocess.
                "other_s": round(wall - r.denoise_seconds - r.decode_seconds, 3),
                "step_gaps": [round(g, 4) for g in clock.gaps()[1:]],
                "first_step_s": round(clock.gaps()[0], 4),
                "peak_allocated_gib": _gib(r.peak_vram_allocated),
                "peak_reserved_gib": _gib(r.peak_vram_reserved),
                "decode_peak_allocated_gib": _gib(r.decode_peak_vram_allocated),
                "frames_shape": list(r.frames.shape),
                "frames_sha256": r.frames_sha256[:16],
            }
        )
        print(f"  {profile} job {len(out)}: {out[-1]}", flush=True)
    extra = {
        "profile": renderer.profile,
        "precision": renderer.precision,
        "encode_s": round(encode_s, 2),
        "place_denoiser_s": round(place_s, 2),
        "encode_peak_allocated_gib": _gib(encode_peak[0]),
        "encode_peak_reserved_gib": _gib(encode_peak[1]),
        "resident_blocks": peek(pipe.transformer).resident_blocks,
        # AdaLN parameters kept off the GPU by precomputed modulation (batchgen/engine/modulation.py); 0 when off.
        "modulation_params_off_gpu": getattr(peek(pipe.transformer).modulation, "parameters_held", 0),
    }
    result = _summarize(profile, out, args.steps, encode_s + place_s, extra)
    del renderer, pipe
    _free_all()
    return result


def run_seed(args, recipe: str) -> dict:
    """The seed's recipes: diffusers' MochiPipeline called once per job with the prompt text."""
    import torch

    cuda = not args.tiny
    device = "cuda" if cuda else "cpu"
    pipe = _build(args)
    t0 = time.perf_counter()
    if recipe == "seed-gpu":
        pipe.to(device)
    else:
        if recipe == "seed-int8-offload-tiling" and cuda:
            from batchgen.engine.realsize import quantize_transformer_inplace

            quantize_transformer_inplace(pipe.transformer, "int8")
            # As measured in the seed: the int8 transformer stays on the GPU beside T5.
            pipe._exclude_from_cpu_offload = list(getattr(pipe, "_exclude_from_cpu_offload", [])) + ["transformer"]
        if cuda:
            pipe.enable_model_cpu_offload(device=device)
        pipe.vae.enable_tiling()
    if cuda:
        torch.cuda.synchronize()
    setup_s = time.perf_counter() - t0
    pipe.set_progress_bar_config(disable=True)
    max_len = 16 if args.tiny else 256
    out = []
    for job in _job_list(args)[: args.seed_jobs]:
        clock = StepClock(cuda)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        with torch.inference_mode():
            pipe(
                prompt=job.prompt,
                negative_prompt=job.negative_prompt,
                num_frames=job.num_frames,
                height=job.height,
                width=job.width,
                num_inference_steps=job.num_inference_steps,
                guidance_scale=job.guidance_scale,
                generator=torch.Generator("cpu").manual_seed(job.seed),
                output_type="np",
                max_sequence_length=max_len,
                callback_on_step_end=lambda p, i, t, kw: (clock(), kw)[1],
            )
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
        out.append(
            {
                "wall_s": round(wall, 3),
                "step_gaps": [round(g, 4) for g in clock.gaps()],
                "peak_allocated_gib": _gib(torch.cuda.max_memory_allocated()) if cuda else None,
                "peak_reserved_gib": _gib(torch.cuda.max_memory_reserved()) if cuda else None,
            }
        )
        print(f"  {recipe} job {len(out)}: {out[-1]}", flush=True)
    result = _summarize(recipe, out, args.steps, setup_s, {"profile": recipe, "precision": "bf16"})
    del pipe
    _free_all()
    return result


def _environment():
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("diffusers", "transformers", "accelerate", "bitsandbytes"):
        try:
            env[name] = __import__(name).__version__
        except Exception:
            env[name] = None
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["gpu_total_gib"] = _gib(torch.cuda.get_device_properties(0).total_memory)
    return env


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test with batchgen's tiny pipeline")
    ap.add_argument("--frames", type=int, default=25)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=848)
    ap.add_argument("--steps", type=int, default=4, help="denoising steps per job (timed: jobs 2..N)")
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--seed-jobs", type=int, default=2, help="jobs per seed recipe (their cost is per job)")
    ap.add_argument("--recipes", default=",".join(PROFILE_RECIPES + SEED_RECIPES))
    ap.add_argument("--no-tiling", action="store_true")
    ap.add_argument("--out", type=Path, required=False)
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    if args.tiny:
        args.height, args.width = min(args.height, 48), min(args.width, 80)
    recipes = [r for r in args.recipes.split(",") if r]
    if args.tiny:
        recipes = ["cpu" if r in PROFILE_RECIPES else r for r in recipes]
        recipes = list(dict.fromkeys(r for r in recipes if r in ("cpu", "seed-gpu", "seed-offload-tiling")))
    report = {
        "command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
        "tag": args.tag,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "recipes")},
        "environment": _environment(),
        "knobs": {
            k: os.environ.get(k)
            for k in ("BATCHGEN_GROUP_OFFLOAD_RESIDENT_GIB", "BATCHGEN_DECODE_LATENT_FRAMES", "BATCHGEN_PRECOMPUTE_MODULATION")
            if os.environ.get(k)
        },
        "results": [],
    }
    print(json.dumps(report["environment"]), flush=True)
    for recipe in recipes:
        print(f"== {recipe} ({args.frames} frames, {args.width}x{args.height}, {args.steps} steps)", flush=True)
        t = time.perf_counter()
        try:
            res = run_seed(args, recipe) if recipe.startswith("seed-") else run_profile(args, recipe)
        except Exception as exc:  # keep measuring the other recipes
            traceback.print_exc()
            res = {"recipe": recipe, "error": f"{type(exc).__name__}: {str(exc)[:500]}"}
            _free_all()
        res["frames"] = args.frames
        res["recipe_wall_s"] = round(time.perf_counter() - t, 1)
        report["results"].append(res)
        short = {k: v for k, v in res.items() if k != "jobs"}
        print(f"-> {json.dumps(short)}", flush=True)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=1))
    print_table(report["results"])
    return 0


def print_table(results) -> None:
    print(f"\n{'recipe':28} {'frames':>6} {'peak alloc':>10} {'peak res':>9} {'s/step':>7} {'ovh/vid':>8} {'setup':>7} {'wall/vid@64':>11}")
    for r in results:
        if "error" in r:
            print(f"{r['recipe']:28} {r.get('frames', ''):>6} ERROR {r['error'][:80]}")
            continue
        print(
            f"{r['recipe']:28} {r['frames']:>6} {r['peak_allocated_gib']:>10} {r['peak_reserved_gib']:>9} "
            f"{r['s_per_step']:>7} {r['overhead_per_video_s']:>8} {r['setup_per_batch_s']:>7} "
            f"{r['wall_per_video_at_64_steps_s']:>11}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
