"""Placing the models for a profile: what loads how, where each model sits in each phase, and undoing it.

Every decision here reads the profile's declaration (profile_registry.py) rather than its name, so a new
profile that combines existing placements and weights needs no edit here.
"""

from __future__ import annotations

from batchgen import settings
from batchgen.engine.families import MOCHI, Family
from batchgen.engine.module_state import state
from batchgen.engine.profile_registry import get as _declared

# bitsandbytes backends of the quantized weight kinds, as diffusers' PipelineQuantizationConfig names them.
_QUANT_BACKEND = {"int8": "bitsandbytes_8bit", "nf4": "bitsandbytes_4bit"}


def quantization_config(profile: str):
    """diffusers' own pipeline quantization config for int8/nf4 (transformers' BitsAndBytesConfig is refused)."""
    import torch
    from diffusers import PipelineQuantizationConfig

    weights = _declared(profile).weights
    if weights == "int8":
        return PipelineQuantizationConfig(
            quant_backend="bitsandbytes_8bit",
            quant_kwargs={"load_in_8bit": True},
            components_to_quantize=["transformer"],
        )
    if weights == "nf4":
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

    if _declared(profile).weights == "fp32":
        return {"dtype": torch.float32}
    kwargs: dict = {"dtype": torch.bfloat16}
    if _declared(profile).weights in _QUANT_BACKEND:
        kwargs["quantization_config"] = quantization_config(profile)
    return kwargs


def text_encoder_dtype(profile: str, quality: bool):
    import torch

    if _declared(profile).weights == "fp32" or quality:
        return torch.float32
    return torch.bfloat16


def _is_quantized(module) -> bool:
    return bool(getattr(module, "is_quantized", False)) or getattr(module, "hf_quantizer", None) is not None


def _has_group_offload(module) -> bool:
    registry = getattr(module, "_diffusers_hook", None)
    return registry is not None and registry.get_hook("group_offloading") is not None


