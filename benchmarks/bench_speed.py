"""Speed of Mochi 1's denoiser under batchgen's exact fast path: attention kernels, processors, torch.compile.

Real-size random weights (batchgen.engine.realsize), bf16, CFG (batch 2), 480x848. Stages, in priority order, each
saved to the JSON as soon as it is measured (a run cut short keeps what it has):

1. attn: the joint attention alone at each frame count, every backend of batchgen.engine.attention plus
   diffusers' per-sample loop; TFLOP/s over the valid tokens and the largest difference from diffusers.
2. steps: one transformer forward (= one denoising step with CFG) per variant and frame count:
   - diffusers: diffusers' MochiAttnProcessor2_0, eager (today's default)
   - batchgen:  BatchgenMochiAttnProcessor (backend chosen by stage 1, or --backend), eager
   - compiled:  the same + batchgen.engine.compile.compile_blocks (fullgraph, dynamic=False)
   - diffusers-flash: diffusers' processor on the FlashAttention-2 kernel instead of torch's default: an
     equally exact computation, whose difference from `diffusers` is the bf16 noise floor that the
     differences of the other variants are to be judged against
   s/step is the median of --steps timed forwards after --warmup; for `compiled` the first forward of each
   shape is timed apart: compile_s = first forward - s/step. Output differences against `diffusers` on the
   same inputs are recorded (max |diff| and relative L2).
3. wall: per-video wall time of a batch of 4 jobs at 25 frames, 50 steps, EXTRAPOLATED as
   50 * s/step(compiled, 25f) + pipeline overhead/step + decode + postprocess + MP4 write
   + (encode of the batch's 5 texts + compile_s) / 4
   where the overhead per step is measured by a real `pipe(...)` call of a few steps (its time per step
   minus the transformer's), decode/postprocess/write by running them once on one 25-frame latent.
4. e2e (not in the default stages): the same batch for real, through batchgen's Renderer (resident) with
   the processor and compiled blocks, each video written with batchgen.outputs.video.write_mp4: measured.

FLOP per step (model FLOP, printed with its formula): 2 * (linear MACs) + attention, for both CFG samples:
per block, per video token 4*d^2 (q,k,v,out) + 3*d*f (SwiGLU ff, f = 8d/3); per text token (all 256 slots,
as diffusers computes them) 3*d*p + d*p + 3*p*g (p = 1536, g = 8p/3; the last block has no text output);
per sample the modulation linears; plus patch embed, caption projection and proj_out; attention
4*d*(N+T)^2 per block per sample (d = heads * head_dim). MFU = FLOP / time / 798 TFLOP/s (the H100's
measured dense bf16 rate). The issue's own rougher count (2 * 10B params * tokens * 2 + attention) is
printed beside it as `nominal`: it charges every token for the modulation and text weights, about 25%
more FLOP than the model does at 163 frames.

Usage (device):  python benchmarks/bench_speed.py --out $OUT/speed.json [--frames 25,163,85]
                 [--stages attn,steps,wall] [--variants diffusers,batchgen,compiled] [--budget-s 420]
         (CPU):  python benchmarks/bench_speed.py --tiny      # smoke test of the script on the tiny model
"""

from __future__ import annotations

from helpers import restore_fp8_blocks
from batchgen.engine.module_state import peek

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PEAK_TFLOPS = 798.0  # H100 SXM, dense bf16, measured on this workplace's machine (KINDS.md)
TEXT_LENGTHS = (9, 21)  # valid T5 tokens of the CFG pair (negative, prompt): typical short prompts
HEIGHT, WIDTH = 480, 848


