"""batchgen's own memory profiles on Wan and LTX-Video at published size with random weights: one video per
(model, profile) through the Renderer, the way a batch renders it, with its peak GiB, s/step, decode and
the per-video wall at the family's default steps; and whether profiles of one precision give one video.

  python benchmarks/bench_family_profiles.py --steps 3 --out r.json            # needs a CUDA GPU
  python benchmarks/bench_family_profiles.py --models realsize-ltx-2b --profiles resident,fast
  python benchmarks/bench_family_profiles.py --tiny                              # CPU smoke test

Each (model, profile) gets a freshly built pipeline (a profile's placement must not inherit another's
hooks, casts or compiled blocks); a profile that streams or offloads starts from the CPU, where a real load
leaves it; int8 and nf4 quantize on load, so their rows save the published-size model once with
save_pretrained and load that folder through batchgen's own loading path (load_s). The Renderer encodes the prompt and the negative prompt first, then renders one job at the
family's default frames, size, guidance and fps for --steps steps. Every step is timed in the Renderer's
on_step callback: s/step is the mean of the steps after the first (the first carries `fast`'s compile,
reported as compile_s = first step - s/step); per_video_wall_at_default_steps_s = default steps x s/step +
decode, what a batch pays per video once its texts are encoded and its denoiser placed. The frames' sha256
is compared between profiles of one precision (resident and group-offload are both "bf16"): on random
weights and a few steps a mismatch is a placement bug, not noise. Random weights: speed and memory are
real, pixels are not. One row per (model, profile) is printed as JSON as it finishes; a failure (out of
memory, a profile not wired for the family yet) is a row with its error and the run goes on.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

DEVICE = "cuda"  # --tiny sets "cpu"
TINY_SHAPE = {"num_frames": 9, "height": 32, "width": 32, "num_inference_steps": 2}
PROMPT = "a red fox running through fresh snow"
NEGATIVE = "blurry, low quality"
STREAMING_PLACEMENTS = ("model-offload", "group-offload")
GIB = 2**30


def _sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _free() -> None:
    import torch

    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _build(name: str, profile: str):
    import torch

    from batchgen.engine import families
    from batchgen.engine.profile_registry import get as declared

    family = families.builtin(name)
    builders = family.builders()
    if DEVICE != "cuda":
        return family, builders.build_tiny()
    pipe = builders.build_realsize(name, "cuda")
    if declared(profile).placement in STREAMING_PLACEMENTS:
        # build_realsize makes the weights on the GPU (fast); a real load leaves them on the CPU, and these
        # profiles' peak and per-step streaming only mean something from there.
        pipe.to("cpu")
        torch.cuda.empty_cache()
    return family, pipe


def _job(name: str, family, precision: str, steps: int):
    from batchgen.job import Job

    d = family.defaults
    shape = {k: d[k] for k in ("num_frames", "height", "width")} if DEVICE == "cuda" else {
        k: TINY_SHAPE[k] for k in ("num_frames", "height", "width")}
    return Job(prompt=PROMPT, negative_prompt=NEGATIVE, family=family.name, model=name, precision=precision,
               num_inference_steps=steps, guidance_scale=d["guidance_scale"], fps=d["fps"], seed=0, **shape)


def _gib(value: int | None) -> float | None:
    return round(value / GIB, 2) if value is not None else None


QUANTIZED = ("int8", "nf4")  # weights quantized on load: only from a saved folder
_SAVED: dict[str, str] = {}


def _saved(name: str) -> str:
    """`name` built at published size once, saved with save_pretrained: the folder int8/nf4 load from."""
    import tempfile

    from batchgen.engine import families

    if name not in _SAVED:
        pipe = families.builtin(name).builders().build_realsize(name, "cuda")
        folder = tempfile.mkdtemp(prefix=f"bench-{name}-")
        pipe.save_pretrained(folder)
        del pipe
        _free()
        _SAVED[name] = folder
    return _SAVED[name]


def _renderer(name: str, profile: str):
    """(family, renderer, load seconds): a prebuilt pipeline, or for int8/nf4 the real loading path."""
    from batchgen.engine import families
    from batchgen.engine.profile_registry import get as declared
    from batchgen.engine.renderer import Renderer

    if DEVICE == "cuda" and declared(profile).weights in QUANTIZED:
        renderer = Renderer(_saved(name), profile=profile, device=DEVICE, progress=False)
        t0 = time.perf_counter()
        renderer.load()  # from_pretrained with diffusers' PipelineQuantizationConfig
        return families.builtin(name), renderer, time.perf_counter() - t0
    family, pipe = _build(name, profile)
    return family, Renderer(name, pipeline=pipe, profile=profile, device=DEVICE, progress=False), None


def run(name: str, profile: str, steps: int) -> dict:
    """One video of `name` under `profile` through batchgen's Renderer; its row."""
    family, renderer, load_s = _renderer(name, profile)
    job = _job(name, family, renderer.precision, steps)
    t0 = time.perf_counter()
    renderer.encode([job.prompt, job.negative_prompt])
    _sync()
    encode_s = time.perf_counter() - t0
    marks: list[float] = []

    def on_step(step: int, total: int) -> None:
        _sync()
        marks.append(time.perf_counter())

    t1 = time.perf_counter()
    rendered = renderer.render(job, on_step=on_step)
    if len(marks) != steps:
        raise RuntimeError(f"on_step was called {len(marks)} times for {steps} steps")
    # The Renderer times the pipeline call itself; its start is what separates placing the denoiser (done
    # inside render, before the call) from the first step. The last step's callback ends the call but for
    # returning the latents, so the call started denoise_seconds before it. (Under model offload that end
    # also holds the hooks moving the models back to the CPU: it counts in first_step_s, not in s/step.)
    denoise_start = marks[-1] - rendered.denoise_seconds
    later = [b - a for a, b in zip(marks, marks[1:])]
    first = marks[0] - denoise_start
    per_step = sum(later) / len(later) if later else first
    default_steps = family.defaults["num_inference_steps"]
    # profile_used: the Renderer's resolution of `profile` (a GPU profile on a machine without CUDA is cpu).
    row = {"model": name, "profile": profile, "profile_used": renderer.profile, "precision": renderer.precision,
           "num_frames": job.num_frames, "height": job.height, "width": job.width, "steps_timed": steps,
           "s_per_step": round(per_step, 4),
           "first_step_s": round(first, 3), "compile_s": round(max(first - per_step, 0.0), 3),
           "encode_s": round(encode_s, 3), "load_s": round(load_s, 1) if load_s is not None else None,
           "place_s": round(denoise_start - t1, 3),
           "decode_s": round(rendered.decode_seconds, 3), "peak_gib": _gib(rendered.peak_vram_allocated),
           "peak_reserved_gib": _gib(rendered.peak_vram_reserved),
           "decode_peak_gib": _gib(rendered.decode_peak_vram_allocated), "default_steps": default_steps,
           "per_video_wall_at_default_steps_s": round(default_steps * per_step + rendered.decode_seconds, 1),
           "frames_shape": list(rendered.frames.shape), "frames_sha256": rendered.frames_sha256}
    del renderer, rendered
    return row