def _stream_blocks(module, device: str) -> None:
    """diffusers' block-level group offloading, one block per group, copies on a CUDA stream."""
    from diffusers.hooks import apply_group_offloading

    apply_group_offloading(
        module,
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


def prepare_text_encoder(pipe, profile: str, device: str, quality: bool) -> None:
    """Phase one: only the text encoder on the device (whole, or streamed block by block)."""
    te = pipe.text_encoder
    dtype = text_encoder_dtype(profile, quality)
    if _declared(profile).streams_text_encoder and device.startswith("cuda"):
        if _has_group_offload(te.encoder):
            return
        te.to(dtype=dtype)
        # T5EncoderModel's only ModuleList sits in .encoder; grouping there streams its 24 blocks.
        _stream_blocks(te.encoder, device)
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


def _group_offload(transformer, device: str, resident_gib: float, family: Family = MOCHI) -> int:
    """Block-level group offloading with CUDA streams, some blocks kept resident. Returns how many."""
    import torch

    blocks = getattr(transformer, family.blocks)
    block_bytes = sum(p.numel() * p.element_size() for p in blocks[0].parameters())
    keep = set(_resident_block_indices(len(blocks), int(resident_gib * 2**30 // max(block_bytes, 1))))
    # Hooks are only built for what the module tree holds while they are applied: hand diffusers a list of
    # the streamed blocks alone, then put the full list back. The resident ones run unhooked in between.
    setattr(transformer, family.blocks, torch.nn.ModuleList([b for i, b in enumerate(blocks) if i not in keep]))
    # Mochi's timestep/caption embedder stays resident too (0.1 GiB): precomputed modulation calls it
    # outside the transformer's forward, where diffusers' hooks would not have brought it in. Other
    # families call every embedder inside the forward: diffusers streams them with the rest.
    time_embed = transformer.time_embed if family.own_levers else None
    if time_embed is not None:
        transformer.time_embed = None
    try:
        _stream_blocks(transformer, device)
    finally:
        setattr(transformer, family.blocks, blocks)
        if time_embed is not None:
            transformer.time_embed = time_embed
    if time_embed is not None:
        time_embed.to(device)
    for i in keep:
        blocks[i].to(device)
    return len(keep)


def _install_attention(transformer, backend: str) -> None:
    """batchgen's attention processor on Mochi's blocks (the other families keep diffusers' own, which gives
    the same pixels on every placement). "prefix" is bit-identical to diffusers' (measured on the H100),
    with no data-dependent shapes, so the blocks compile without graph breaks; never "auto", which would
    pick FlashAttention 3 where installed and change pixels. "fp8": the recipe BATCHGEN_FP8_ATTN_RECIPE
    names (fp8_attention_recipes.py)."""
    if backend == "fp8":
        from batchgen.engine import fp8_attention_recipes

        fp8_attention_recipes.install(transformer)
    else:
        from batchgen.engine import attention

        attention.install(transformer, backend)


def prepare_denoiser(pipe, profile: str, device: str, quality: bool, vae_tiling: bool = True,
                     family: Family = MOCHI) -> None:
    """Phase two: the transformer and VAE placed for the whole batch. A family without batchgen's own
    levers (Family.own_levers) keeps diffusers' attention processor and its AdaLN layers in place."""
    import torch

    if vae_tiling:
        pipe.vae.enable_tiling()
    from batchgen.engine import modulation

    declared = _declared(profile)
    transformer = pipe.transformer
    done = state(transformer)
    if (declared.weights == "int8" and _is_quantized(transformer) and not done.int8_linears
            and settings.int8_kernel() == "dequant"):
        from batchgen.engine.int8_linear import convert

        done.int8_linears = convert(transformer)
    if family.own_levers and modulation.enabled(profile):
        # Before any placement, so the AdaLN layers never take GPU memory (see modulation.py). detach takes
        # plain and batchgen's int8 layers only, so bitsandbytes' own (LLM.int8) stay where they are.
        modulation.detach(transformer)
    if declared.placement == "cpu":
        pipe.to("cpu")
        return
    if family.own_levers and done.attention is None:
        _install_attention(transformer, declared.attention)
    vae_dtype = torch.float32 if quality else torch.bfloat16
    pipe.vae.to(dtype=vae_dtype)
    if declared.placement == "model-offload":
        # The text encoder is done: keep it out of the offload chain so it never comes back to the GPU.
        pipe.enable_model_cpu_offload(device=device)
        return
    pipe.vae.to(device)
    if declared.placement == "group-offload":
        if not _has_group_offload(transformer):
            done.resident_blocks = _group_offload(transformer, device, settings.group_offload_resident_gib(), family)
        return
    if declared.weights == "fp8-storage":
        if not done.fp8_storage:
            transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
            done.fp8_storage = True
        transformer.to(device)
        return
    if declared.weights in _QUANT_BACKEND and _is_quantized(transformer):
        return  # bitsandbytes placed it on the GPU while loading; quantized models refuse .to()
    transformer.to(device)
    if declared.weights == "fp8-matmul" and not done.fp8_linears:
        from batchgen.engine.fp8_matmul import convert_blocks

        convert_blocks(transformer)
    if declared.compiles and not done.compiled:
        from batchgen.engine.compile import compile_blocks

        # Compiled once per shape on first use; jobs of one shape run together, so it is paid once.
        compile_blocks(transformer, family.blocks)


def teardown_denoiser(pipe, profile: str, family: Family = MOCHI) -> None:
    """Undo `prepare_denoiser` far enough that another profile can be prepared (OOM step-down)."""
    import gc

    import torch

    from batchgen.engine import modulation

    declared = _declared(profile)
    modulation.release(pipe.transformer)
    if state(pipe.transformer).compiled:
        from batchgen.engine.compile import uncompile_blocks

        uncompile_blocks(pipe.transformer, family.blocks)
    if declared.placement == "model-offload":
        pipe.remove_all_hooks()
        pipe.transformer.to("cpu")
    elif declared.placement == "gpu" and declared.weights == "bf16":
        # Group offloading copies the weights to pinned CPU memory itself; dropping the GPU copy first
        # halves the peak of the switch.
        pipe.transformer.to("cpu")
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
