"""Memory profiles: where each model lives and in what precision while a batch renders.

Every profile runs in two phases, because a batch knows all its prompts up front: first the text encoder
alone encodes every distinct text, then it is freed and the denoiser (and VAE) are set up once for the
whole batch and stay put, so a video costs nothing beyond its denoising steps and its decode.

| profile        | denoiser weights on the GPU                      | text encoder while encoding |
|----------------|--------------------------------------------------|-----------------------------|
| resident       | all but the AdaLN layers (a), bf16               | all                         |
| fast           | all, bf16, blocks compiled                       | all                         |
| fp8-fast       | all, block linears fp8 multiplied, compiled      | all                         |
| offload        | all while denoising, none while decoding         | all (diffusers' offload)    |
| group-offload  | a few GiB of blocks; the rest streamed per step  | streamed block by block     |
| fp8            | all but the AdaLN layers (a), stored fp8         | all                         |
| int8           | all but the AdaLN layers (a), int8 (b)           | all                         |
| nf4            | all, bitsandbytes NF4 linears (b)                | streamed                    |

(a) their outputs depend only on the timestep and the prompt, so they are precomputed per job from a
pinned CPU copy (modulation.py): 2.7B parameters that never take GPU memory, with the same pixels.
(b) int8 multiplies in bf16 from its int8 weights (int8_linear.py), nf4 with bitsandbytes' own kernels.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

PROFILES = ("auto", "cpu", "resident", "fast", "fp8-fast", "offload", "group-offload", "fp8", "int8", "nf4")

# Profiles that compute in plain bf16 give the same pixels wherever the weights sit between steps.
_PRECISION = {
    "cpu": "fp32",
    "resident": "bf16",
    # Compiled blocks fuse bf16 arithmetic differently (~2e-2 relative): other pixels, another id.
    "fast": "bf16-compiled",
    # fp8 multiplies with per-token and per-channel scales (fp8_matmul.py), compiled like fast.
    "fp8-fast": "fp8-rowwise-compiled",
    # Measured on the H100: model CPU offload did not reproduce resident's frames byte for byte (the
    # denoising matches; the decode differs once the VAE has been to the CPU and back, which offload does
    # every video: benchmarks/offload_vs_resident.py), so it keeps ids of its own. group-offload matches.
    "offload": "bf16-offload",
    "group-offload": "bf16",
    "fp8": "fp8",
    # int8 weights dequantized per layer, bf16 multiplies (int8_linear.py); "int8" was LLM.int8's.
    "int8": "int8-bf16",
    "nf4": "nf4",
}

# Next profile down on a CUDA out-of-memory error, keeping the precision (and so the job ids and pixels).
# offload is skipped on the way down: group-offload needs less memory and is faster.
_FALLBACK = {
    "resident": "group-offload",
    "fast": None,
    "fp8-fast": None,
    "offload": None,
    "group-offload": None,
    "fp8": None,
    "int8": None,
    "nf4": None,
    "cpu": None,
}
# When changing precision is acceptable too (the caller re-derives job ids), the smallest profile is nf4.
_FALLBACK_ANY_PRECISION = {
    "resident": "group-offload",
    "fast": "group-offload",
    "fp8-fast": None,  # its bf16 weights are gone once converted: nothing to step down to in place
    "offload": "group-offload",
    "group-offload": "nf4",
    "fp8": "nf4",
    "int8": "nf4",
    "nf4": None,
    "cpu": None,
}

# Profiles whose denoiser needs so little memory that a fully resident T5 XXL (9 GiB in bf16) would set
# the peak: their text encoder is streamed block by block instead (a once-per-batch cost).
_STREAM_TEXT_ENCODER = {"group-offload", "nf4"}

# group-offload keeps this many GiB of transformer blocks resident: streaming all 48 blocks every step
# makes the step wait for PCIe; keeping some lets the rest stream behind the compute.
GROUP_OFFLOAD_RESIDENT_GIB = float(os.environ.get("BATCHGEN_GROUP_OFFLOAD_RESIDENT_GIB", "4"))

# VAE decode in chunks of this many latent frames (6 video frames each), so decode memory does not grow
# with the video's length. 0 decodes all frames at once.
DECODE_LATENT_FRAMES = int(os.environ.get("BATCHGEN_DECODE_LATENT_FRAMES", "1"))

# Memory model used by `auto`, in GiB, for Mochi 1 at bf16 compute with CFG (batch 2). Fitted from the H100
# runs in benchmarks/results/ (see benchmarks/RESULTS.md), rounded up.
_DENOISER_WEIGHTS_GIB = {
    # 10.03B parameters in bf16, less the 2.70B AdaLN ones that precomputed modulation keeps on the CPU
    # (batchgen/engine/modulation.py), plus a job's table of their outputs.
    "resident": 13.9,
    "fast": 18.7,  # compiled blocks keep the AdaLN layers
    "fp8-fast": 12.8,  # 7.3B block linears in fp8, the AdaLN layers and the rest in bf16
    "offload": 18.7,
    "group-offload": GROUP_OFFLOAD_RESIDENT_GIB + 1.5,  # resident blocks, embeddings, blocks in flight
    "fp8": 7.5,  # fp8 storage for what is left on the GPU, small modules in bf16
    # 7.3B int8 block weights (the AdaLN layers are precomputed, in int8 on the CPU), one layer dequantized
    # at a time. Measured 9.43 GiB denoising at 25 frames, 16.37 at 163 (run 12).
    "int8": 7.0,
    "nf4": 5.0,
}
_ACTIVATION_GIB_PER_KTOKEN = 0.22  # per 1000 latent tokens (CFG batch included); 163 frames = 44.5k tokens
_DECODE_GIB = 3.0  # VAE weights + one tiled, time-chunked decode chunk, whatever the frame count
_MARGIN_GIB = 1.5  # CUDA context, allocator fragmentation
# Fastest first; auto only walks the bf16 ones so that it never changes the pixels on its own.
_AUTO_ORDER = ("resident", "group-offload")


@dataclass(frozen=True)
class ProfileChoice:
    name: str
    device: str
    reason: str


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def latent_tokens(num_frames: int, height: int, width: int) -> int:
    """Tokens the transformer attends over for one video (Mochi: 6x temporal, 8x spatial VAE, 2x2 patches)."""
    latent_frames = (num_frames - 1) // 6 + 1
    return latent_frames * math.ceil(height / 16) * math.ceil(width / 16)


def estimate_peak_gib(profile: str, num_frames: int = 163, height: int = 480, width: int = 848) -> float:
    """Rough peak VRAM of rendering one video under `profile`; what `auto` compares with free memory."""
    tokens = latent_tokens(num_frames, height, width)
    denoise = _DENOISER_WEIGHTS_GIB[profile] + _ACTIVATION_GIB_PER_KTOKEN * tokens / 1000
    # offload takes the denoiser off the GPU before decoding; the rest decode beside it.
    decode = _DECODE_GIB if profile == "offload" else _DENOISER_WEIGHTS_GIB[profile] + _DECODE_GIB
    return max(denoise, decode) + _MARGIN_GIB


def resolve(
    profile: str,
    device: str | None = None,
    *,
    largest: tuple[int, int, int] | None = None,
) -> ProfileChoice:
    """Turn `auto` (or a profile that cannot run here) into a concrete profile, saying why.

    `largest` is (num_frames, height, width) of the batch's biggest job; without it auto assumes Mochi's
    longest video (163 frames at 480x848).
    """
    import torch

    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" or not device.startswith("cuda"):
        if profile not in ("auto", "cpu"):
            return ProfileChoice("cpu", "cpu", f"no CUDA device: profile '{profile}' needs a GPU, using 'cpu'")
        return ProfileChoice("cpu", "cpu", "no CUDA device")
    if profile == "cpu":
        return ProfileChoice("cpu", "cpu", "asked for")
    if profile == "fp8-fast":
        from batchgen.errors import BatchgenError
        from batchgen.engine.fp8_matmul import supported

        why_not = supported(device)
        if why_not:
            raise BatchgenError(f"profile 'fp8-fast': {why_not}. Use 'fast' (bf16) or 'fp8' (fp8 storage) instead.")
    if profile != "auto":
        return ProfileChoice(profile, device, "asked for")
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return choose_auto(free / 2**30, device, largest)


def choose_auto(free_gib: float, device: str, largest: tuple[int, int, int] | None = None) -> ProfileChoice:
    """The fastest bf16 profile whose estimated peak fits `free_gib`; nf4 when none does."""
    frames, height, width = largest or (163, 480, 848)
    size = f"{frames} frames at {height}x{width}"
    for name in _AUTO_ORDER:
        need = estimate_peak_gib(name, frames, height, width)
        if need <= free_gib:
            if name == "resident":
                why = f"{free_gib:.1f} GiB free, resident needs ~{need:.0f} GiB for {size}: bf16 denoiser kept on the GPU"
            else:
                rneed = estimate_peak_gib("resident", frames, height, width)
                why = (
                    f"{free_gib:.1f} GiB free, resident would need ~{rneed:.0f} GiB for {size}: "
                    f"streaming bf16 blocks from CPU (~{need:.0f} GiB, same pixels, a little slower)"
                )
            return ProfileChoice(name, device, why)
    need = estimate_peak_gib("nf4", frames, height, width)
    return ProfileChoice(
        "nf4",
        device,
        f"{free_gib:.1f} GiB free, even group-offload needs more for {size}: 4-bit NF4 denoiser (~{need:.0f} GiB, "
        "different pixels)",
    )


INT8_KERNELS = ("dequant", "llm-int8")


def int8_kernel() -> str:
    """The int8 profile's multiply, from BATCHGEN_INT8_KERNEL: "dequant" (default; int8_linear.py) or
    "llm-int8" (bitsandbytes' own, which renders precision "int8")."""
    value = os.environ.get("BATCHGEN_INT8_KERNEL", "").strip() or "dequant"
    if value not in INT8_KERNELS:
        from batchgen.errors import BatchgenError

        raise BatchgenError(f"BATCHGEN_INT8_KERNEL={value!r}: expected one of {', '.join(INT8_KERNELS)}")
    return value


_INT8_PRECISION_KERNEL = {"int8": "llm-int8", "int8-bf16": "dequant"}


def int8_hint(precision: str) -> str:
    """What to add to a message about `precision` when it is the int8 profile's under the kernel that is
    not chosen now (BATCHGEN_INT8_KERNEL); "" otherwise."""
    wanted = _INT8_PRECISION_KERNEL.get(precision.split("+", 1)[0])
    if wanted is None or wanted == int8_kernel():
        return ""
    if wanted == "llm-int8":
        return " (it was rendered with bitsandbytes' LLM.int8 kernel: set BATCHGEN_INT8_KERNEL=llm-int8 to use it again)"
    return " (it was rendered with batchgen's int8 kernel: unset BATCHGEN_INT8_KERNEL to use it again)"


def int8_kernel_switched(recorded: str, current: str) -> bool:
    """Whether two precisions are the same recipe but for the int8 profile's kernel."""
    (rb, _, rs), (cb, _, cs) = recorded.partition("+"), current.partition("+")
    return rs == cs and rb != cb and {rb, cb} <= set(_INT8_PRECISION_KERNEL)


def precision(profile: str, quality: bool = False, deterministic: bool = False, approximate: str | None = None) -> str:
    """The numeric recipe a profile renders with; part of every job id. Deterministic algorithms are part
    of it: on the H100 they gave other frames than the default kernels (benchmarks/results/gpu_repro_h100.log).
    So is an approximate accelerator (batchgen.engine.approximate), as "+fbc0.05" or "+pab"."""
    base = _PRECISION[profile]
    if profile == "int8" and int8_kernel() == "llm-int8":
        base = "int8"
    if quality:
        base += "+quality"
    if approximate:
        base += "+" + approximate
    return base + "+deterministic" if deterministic else base


def fallback(profile: str, *, same_precision: bool = True) -> str | None:
    """The next lower-memory profile after a CUDA out-of-memory error, or None at the bottom."""
    table = _FALLBACK if same_precision else _FALLBACK_ANY_PRECISION
    return table.get(profile)


def quantization_config(profile: str):
    """diffusers' own pipeline quantization config for int8/nf4 (transformers' BitsAndBytesConfig is refused)."""
    import torch
    from diffusers import PipelineQuantizationConfig

    if profile == "int8":
        return PipelineQuantizationConfig(
            quant_backend="bitsandbytes_8bit",
            quant_kwargs={"load_in_8bit": True},
            components_to_quantize=["transformer"],
        )
    if profile == "nf4":
        return PipelineQuantizationConfig(
            quant_backend="bitsandbytes_4bit",
            quant_kwargs={
                "load_in_4bit": True,
                "bnb_4bit_quant_type": "nf4",
                "bnb_4bit_compute_dtype": torch.bfloat16,
            },
            components_to_quantize=["transformer"],
        )
    return None


def load_kwargs(profile: str, device: str) -> dict:
    """Keyword arguments for `MochiPipeline.from_pretrained` under this profile."""
    import torch

    if profile == "cpu":
        return {"dtype": torch.float32}
    kwargs: dict = {"dtype": torch.bfloat16}
    if profile in ("int8", "nf4"):
        kwargs["quantization_config"] = quantization_config(profile)
    return kwargs


def text_encoder_dtype(profile: str, quality: bool):
    import torch

    if profile == "cpu" or quality:
        return torch.float32
    return torch.bfloat16


def _is_quantized(module) -> bool:
    return bool(getattr(module, "is_quantized", False)) or getattr(module, "hf_quantizer", None) is not None


def _has_group_offload(module) -> bool:
    registry = getattr(module, "_diffusers_hook", None)
    return registry is not None and registry.get_hook("group_offloading") is not None


def prepare_text_encoder(pipe, profile: str, device: str, quality: bool) -> None:
    """Phase one: only the text encoder on the device (whole, or streamed block by block)."""
    te = pipe.text_encoder
    dtype = text_encoder_dtype(profile, quality)
    if profile in _STREAM_TEXT_ENCODER and device.startswith("cuda"):
        if _has_group_offload(te.encoder):
            return
        from diffusers.hooks import apply_group_offloading

        te.to(dtype=dtype)
        # T5EncoderModel's only ModuleList sits in .encoder; grouping there streams its 24 blocks.
        apply_group_offloading(
            te.encoder,
            onload_device=device,
            offload_device="cpu",
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=True,
            non_blocking=True,
            record_stream=True,
        )
        return
    te.to(device=device, dtype=dtype)


def release_text_encoder(pipe) -> None:
    """Free the text encoder's GPU memory once every text of the batch is encoded."""
    import gc

    import torch

    te = pipe.text_encoder
    if te is not None and not _has_group_offload(te.encoder):
        te.to("cpu")
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _resident_block_indices(num_blocks: int, keep: int) -> list[int]:
    """`keep` block indices spread evenly: each resident block's compute hides part of the next streamed
    block's copy, which a contiguous run of resident blocks would not (prefetch looks one group ahead)."""
    if keep <= 0:
        return []
    if keep >= num_blocks:
        return list(range(num_blocks))
    return sorted({int((i + 0.5) * num_blocks / keep) for i in range(keep)})


def _group_offload(transformer, device: str, resident_gib: float) -> int:
    """Block-level group offloading with CUDA streams, some blocks kept resident. Returns how many."""
    import torch
    from diffusers.hooks import apply_group_offloading

    blocks = transformer.transformer_blocks
    block_bytes = sum(p.numel() * p.element_size() for p in blocks[0].parameters())
    keep = set(_resident_block_indices(len(blocks), int(resident_gib * 2**30 // max(block_bytes, 1))))
    # Hooks are only built for what the module tree holds while they are applied: hand diffusers a list of
    # the streamed blocks alone, then put the full list back. The resident ones run unhooked in between.
    transformer.transformer_blocks = torch.nn.ModuleList([b for i, b in enumerate(blocks) if i not in keep])
    # The timestep/caption embedder stays resident too (0.1 GiB): precomputed modulation calls it outside
    # the transformer's forward, where diffusers' hooks would not have brought it in.
    time_embed = transformer.time_embed
    transformer.time_embed = None
    try:
        apply_group_offloading(
            transformer,
            onload_device=device,
            offload_device="cpu",
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=True,
            # Without these diffusers blocks the host on every copy and after every block, so the copies
            # serialize with the compute instead of hiding behind it.
            non_blocking=True,
            record_stream=True,
        )
    finally:
        transformer.transformer_blocks = blocks
        transformer.time_embed = time_embed
    time_embed.to(device)
    for i in keep:
        blocks[i].to(device)
    return len(keep)


def prepare_denoiser(pipe, profile: str, device: str, quality: bool, vae_tiling: bool = True) -> None:
    """Phase two: the transformer and VAE placed for the whole batch."""
    import torch

    if vae_tiling:
        pipe.vae.enable_tiling()
    from batchgen.engine import modulation

    transformer = pipe.transformer
    if (profile == "int8" and _is_quantized(transformer) and not getattr(transformer, "_batchgen_int8_linears", 0)
            and int8_kernel() == "dequant"):
        from batchgen.engine.int8_linear import convert

        transformer._batchgen_int8_linears = convert(transformer)
    if modulation.enabled(profile):
        # Before any placement, so the AdaLN layers never take GPU memory (see modulation.py). detach takes
        # plain and batchgen's int8 layers only, so bitsandbytes' own (LLM.int8) stay where they are.
        modulation.detach(transformer)
    if profile == "cpu":
        pipe.to("cpu")
        return
    # batchgen's attention: bit-identical to diffusers' (measured on the H100), no data-dependent shapes,
    # so the blocks compile without graph breaks. "prefix" rather than "auto": auto would pick
    # FlashAttention 3 where installed, which changes pixels.
    from batchgen.engine import attention

    if getattr(pipe.transformer, "_batchgen_attention", None) is None:
        attention.install(pipe.transformer, "prefix")
    vae_dtype = torch.float32 if quality else torch.bfloat16
    pipe.vae.to(dtype=vae_dtype)
    if profile == "offload":
        # The text encoder is done: keep it out of the offload chain so it never comes back to the GPU.
        pipe.enable_model_cpu_offload(device=device)
        return
    pipe.vae.to(device)
    if profile == "group-offload":
        if not _has_group_offload(transformer):
            transformer._batchgen_resident_blocks = _group_offload(transformer, device, GROUP_OFFLOAD_RESIDENT_GIB)
        return
    if profile == "fp8":
        if not getattr(transformer, "_batchgen_fp8", False):
            transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
            transformer._batchgen_fp8 = True
        transformer.to(device)
        return
    if profile in ("int8", "nf4") and _is_quantized(transformer):
        return  # bitsandbytes placed it on the GPU while loading; quantized models refuse .to()
    transformer.to(device)
    if profile == "fp8-fast" and not getattr(transformer, "_batchgen_fp8_linears", 0):
        from batchgen.engine.fp8_matmul import convert_blocks

        convert_blocks(transformer)
    if profile in ("fast", "fp8-fast") and not getattr(transformer, "_batchgen_compiled", False):
        from batchgen.engine.compile import compile_blocks

        # Compiled once per shape on first use; jobs of one shape run together, so it is paid once.
        transformer._batchgen_compile_stats = compile_blocks(transformer).as_dict()
        transformer._batchgen_compiled = True


def teardown_denoiser(pipe, profile: str) -> None:
    """Undo `prepare_denoiser` far enough that another profile can be prepared (OOM step-down)."""
    import gc

    import torch

    from batchgen.engine import modulation

    modulation.release(pipe.transformer)
    if getattr(pipe.transformer, "_batchgen_compiled", False):
        from batchgen.engine.compile import uncompile_blocks

        uncompile_blocks(pipe.transformer)
        pipe.transformer._batchgen_compiled = False
    if profile == "offload":
        pipe.remove_all_hooks()
        pipe.transformer.to("cpu")
    elif profile in ("resident", "fast"):
        # Group offloading copies the weights to pinned CPU memory itself; dropping the GPU copy first
        # halves the peak of the switch.
        pipe.transformer.to("cpu")
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