def _reset_compiled(profile: str) -> None:
    from batchgen.engine.profile_registry import get as declared

    if declared(profile).compiles:
        import torch

        # The next model's compile_s should be a compile of its own, not a reuse of this one's graphs.
        torch._dynamo.reset()


def hash_agreement(rows: list[dict]) -> list[dict]:
    """Per model and precision rendered by two or more profiles: whether they all gave the same frames."""
    groups: dict[tuple[str, str], dict[str, str]] = {}
    for row in rows:
        if "frames_sha256" in row:
            groups.setdefault((row["model"], row["precision"]), {})[row["profile"]] = row["frames_sha256"]
    return [{"model": model, "precision": precision, "profiles": sorted(hashes),
             "same_frames": len(set(hashes.values())) == 1}
            for (model, precision), hashes in groups.items() if len(hashes) > 1]


# (row key, heading, width) of the readable table.
COLUMNS = (("model", "model", 22), ("profile", "profile", 14), ("precision", "precision", 14),
           ("s_per_step", "s/step", 8), ("compile_s", "compile_s", 9), ("peak_gib", "peak GiB", 8),
           ("decode_s", "decode_s", 8), ("decode_peak_gib", "decode GiB", 10),
           ("per_video_wall_at_default_steps_s", "s/video@default", 15))