# -- FLOP model ----------------------------------------------------------------------------------------
def step_flops(config, num_frames: int, height: int, width: int, text_tokens: int = 256, cfg: bool = True) -> dict:
    """Model FLOP of one denoising step (one transformer forward of 1 or 2 samples)."""
    p = config.patch_size
    d = config.num_attention_heads * config.attention_head_dim
    pd = config.pooled_projection_dim
    f = (4 * d * 2) // 3
    g = (4 * pd * 2) // 3
    layers = config.num_layers
    latent_frames = (num_frames - 1) // 6 + 1
    n = latent_frames * (height // 8 // p) * (width // 8 // p)
    t = text_tokens
    video_macs = n * (4 * d * d + 3 * d * f)
    text_macs_full = t * (3 * pd * d + d * pd + 3 * pd * g)
    text_macs_last = t * (3 * pd * d)  # context_pre_only: no to_add_out, no ff_context
    mod_macs_full = d * 4 * d + d * 4 * pd
    mod_macs_last = d * 4 * d + d * pd
    per_sample_linear = (
        (layers - 1) * (video_macs + text_macs_full + mod_macs_full)
        + video_macs
        + text_macs_last
        + mod_macs_last
        + n * (config.in_channels * p * p * d + d * p * p * (config.out_channels or config.in_channels))
        + t * config.text_embed_dim * pd
    )
    attention = 4 * d * (n + t) ** 2 * layers
    samples = 2 if cfg else 1
    linear = 2 * per_sample_linear * samples
    total = linear + attention * samples
    params = sum(
        [
            layers * (4 * d * d + 3 * d * f),
            (layers - 1) * (3 * pd * d + d * pd + 3 * pd * g) + 3 * pd * d,
            (layers - 1) * mod_macs_full + mod_macs_last,
        ]
    )
    nominal = 2 * params * (n + t) * samples + attention * samples
    return {
        "video_tokens": n,
        "text_tokens": t,
        "linear_flop": linear,
        "attention_flop": attention * samples,
        "flop": total,
        "block_linear_params": params,
        "nominal_flop": nominal,
    }


FLOP_FORMULA = (
    "FLOP/step = samples * [2 * (48 blocks * (N*(4d^2 + 3df) + T*(4pd + 3pg) + modulation) + embed/proj) "
    "+ 48 * 4d(N+T)^2];  d=3072, f=8192, p=1536, g=4096, T=256, N=latent_frames*30*53, samples=2 (CFG)"
)


# -- helpers -------------------------------------------------------------------------------------------
class Clock:
    def __init__(self, cuda: bool):
        self.cuda = cuda

    def sync(self):
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def time(self, fn, *args, **kwargs):
        self.sync()
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self.sync()
        return time.perf_counter() - start, out


def _rel(a, b) -> dict:
    a, b = a.float(), b.float()
    return {
        "max_abs_diff": float((a - b).abs().max()),
        "rel_l2": float((a - b).norm() / b.norm().clamp_min(1e-30)),
        "ref_max_abs": float(b.abs().max()),
    }


def env_info(cuda: bool) -> dict:
    import diffusers
    import torch

    from batchgen.engine import attention

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "fa3_installed": attention._fa3_module() is not None,
        "sdp_priority_order": [str(x) for x in torch._C._get_sdp_priority_order()]
        if hasattr(torch._C, "_get_sdp_priority_order")
        else None,
    }
    if cuda:
        info["device"] = torch.cuda.get_device_name()
        info["capability"] = list(torch.cuda.get_device_capability())
        info["cudnn"] = torch.backends.cudnn.version()
        info["cuda"] = torch.version.cuda
    try:
        import flash_attn

        info["flash_attn"] = flash_attn.__version__
    except Exception:
        info["flash_attn"] = None
    return info


# -- stage 1: attention kernels ------------------------------------------------------------------------
def _diffusers_attention(q, k, v, key_valid):
    """diffusers' per-sample loop (MochiAttnProcessor2_0's core) on the (B, S, H, D) joint tensors."""
    import torch
    import torch.nn.functional as F

    outs = []
    for i in range(q.shape[0]):
        idx = torch.nonzero(key_valid[i], as_tuple=False).flatten()
        o = F.scaled_dot_product_attention(*(t[i : i + 1, idx].transpose(1, 2) for t in (q, k, v)))
        outs.append(F.pad(o, (0, 0, 0, q.shape[1] - o.shape[2])))
    return torch.cat(outs).transpose(1, 2)


