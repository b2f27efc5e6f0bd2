"""The recipes diffusers' documentation gives for Wan and LTX-Video, at published size with random weights,
and batchgen's batch lever beside them (issue 18): peak GiB, s/step and per-video wall at the family's
default steps.

  python benchmarks/bench_family_recipes.py --models realsize-wan2.1-1.3b,realsize-ltx-2b --steps 3 --out r.json

Recipes (diffusers' WanPipeline / LTXPipeline pages): `gpu` = the pipeline in bf16 moved to the GPU
(`pipe.to("cuda")`; the Wan page loads the VAE in fp32, done here too), `offload` = the same with
`enable_model_cpu_offload()`; `encode-first` = batchgen's lever: every prompt encoded first, the text encoder
freed, the denoiser kept placed (what a batch pays per video once its texts are encoded). Each recipe renders
one video at the family's default size and frame count for --steps steps (the first step is a warm-up and
is left out of s/step); the per-video wall at the default steps is projected as encode + steps x s/step +
decode, every term measured. Random weights: speed and memory are real, pixels are not.
"""

from __future__ import annotations

import argparse
import json
import time


DEVICE = "cuda"  # --tiny: a CPU smoke test of this script on the tiny family pipelines
TINY_SHAPE = {"num_frames": 9, "height": 32, "width": 32}


def _sync():
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _peak() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else 0.0


def _reset_peak() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _build(name: str, recipe: str):
    import torch

    from batchgen.engine.families import builtin

    family = builtin(name)
    builders = family.builders()
    pipe = builders.build_realsize(name, "cuda") if DEVICE == "cuda" else builders.build_tiny()
    if family.name == "wan":
        pipe.vae.to(torch.float32)  # diffusers' Wan example loads the VAE in float32
    if recipe == "offload" and DEVICE == "cuda":
        pipe.to("cpu")
        torch.cuda.empty_cache()
        pipe.enable_model_cpu_offload()
    return family, pipe


def run(name: str, recipe: str, steps: int) -> dict:
    import torch

    family, pipe = _build(name, recipe)
    d = family.defaults
    shape = {k: d[k] for k in ("num_frames", "height", "width")} if DEVICE == "cuda" else dict(TINY_SHAPE)
    _reset_peak()
    t0 = time.perf_counter()
    with torch.inference_mode():
        embeds = pipe.encode_prompt(prompt="a red fox running through fresh snow", negative_prompt="",
                                    do_classifier_free_guidance=True, device=torch.device(DEVICE))
    _sync()
    encode_s = time.perf_counter() - t0
    if recipe == "encode-first":
        pipe.text_encoder.to("cpu")
        _reset_peak()
    if family.name == "wan":
        call = dict(prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1])
    else:
        call = dict(prompt_embeds=embeds[0], prompt_attention_mask=embeds[1], negative_prompt_embeds=embeds[2],
                    negative_prompt_attention_mask=embeds[3])
    if family.fps_is_input:
        call["frame_rate"] = d["fps"]
    marks = []

    def on_step(p, i, t, kw):
        _sync()
        marks.append(time.perf_counter())
        return kw

    # Under model offload the pipeline decodes itself (its hooks move the VAE in); the others hand the
    # latents to the family's own decode, timed apart.
    offload = recipe == "offload"
    t1 = time.perf_counter()
    with torch.inference_mode():
        out = pipe(**call, **shape, num_inference_steps=steps, guidance_scale=d["guidance_scale"],
                   generator=torch.Generator("cpu").manual_seed(0), output_type="np" if offload else "latent",
                   callback_on_step_end=on_step)
    _sync()
    denoise_peak = _peak()
    per_step = (marks[-1] - marks[0]) / (len(marks) - 1) if len(marks) > 1 else marks[0] - t1
    t2 = time.perf_counter()
    if not offload:
        with torch.inference_mode():
            from batchgen.job import Job

            job = Job(prompt="", **shape)  # LTX's decode unpacks the latents by the video's shape
            family.builders().decode(pipe, out.frames, job, torch.Generator("cpu").manual_seed(0))
        _sync()
    decode_s = time.perf_counter() - (marks[-1] if offload else t2)
    peak = _peak()
    default_steps = d["num_inference_steps"]
    row = {"model": name, "recipe": recipe, **shape, "steps_timed": steps, "s_per_step": round(per_step, 3),
           "first_step_s": round(marks[0] - t1, 3), "encode_s": round(encode_s, 3), "decode_s": round(decode_s, 3),
           "peak_gib": round(peak, 2), "denoise_peak_gib": round(denoise_peak, 2), "default_steps": default_steps,
           "per_video_wall_at_default_steps_s": round(encode_s + default_steps * per_step + decode_s, 1)}
    if recipe == "encode-first":  # a batch encodes once; each further video pays no encode
        row["per_video_wall_in_a_batch_s"] = round(default_steps * per_step + decode_s, 1)
    del pipe, out
    _reset_peak()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="realsize-wan2.1-1.3b,realsize-ltx-2b,realsize-wan2.2-5b")
    ap.add_argument("--recipes", default="gpu,encode-first,offload")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=480, help="skip what would start after this many seconds")
    ap.add_argument("--out")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny-wan / tiny-ltx, a tiny shape")
    args = ap.parse_args()
    import torch

    global DEVICE
    if args.tiny:
        DEVICE, args.models = "cpu", "tiny-wan,tiny-ltx"
    start, rows = time.perf_counter(), []
    info = {"gpu": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu", "torch": torch.__version__}
    import diffusers

    info["diffusers"] = diffusers.__version__
    print(json.dumps(info), flush=True)
    for name in args.models.split(","):
        for recipe in args.recipes.split(","):
            if time.perf_counter() - start > args.budget_s:
                rows.append({"model": name, "recipe": recipe, "skipped": "time budget"})
                continue
            try:
                rows.append(run(name, recipe, args.steps))
            except Exception as exc:  # one recipe's failure (out of memory, say) is a row, not the end
                rows.append({"model": name, "recipe": recipe, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
                _reset_peak()
            print(json.dumps(rows[-1]), flush=True)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"info": info, "args": vars(args), "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