def table(rows: list[dict]) -> str:
    lines = [" ".join(heading.ljust(width) for _, heading, width in COLUMNS)]
    for row in rows:
        problem = row.get("error") or row.get("skipped")
        shown = COLUMNS[:2] if problem else COLUMNS
        cells = [("-" if row.get(key) is None else str(row[key]))[:width].ljust(width) for key, _, width in shown]
        lines.append(" ".join(cells) + (f" {problem}" if problem else ""))
    return "\n".join(lines)


def _info() -> dict:
    import diffusers
    import torch

    gpu = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu"
    return {"gpu": gpu, "torch": torch.__version__, "diffusers": diffusers.__version__}


def _unknown(models: list[str], profiles: list[str]) -> str | None:
    from batchgen.engine import families
    from batchgen.engine.profile_registry import REGISTRY

    bad = [m for m in models if families.builtin(m) is None] + [p for p in profiles if p not in REGISTRY]
    return f"unknown model or profile: {', '.join(bad)}" if bad else None


def sweep(models: list[str], profiles: list[str], steps: int, budget_s: float) -> list[dict]:
    start, rows = time.perf_counter(), []
    for name in models:
        for profile in profiles:
            if time.perf_counter() - start > budget_s:
                rows.append({"model": name, "profile": profile, "skipped": "time budget"})
            else:
                try:
                    rows.append(run(name, profile, steps))
                except Exception as exc:  # one profile's failure (out of memory, not wired yet) is a row
                    rows.append({"model": name, "profile": profile,
                                 "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
                _reset_compiled(profile)
                _free()  # after the except block: the traceback kept the failed pipeline alive until here
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="realsize-wan2.1-1.3b,realsize-ltx-2b,realsize-wan2.2-5b,realsize-wan2.1-14b")
    ap.add_argument("--profiles", help="default resident,fast,group-offload,offload,fp8 (--tiny: cpu)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=420, help="skip what would start after this many seconds")
    ap.add_argument("--out")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny-wan / tiny-ltx, cpu profile, 9x32x32")
    args = ap.parse_args()
    global DEVICE
    if args.tiny:
        DEVICE, args.models, args.steps = "cpu", "tiny-wan,tiny-ltx", TINY_SHAPE["num_inference_steps"]
    args.profiles = args.profiles or ("cpu" if args.tiny else "resident,fast,group-offload,offload,fp8")
    problem = _unknown(args.models.split(","), args.profiles.split(","))
    if problem:
        ap.error(problem)  # before any pipeline is built: a typo would otherwise cost a device call's rows
    info = _info()
    print(json.dumps(info), flush=True)
    rows = sweep(args.models.split(","), args.profiles.split(","), args.steps, args.budget_s)
    agreement = hash_agreement(rows)
    print(table(rows))
    for check in agreement:
        verdict = "same frames" if check["same_frames"] else "DIFFERENT frames"
        print(f"{check['model']} {check['precision']}: {', '.join(check['profiles'])}: {verdict}")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"info": info, "args": vars(args), "rows": rows, "hash_agreement": agreement}, handle, indent=2)


if __name__ == "__main__":
    main()
