"""How far each int8 kernel moves Mochi's transformer output from bf16, and what one forward costs.

A published-size MochiTransformer3DModel cut to `--layers` blocks (random weights, bf16, on the GPU) runs
one CFG-batched forward at 480x848 and `--frames` frames. Its block linears are then quantized with
bitsandbytes (as from_pretrained's int8 config does) and run again with
- `llm-int8`: bitsandbytes' own forward (LLM.int8, outlier threshold 6.0),
- `dequant`: batchgen's int8 profile kernel (int8 weight -> bf16 per layer, bf16 multiply),
and, for scale, with fp8 layerwise storage (the `fp8` profile). Prints relative L2 distance of each output
from the bf16 one and the median time of a forward.

Usage: python benchmarks/int8_fidelity.py [--layers 4] [--frames 25] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _timed_forward(model, inputs, repeats: int):
    import torch

    times = []
    out = None
    with torch.no_grad():
        for _ in range(repeats + 1):
            torch.cuda.synchronize()
            start = time.perf_counter()
            out = model(**inputs, return_dict=False)[0]
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return out.float(), statistics.median(times[1:])


def main(argv=None) -> int:
    import torch
    from diffusers import MochiTransformer3DModel

    from batchgen.engine import int8_linear
    from batchgen import settings
    from batchgen.engine.realsize import _default_dtype, _randomize, quantize_transformer_inplace

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--frames", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    with _default_dtype(torch.bfloat16), torch.device("cuda"):
        base = MochiTransformer3DModel(num_layers=args.layers).eval()
    _randomize(base, 0)
    latent_frames = (args.frames - 1) // 6 + 1
    gen = torch.Generator("cuda").manual_seed(1)
    inputs = {
        "hidden_states": torch.randn(2, 12, latent_frames, 60, 106, generator=gen, device="cuda", dtype=torch.bfloat16),
        "encoder_hidden_states": torch.randn(2, 256, 4096, generator=gen, device="cuda", dtype=torch.bfloat16),
        "timestep": torch.tensor([500.0, 500.0], device="cuda"),
        "encoder_attention_mask": torch.ones(2, 256, dtype=torch.bool, device="cuda"),
    }
    reference, ref_s = _timed_forward(base, inputs, args.repeats)
    rows = [{"variant": "bf16", "rel_l2": 0.0, "forward_s": round(ref_s, 4)}]

    def variant(name, prepare):
        model = copy.deepcopy(base)
        prepare(model)
        torch.cuda.empty_cache()
        out, seconds = _timed_forward(model, inputs, args.repeats)
        rel = ((out - reference).norm() / reference.norm()).item()
        rows.append({"variant": name, "rel_l2": round(rel, 5), "forward_s": round(seconds, 4),
                     "vs_bf16": round(seconds / ref_s, 3)})
        print(json.dumps(rows[-1]), flush=True)
        del model, out
        torch.cuda.empty_cache()

    variant("llm-int8", lambda m: quantize_transformer_inplace(m, "int8"))
    variant("dequant", lambda m: (quantize_transformer_inplace(m, "int8"), int8_linear.convert(m)))
    variant("fp8-layerwise", lambda m: m.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn,
                                                                  compute_dtype=torch.bfloat16))
    print(json.dumps(rows[0]))
    if args.json:
        args.json.write_text(json.dumps({
            "command": "python " + " ".join(sys.argv),
            "device": torch.cuda.get_device_name(),
            "layers": args.layers, "frames": args.frames,
            "int8_kernel_default": settings.int8_kernel(),
            "results": rows,
        }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
