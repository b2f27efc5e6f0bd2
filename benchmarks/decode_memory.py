"""Does the VAE decode give other pixels when less GPU memory is free?

Runs in one process: builds the published-size Mochi VAE (random weights, bf16, tiling on), fills
`--ballast-gib` of GPU memory with an unused tensor, then decodes fixed random latents with batchgen's
decode (`batchgen.engine.mochi_decode.decode_video`) and prints the hash of the output. Run it once per ballast size,
each in a fresh process (PyTorch caches the cuDNN plan it picks per convolution shape for the life of a
process): differing hashes mean the convolution plans depend on free memory.

Usage: python benchmarks/decode_memory.py --ballast-gib 0 [--frames 19] [--json out.json]
"""

from __future__ import annotations

from batchgen import settings

import argparse
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    import torch
    from diffusers import AutoencoderKLMochi

    from batchgen.engine import profiles
    from batchgen.engine.realsize import _default_dtype, _randomize
    from batchgen.engine.mochi_decode import decode_video

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ballast-gib", type=float, default=0.0)
    ap.add_argument("--frames", type=int, default=19)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    with _default_dtype(torch.bfloat16), torch.device("cuda"):
        vae = AutoencoderKLMochi().eval()
    _randomize(vae, 2)
    vae.enable_tiling()
    latent_frames = (args.frames - 1) // 6 + 1
    z = torch.randn(1, 12, latent_frames, 60, 106, generator=torch.Generator().manual_seed(0)).to("cuda", torch.bfloat16)
    ballast = torch.empty(int(args.ballast_gib * 2**30), dtype=torch.uint8, device="cuda") if args.ballast_gib else None
    free, total = torch.cuda.mem_get_info()
    with torch.inference_mode():
        video = decode_video(vae, z, settings.decode_latent_frames())
    torch.cuda.synchronize()
    digest = hashlib.sha256(video.float().cpu().numpy().tobytes()).hexdigest()[:16]
    row = {"ballast_gib": args.ballast_gib, "free_gib_before_decode": round(free / 2**30, 2),
           "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
           "decoded_sha256": digest, "shape": list(video.shape)}
    print(json.dumps(row), flush=True)
    del ballast
    if args.json:
        args.json.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "result": row}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
