"""Where do `offload` frames part from `resident` ones? One job per profile, hashing every transformer call.

Builds the real-size random-weight pipeline once per profile, renders the same job, and records for each
transformer call the hash of its inputs (latents, text embeddings, timestep) and of its output, then the
hash of the final latents and of the frames. The first call whose hashes differ says where the two
profiles part: the inputs (noise, embeddings), the transformer, or (latents equal, frames not) the decode.

Usage: python benchmarks/offload_vs_resident.py [--profiles resident,offload] [--frames 19] [--steps 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _h(t) -> str:
    import torch

    data = t.detach().to("cpu").contiguous()
    if data.dtype == torch.bfloat16:
        data = data.view(torch.int16)
    return hashlib.sha256(data.numpy().tobytes()).hexdigest()[:12]


def run(profile: str, frames: int, steps: int) -> dict:
    import gc

    import torch

    from batchgen.engine import renderer as render_module
    from batchgen.job import Job
    from batchgen.engine.realsize import build_realsize_pipeline
    from batchgen.engine.renderer import Renderer

    pipe = build_realsize_pipeline("cuda")
    if profile == "offload":
        pipe.to("cpu")  # where from_pretrained leaves it; diffusers' hooks bring each model in
    renderer = Renderer("realsize", profile=profile, device="cuda", progress=False, pipeline=pipe)
    calls: list[dict] = []

    def hook(module, args, kwargs, output):
        calls.append({
            "hidden_states": _h(kwargs["hidden_states"]),
            "encoder_hidden_states": _h(kwargs["encoder_hidden_states"]),
            "timestep": _h(kwargs["timestep"]),
            "output": _h(output[0]),
        })

    handle = pipe.transformer.register_forward_hook(hook, with_kwargs=True)
    latents: dict = {}
    real_decode = render_module.decode_latents

    def spy(pipe_, lat, *a, **k):
        latents["final"] = _h(lat)
        latents["tensor"] = lat.detach().clone()
        out = real_decode(pipe_, lat, *a, **k)
        latents["decoded"] = _h(out)
        return out

    render_module.decode_latents = spy
    try:
        job = Job("a red fox running through fresh snow, golden hour", "blurry, low quality", seed=0,
                  num_frames=frames, height=480, width=848, num_inference_steps=steps)
        renderer.encode([job.prompt, job.negative_prompt])
        result = renderer.render(job)
    finally:
        render_module.decode_latents = real_decode
        handle.remove()
    # The same latents decoded again in this process: as before, then with diffusers' offload hooks removed,
    # then after the VAE went to the CPU and back; the hashes of the decoded tensors tell which matters.
    decodes = {"render": latents["decoded"]}
    with torch.inference_mode():
        decodes["again"] = _h(render_module.decode_latents(pipe, latents["tensor"], profile, "cuda", False))
        pipe.remove_all_hooks()
        pipe.vae.to("cuda")
        decodes["no_hooks"] = _h(render_module.decode_latents(pipe, latents["tensor"], "resident", "cuda", False))
        pipe.vae.to("cpu")
        pipe.vae.to("cuda")
        decodes["vae_round_trip"] = _h(render_module.decode_latents(pipe, latents["tensor"], "resident", "cuda", False))
    row = {"profile": profile, "calls": calls, "final_latents": latents.get("final"),
           "frames_sha256": result.frames_sha256[:16], "decodes": decodes}
    del renderer, pipe
    gc.collect()
    torch.cuda.empty_cache()
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profiles", default="resident,offload")
    ap.add_argument("--frames", type=int, default=19)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows = [run(p, args.frames, args.steps) for p in args.profiles.split(",")]
    for row in rows:
        print(json.dumps(row), flush=True)
    first, *others = rows
    for other in others:
        where = "nowhere: identical"
        # Precomputed modulation (resident) first probes the pipeline with a stand-in transformer forward,
        # which the hook sees too: compare the last `steps` calls, the denoising ones.
        steps = min(len(first["calls"]), len(other["calls"]))
        for i, (a, b) in enumerate(zip(first["calls"][-steps:], other["calls"][-steps:])):
            diff = [k for k in a if a[k] != b[k]]
            if diff:
                where = f"transformer call {i + 1}: {', '.join(diff)} differ"
                break
        else:
            if first["final_latents"] != other["final_latents"]:
                where = "final latents (after the last transformer call)"
            elif first["frames_sha256"] != other["frames_sha256"]:
                where = "the decode (latents identical, frames not)"
        print(f"{first['profile']} vs {other['profile']}: first difference at {where}")
        other["first_difference_from_" + first["profile"]] = where
    if args.json:
        args.json.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "results": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