def bench_attention(args, frames: int, heads: int, head_dim: int, tokens_per_frame: int, device, dtype) -> dict:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from batchgen.engine import attention

    clock = Clock(device.type == "cuda")
    latent_frames = (frames - 1) // 6 + 1
    n, t = latent_frames * tokens_per_frame, 256
    gen = torch.Generator("cpu").manual_seed(frames)
    q, k, v = (torch.randn(2, n + t, heads, head_dim, generator=gen).to(device, dtype) for _ in range(3))
    text = torch.zeros(2, t, dtype=torch.bool)
    for i, length in enumerate(TEXT_LENGTHS):
        text[i, : min(length, t)] = True
    key_valid = attention._key_valid(text, n).to(device)
    valid = key_valid.sum(1).tolist()
    flop = sum(4 * heads * head_dim * s * s for s in valid)

    def ours(name, ctx=None):
        def run():
            if ctx is None:
                return attention.joint_attention(q, k, v, key_valid, name)
            with sdpa_kernel([ctx]):
                return attention.joint_attention(q, k, v, key_valid, name)

        return run

    candidates = {"diffusers-loop": lambda: _diffusers_attention(q, k, v, key_valid)}
    for name in attention.BACKENDS:
        candidates[name] = ours(name)
    if device.type == "cuda":
        candidates["prefix[cudnn]"] = ours("prefix", SDPBackend.CUDNN_ATTENTION)
        candidates["prefix[flash]"] = ours("prefix", SDPBackend.FLASH_ATTENTION)
    rows = {}
    with torch.no_grad():
        ref = _diffusers_attention(q, k, v, key_valid) * key_valid[:, :, None, None]
        for name, fn in candidates.items():
            try:
                for _ in range(args.attn_warmup):
                    out = fn()
                times = [clock.time(fn)[0] for _ in range(args.attn_iters)]
                s = statistics.median(times)
                rows[name] = {"ms": round(s * 1e3, 3), "tflops": round(flop / s / 1e12, 1), **_rel(out, ref)}
            except Exception as exc:
                rows[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
            print(f"  attn {frames}f {name:16s} {rows[name]}", flush=True)
    return {"frames": frames, "video_tokens": n, "valid_lengths": valid, "flop": flop, "kernels": rows}


def fastest_exact(attn_rows: list[dict], tol: float = 2e-2) -> str | None:
    """The backend of batchgen.engine.attention with the lowest time at the largest frame count, among those that
    agree with diffusers' loop to bf16 precision."""
    from batchgen.engine import attention

    if not attn_rows:
        return None
    biggest = max(attn_rows, key=lambda r: r["frames"])["kernels"]
    ok = [
        (r["ms"], name)
        for name, r in biggest.items()
        if name in attention.BACKENDS and "ms" in r and r["rel_l2"] < tol
    ]
    return min(ok)[1] if ok else None


# -- stage 2: denoising steps --------------------------------------------------------------------------
def step_inputs(transformer, frames: int, height: int, width: int, device, dtype, text_tokens: int):
    import torch

    cfg = transformer.config
    gen = torch.Generator("cpu").manual_seed(1000 + frames)
    latent_frames = (frames - 1) // 6 + 1
    hidden = torch.randn(2, cfg.in_channels, latent_frames, height // 8, width // 8, generator=gen)
    text = torch.randn(2, text_tokens, cfg.text_embed_dim, generator=gen)
    # dtypes as MochiPipeline passes them (a different dtype would be another compiled graph)
    mask = torch.zeros(2, text_tokens, dtype=torch.bool)
    for i, length in enumerate(TEXT_LENGTHS):
        mask[i, : min(length, text_tokens)] = True
    return {
        "hidden_states": hidden.to(device, dtype),
        "encoder_hidden_states": text.to(device, dtype),
        "timestep": torch.full((2,), 500.0, device=device, dtype=dtype),
        "encoder_attention_mask": mask.to(device),
        "return_dict": False,
    }


def bench_steps(args, transformer, frames: int, variant: str, backend: str, device, dtype, refs: dict) -> dict:
    import torch

    from batchgen.engine import attention
    from batchgen.engine import compile as bcompile

    cuda = device.type == "cuda"
    clock = Clock(cuda)
    inputs = step_inputs(transformer, frames, args.height, args.width, device, dtype, args.text_tokens)
    kernel = contextlib.nullcontext()
    if variant in ("diffusers", "diffusers-flash"):
        attention.uninstall(transformer)
        bcompile.uncompile_blocks(transformer)
        used = "diffusers"
        if variant == "diffusers-flash":
            # The same exact math on another SDPA kernel: the size of a kernel-choice difference in bf16.
            from torch.nn.attention import SDPBackend, sdpa_kernel

            # cuDNN left out; the masked pooling in Mochi's caption embedding still needs efficient/math.
            kernel = sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
            used = "diffusers[flash]"
    else:
        used = attention.install(transformer, backend)
        if variant == "fp8-compiled":
            # The fp8-fast profile: fp8 multiplies in the blocks' linears, compiled; undone after measuring.
            from batchgen.engine import fp8_matmul

            bcompile.uncompile_blocks(transformer)
            fp8_matmul.convert_blocks(transformer, keep_originals=True)
            bcompile.compile_blocks(transformer, mode=args.compile_mode)
        elif variant == "compiled":
            if not peek(transformer).compiled:
                bcompile.compile_blocks(transformer, mode=args.compile_mode)
        else:
            bcompile.uncompile_blocks(transformer)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad(), kernel:
        first_s, out = clock.time(transformer, **inputs)
        for _ in range(args.warmup - 1 if variant != "compiled" else args.warmup):
            clock.time(transformer, **inputs)
        times = [clock.time(transformer, **inputs)[0] for _ in range(args.steps)]
    s_step = statistics.median(times)
    flops = step_flops(transformer.config, frames, args.height, args.width, args.text_tokens)
    row = {
        "frames": frames,
        "variant": variant,
        "attention": used,
        "s_per_step": round(s_step, 4),
        "step_times": [round(x, 4) for x in times],
        "first_forward_s": round(first_s, 3),
        "mfu": round(flops["flop"] / s_step / (PEAK_TFLOPS * 1e12), 4),
        "nominal_mfu": round(flops["nominal_flop"] / s_step / (PEAK_TFLOPS * 1e12), 4),
        "tflops": round(flops["flop"] / s_step / 1e12, 1),
        "flop": flops["flop"],
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }
    if variant in ("compiled", "fp8-compiled"):
        row["compile_s"] = round(first_s - s_step, 2)
    if variant == "fp8-compiled":
        from batchgen.engine import fp8_matmul

        bcompile.uncompile_blocks(transformer)
        restore_fp8_blocks(transformer)
    sample = out[0].float().cpu()
    if variant == "diffusers":
        refs[frames] = sample
    elif frames in refs:
        row["vs_diffusers"] = _rel(sample, refs[frames])
    return row


# -- stage 3: per-video wall time ----------------------------------------------------------------------
def bench_wall(args, pipe, backend: str, steps_rows: list[dict], device, dtype) -> dict:
    import numpy as np
    import torch

    from batchgen.engine import attention
    from batchgen.engine import compile as bcompile
    from batchgen.engine.mochi_decode import decode_latents
    from batchgen.engine.renderer import to_uint8

    cuda = device.type == "cuda"
    clock = Clock(cuda)
    frames = args.wall_frames
    jobs, steps = args.wall_jobs, args.wall_steps
    compiled = [r for r in steps_rows if r["variant"] == "compiled" and r["frames"] == frames]
    eager = [r for r in steps_rows if r["variant"] == "batchgen" and r["frames"] == frames]
    use = compiled or eager
    if not use:
        raise RuntimeError(f"no timed steps at {frames} frames to extrapolate from")
    s_step = use[0]["s_per_step"]
    compile_s = use[0].get("compile_s", 0.0)
    out = {"frames": frames, "jobs": jobs, "steps": steps, "from_variant": use[0]["variant"], "s_per_step": s_step}

    texts = ["a red fox running through fresh snow, golden hour", "a paper boat drifting down a rainy street",
             "a hot air balloon over a desert canyon at dawn", "an old tram crossing a bridge in the fog",
             "blurry, low quality"][: jobs + 1]
    max_len = args.text_tokens
    if pipe.text_encoder is not None and cuda:
        pipe.text_encoder.to(device)
    enc_s, embeds = clock.time(
        lambda: [pipe.encode_prompt(prompt=t, do_classifier_free_guidance=False, max_sequence_length=max_len,
                                    device=device) for t in texts]
    )
    out["encode_batch_s"] = round(enc_s, 3)
    if cuda:
        pipe.text_encoder.to("cpu")  # what profiles.release_text_encoder does before denoising
        torch.cuda.empty_cache()

    # A real pipeline call of a few steps: the pipeline's per-step overhead beyond the transformer.
    attention.install(pipe.transformer, backend)
    if out["from_variant"] == "compiled" and not peek(pipe.transformer).compiled:
        bcompile.compile_blocks(pipe.transformer, mode=args.compile_mode)
    pos, pos_mask, _, _ = embeds[0]
    neg, neg_mask, _, _ = embeds[-1]
    few = args.wall_probe_steps
    call = dict(
        prompt_embeds=pos.to(dtype), prompt_attention_mask=pos_mask, negative_prompt_embeds=neg.to(dtype),
        negative_prompt_attention_mask=neg_mask, num_frames=frames, height=args.height, width=args.width,
        guidance_scale=4.5, output_type="latent", max_sequence_length=max_len,
    )
    with torch.inference_mode():
        pipe(num_inference_steps=2, generator=torch.Generator("cpu").manual_seed(0), **call)  # warm (shape compiled)
        probe_s, result = clock.time(
            lambda: pipe(num_inference_steps=few, generator=torch.Generator("cpu").manual_seed(0), **call)
        )
    per_step_pipe = probe_s / few
    out["pipe_probe"] = {"steps": few, "s": round(probe_s, 3), "s_per_step": round(per_step_pipe, 4)}
    overhead_step = max(per_step_pipe - s_step, 0.0)
    out["pipeline_overhead_per_step_s"] = round(overhead_step, 4)

    latents = result.frames
    profile = "resident" if cuda else "cpu"
    if cuda:
        pipe.vae.enable_tiling()  # as profiles.prepare_denoiser does
    with torch.inference_mode():
        decode_latents(pipe, latents, profile, str(device), False)  # warm-up (cuDNN conv autotune)
        dec_s, video = clock.time(lambda: decode_latents(pipe, latents, profile, str(device), False))
        post_start = time.perf_counter()
        frames_u8 = to_uint8(np.asarray(pipe.video_processor.postprocess_video(video, output_type="np")[0]))
        post_s = time.perf_counter() - post_start
    out["decode_s"] = round(dec_s, 3)
    out["postprocess_s"] = round(post_s, 3)
    out["frames_shape"] = list(frames_u8.shape)
    try:
        from batchgen.outputs.video import write_mp4

        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            write_mp4(frames_u8, Path(tmp) / "v.mp4", 30)
            out["write_s"] = round(time.perf_counter() - start, 3)
    except Exception as exc:
        out["write_s"] = None
        out["write_error"] = f"{type(exc).__name__}: {exc}"
    write_s = out["write_s"] if out["write_s"] is not None else args.write_s_fallback
    per_video = steps * (s_step + overhead_step) + dec_s + post_s + write_s + (enc_s + compile_s) / jobs
    out["write_s_used"] = write_s
    out["compile_s"] = compile_s
    out["per_video_wall_s"] = round(per_video, 2)
    out["per_video_wall_s_without_compile"] = round(per_video - compile_s / jobs, 2)
    out["formula"] = (
        "steps*(s_per_step + pipeline_overhead_per_step_s) + decode_s + postprocess_s + write_s_used "
        "+ (encode_batch_s + compile_s)/jobs"
    )
    return out


# -- stage 4: a real batch end to end ------------------------------------------------------------------
def bench_e2e(args, pipe, backend: str) -> dict:
    """A batch of --wall-jobs jobs through batchgen's Renderer (resident profile) with the processor and
    compiled blocks, each video written as MP4 as the runner does: measured, not extrapolated."""
    import torch

    from batchgen.engine import attention
    from batchgen.engine import compile as bcompile
    from batchgen.job import Job
    from batchgen.engine.renderer import Renderer
    from batchgen.outputs.video import write_mp4

    cuda = not args.tiny
    prompts = ["a red fox running through fresh snow, golden hour", "a paper boat drifting down a rainy street",
               "a hot air balloon over a desert canyon at dawn", "an old tram crossing a bridge in the fog"]
    jobs = [
        Job(prompt=prompts[i % len(prompts)], negative_prompt="blurry, low quality", seed=i,
            num_frames=args.wall_frames, height=args.height, width=args.width,
            num_inference_steps=args.wall_steps, guidance_scale=4.5)
        for i in range(args.wall_jobs)
    ]
    renderer = Renderer("realsize" if cuda else "tiny", profile="resident" if cuda else "cpu",
                        device="cuda" if cuda else "cpu", progress=False, pipeline=pipe)
    out = {"frames": args.wall_frames, "steps": args.wall_steps, "jobs": []}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        renderer.encode([t for j in jobs for t in (j.prompt, j.negative_prompt)])
        renderer._ensure_denoiser()
        out["attention"] = attention.install(pipe.transformer, backend)
        out["compile"] = dataclasses.asdict(bcompile.compile_blocks(pipe.transformer, mode=args.compile_mode))
        if cuda:
            torch.cuda.synchronize()
        out["setup_s"] = round(time.perf_counter() - start, 2)
        for i, job in enumerate(jobs):
            t0 = time.perf_counter()
            rendered = renderer.render(job)
            t1 = time.perf_counter()
            write_mp4(rendered.frames, Path(tmp) / f"{i}.mp4", job.fps)
            t2 = time.perf_counter()
            out["jobs"].append({"wall_s": round(t2 - t0, 2), "render_s": round(t1 - t0, 2),
                                "s_per_step": round(rendered.seconds_per_step, 4),
                                "decode_s": round(rendered.decode_seconds, 2), "write_s": round(t2 - t1, 2),
                                "frames_sha256": rendered.frames_sha256[:16]})
            print(f"  e2e job {i}: {out['jobs'][-1]}", flush=True)
        total = time.perf_counter() - start
    later = out["jobs"][1:] or out["jobs"]
    out["batch_wall_s"] = round(total, 2)
    out["per_video_wall_s"] = round(total / len(jobs), 2)
    out["per_video_wall_s_steady"] = round(statistics.mean(j["wall_s"] for j in later), 2)
    out["compile_in_first_job_s"] = round(out["jobs"][0]["wall_s"] - out["per_video_wall_s_steady"], 2)
    return out


# -- driver --------------------------------------------------------------------------------------------
def build(args):
    import torch

    if args.tiny:
        from batchgen.engine.loading import build_tiny_pipeline

        return build_tiny_pipeline(), torch.device("cpu"), torch.float32
    from batchgen.engine.realsize import build_realsize_pipeline

    pipe = build_realsize_pipeline("cuda")
    pipe.text_encoder.to("cpu")  # encoded first and parked, as a batch does; back for stage 3
    torch.cuda.empty_cache()
    return pipe, torch.device("cuda"), torch.bfloat16


def print_tables(report: dict) -> None:
    print(f"\n{FLOP_FORMULA}")
    for row in report.get("attn", []):
        print(f"\nattention alone, {row['frames']} frames ({row['video_tokens']} video tokens, valid {row['valid_lengths']}):")
        print(f"  {'kernel':16s} {'ms':>9s} {'TFLOP/s':>8s} {'rel_l2 vs diffusers':>20s}")
        for name, r in row["kernels"].items():
            if "ms" in r:
                print(f"  {name:16s} {r['ms']:9.2f} {r['tflops']:8.1f} {r['rel_l2']:20.2e}")
            else:
                print(f"  {name:16s} {r['error']}")
    rows = report.get("steps", [])
    if rows:
        print(f"\none denoising step (CFG batch 2), {report['args']['height']}x{report['args']['width']}:")
        print(f"  {'frames':>6s} {'variant':10s} {'attention':13s} {'s/step':>8s} {'TFLOP/s':>8s} {'MFU':>6s} "
              f"{'nominal':>7s} {'compile_s':>9s} {'rel_l2 vs diffusers':>20s}")
        for r in rows:
            rel = r.get("vs_diffusers", {}).get("rel_l2")
            print(f"  {r['frames']:6d} {r['variant']:10s} {r['attention']:13s} {r['s_per_step']:8.3f} {r['tflops']:8.1f} "
                  f"{r['mfu']:6.1%} {r['nominal_mfu']:7.1%} {r.get('compile_s', ''):>9} "
                  f"{'' if rel is None else f'{rel:.2e}':>20s}")
    wall = report.get("wall")
    if wall and "per_video_wall_s" in wall:
        print(f"\nper-video wall time, batch of {wall['jobs']} at {wall['frames']} frames, {wall['steps']} steps "
              f"(extrapolated: {wall['formula']}): {wall['per_video_wall_s']} s "
              f"({wall['per_video_wall_s_without_compile']} s once compiled)")
        print("  " + ", ".join(f"{k}={wall[k]}" for k in ("s_per_step", "pipeline_overhead_per_step_s", "decode_s",
                                                          "postprocess_s", "write_s_used", "encode_batch_s", "compile_s")))
    e2e = report.get("e2e")
    if e2e and "per_video_wall_s" in e2e:
        print(f"\nmeasured batch of {len(e2e['jobs'])} through Renderer + write_mp4, {e2e['frames']} frames, "
              f"{e2e['steps']} steps: batch {e2e['batch_wall_s']} s, per video {e2e['per_video_wall_s']} s "
              f"(compile included), {e2e['per_video_wall_s_steady']} s per later video")
    for err in report.get("errors", []):
        print(f"\nERROR in {err['stage']}: {err['error']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test with batchgen's tiny pipeline")
    ap.add_argument("--frames", default=None, help="comma list, in the order to run (default 25,163,85)")
    ap.add_argument("--stages", default="attn,steps,wall")
    ap.add_argument("--variants", default="diffusers,batchgen,compiled")
    ap.add_argument("--variants-at", default="", help="per-frame override, e.g. '85:diffusers+batchgen'")
    ap.add_argument("--backend", default="fastest", help="fastest (from stage attn), auto, or a backend name")
    ap.add_argument("--compile-mode", default=None)
    ap.add_argument("--steps", type=int, default=3, help="timed forwards per variant and shape")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--attn-iters", type=int, default=5)
    ap.add_argument("--attn-warmup", type=int, default=2)
    ap.add_argument("--wall-frames", type=int, default=25)
    ap.add_argument("--wall-jobs", type=int, default=4)
    ap.add_argument("--wall-steps", type=int, default=50)
    ap.add_argument("--wall-probe-steps", type=int, default=4)
    ap.add_argument("--write-s-fallback", type=float, default=1.5, help="MP4 write seconds if ffmpeg is missing")
    ap.add_argument("--budget-s", type=float, default=1e9, help="skip stages that start after this many seconds")
    ap.add_argument("--out", default=None, help="JSON path (also copied to benchmarks/results/)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.height, args.width, args.text_tokens = 64, 96, 16
        frames = [int(f) for f in (args.frames or "7,13").split(",")]
        args.steps, args.wall_steps, args.wall_probe_steps = min(args.steps, 2), min(args.wall_steps, 4), 2
        args.wall_frames = frames[0]
    else:
        args.height, args.width, args.text_tokens = HEIGHT, WIDTH, 256
        frames = [int(f) for f in (args.frames or "25,163,85").split(",")]
    stages = set(args.stages.split(","))
    variants = args.variants.split(",")
    per_frame = {int(k): v.split("+") for k, v in (x.split(":") for x in args.variants_at.split(",") if x)}

    import torch

    t0 = time.perf_counter()
    name = "speed_cpu_tiny.json" if args.tiny else "speed_h100.json"
    out_path = Path(args.out) if args.out else Path(os.environ.get("OUT", ".")) / name
    # Device results are committed; the CPU smoke test's are not.
    results_copy = None if args.tiny else Path(__file__).resolve().parent / "results" / out_path.name
    report = {"command": " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])), "args": vars(args),
              "peak_tflops": PEAK_TFLOPS, "flop_formula": FLOP_FORMULA, "errors": []}

    def save():
        report["elapsed_s"] = round(time.perf_counter() - t0, 1)
        for path in (out_path, results_copy):
            if path is None:
                continue
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(report, indent=1, default=str))
            except OSError as exc:
                print(f"could not write {path}: {exc}")

    def over_budget(what):
        if time.perf_counter() - t0 > args.budget_s:
            report["errors"].append({"stage": what, "error": f"skipped: over --budget-s {args.budget_s}"})
            print(f"skipping {what}: over budget", flush=True)
            return True
        return False

    cuda = not args.tiny
    report["env"] = env_info(cuda)
    print(json.dumps(report["env"]), flush=True)
    start = time.perf_counter()
    pipe, device, dtype = build(args)
    report["build_s"] = round(time.perf_counter() - start, 1)
    cfg = pipe.transformer.config
    report["flops"] = {f: step_flops(cfg, f, args.height, args.width, args.text_tokens) for f in frames}
    print(f"built in {report['build_s']} s; {FLOP_FORMULA}", flush=True)
    for f, fl in report["flops"].items():
        print(f"  {f} frames: N={fl['video_tokens']} FLOP/step={fl['flop']:.3e} (linear {fl['linear_flop']:.3e}, "
              f"attention {fl['attention_flop']:.3e}; nominal {fl['nominal_flop']:.3e})", flush=True)
    save()

    backend = args.backend
    if "attn" in stages:
        report["attn"] = []
        tokens_per_frame = (args.height // 16) * (args.width // 16)
        for f in frames:
            if over_budget(f"attn {f}"):
                break
            try:
                report["attn"].append(
                    bench_attention(args, f, cfg.num_attention_heads, cfg.attention_head_dim, tokens_per_frame, device, dtype)
                )
            except Exception as exc:
                report["errors"].append({"stage": f"attn {f}", "error": traceback.format_exc(limit=3)})
                print(exc, flush=True)
            save()
    if backend == "fastest":
        backend = fastest_exact(report.get("attn", [])) or "auto"
    from batchgen.engine import attention

    report["auto_choice"] = attention.choose_backend(device, dtype)
    report["backend"] = backend
    print(f"backend for the batchgen variants: {backend} (auto would choose {report['auto_choice']})", flush=True)
    save()

    report["steps"] = []
    if "steps" in stages:
        for f in frames:
            refs: dict = {}
            for variant in per_frame.get(f, variants):
                if over_budget(f"steps {f} {variant}"):
                    continue
                try:
                    row = bench_steps(args, pipe.transformer, f, variant, backend, device, dtype, refs)
                    report["steps"].append(row)
                    print(f"  steps {row}", flush=True)
                except Exception as exc:
                    report["errors"].append({"stage": f"steps {f} {variant}", "error": traceback.format_exc(limit=4)})
                    print(f"steps {f} {variant} failed: {exc}", flush=True)
                if cuda:
                    torch.cuda.empty_cache()
                save()
            if "wall" in stages and f == args.wall_frames and not over_budget("wall"):
                # Right after its shape's steps: the compiled graphs for it are still the latest ones.
                try:
                    report["wall"] = bench_wall(args, pipe, backend, report["steps"], device, dtype)
                    print(f"  wall {report['wall']}", flush=True)
                except Exception as exc:
                    report["errors"].append({"stage": "wall", "error": traceback.format_exc(limit=4)})
                    print(f"wall failed: {exc}", flush=True)
                save()
    if "e2e" in stages and not over_budget("e2e"):
        try:
            report["e2e"] = bench_e2e(args, pipe, backend)
            print(f"  e2e {report['e2e']}", flush=True)
        except Exception as exc:
            report["errors"].append({"stage": "e2e", "error": traceback.format_exc(limit=4)})
            print(f"e2e failed: {exc}", flush=True)
        save()
    print_tables(report)
    save()
    print(f"\nwrote {out_path}{'' if results_copy is None else f' and {results_copy}'} ({report['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
