"""A published-size Mochi 1 pipeline with random weights, built straight on the GPU.

For measuring memory and speed without downloading 40 GB: the shapes (10B AsymmDiT, T5 v1.1 XXL encoder,
Mochi VAE) are the real ones, the numbers are noise. Everything is allocated on the target device in the
target dtype, because a CPU fp32 init of 15B parameters takes minutes and 60 GB of RAM.
"""

from __future__ import annotations

import contextlib
import string

from batchgen import settings

REALSIZE = "realsize"

# T5 v1.1 XXL, encoder only (what Mochi uses).
T5_XXL = dict(
    d_model=4096,
    d_ff=10240,
    d_kv=64,
    num_layers=24,
    num_heads=64,
    feed_forward_proj="gated-gelu",
    vocab_size=32128,
)


def _tokenizer():
    from transformers import T5Tokenizer

    # Characters and a few thousand fake word pieces: tokens are padded to 256 anyway, so only the vocabulary's
    # range matters (every id must be < 32128).
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -3.0) for c in string.printable if not c.isspace()]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


@contextlib.contextmanager
def _default_dtype(dtype):
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _randomize(module, seed: int) -> None:
    """Cheap, deterministic random weights: the modules' own initializers are slow on 10B parameters."""
    import torch

    gen = torch.Generator(device=next(module.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim == 1 and ("norm" in name or name.endswith("scale")):
                param.fill_(1.0)  # norm gains: keep activations finite through 48 blocks
            elif param.ndim == 1:
                param.zero_()
            else:
                param.normal_(0.0, 0.02, generator=gen)


def build_realsize_pipeline(
    device: str = "cuda",
    dtype=None,
    *,
    text_encoder_dtype=None,
    vae_dtype=None,
    seed: int = 0,
    transformer_on_meta: bool = False,
):
    """MochiPipeline with published-size modules and random weights, allocated directly on `device`.

    `transformer_on_meta` leaves the 20 GB transformer unallocated until `materialize_transformer`
    (benchmarks/helpers.py), so a benchmark can run the text-encoding phase without it on the GPU, as a real
    batch (loaded to the CPU) does.
    """
    import torch
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    dtype = dtype or torch.bfloat16
    built = {}
    for name, make, mdtype in (
        ("transformer", lambda: MochiTransformer3DModel(), dtype),
        ("text_encoder", lambda: T5EncoderModel(T5Config(**T5_XXL)), text_encoder_dtype or dtype),
        ("vae", lambda: AutoencoderKLMochi(), vae_dtype or dtype),
    ):
        on_meta = transformer_on_meta and name == "transformer"
        with _default_dtype(mdtype), torch.device("meta" if on_meta else device):
            module = make()
        if not on_meta:
            _randomize(module, seed + len(built))
        module.eval()
        built[name] = module
    pipe = MochiPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=built["vae"],
        text_encoder=built["text_encoder"],
        tokenizer=_tokenizer(),
        transformer=built["transformer"],
    )
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return pipe


def quantize_transformer_inplace(transformer, kind: str) -> int:
    """Swap the transformer blocks' Linear layers for bitsandbytes ones, quantizing on the GPU.

    Stands in for diffusers' own `from_pretrained(quantization_config=...)` path, which needs a checkpoint on
    disk; like it, only nn.Linear weights are quantized. Returns the number of layers swapped.
    """
    import bitsandbytes as bnb
    import torch

    count = 0
    for block in transformer.transformer_blocks:
        for parent in list(block.modules()):
            for child_name, child in list(parent.named_children()):
                if type(child) is not torch.nn.Linear:
                    continue
                device = child.weight.device
                has_bias = child.bias is not None
                if kind == "nf4":
                    new = bnb.nn.Linear4bit(
                        child.in_features,
                        child.out_features,
                        bias=has_bias,
                        compute_dtype=torch.bfloat16,
                        quant_type="nf4",
                        device="meta",
                    )
                    new.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4")
                    new.weight = new.weight._quantize(device)
                elif kind == "int8":
                    new = bnb.nn.Linear8bitLt(
                        child.in_features,
                        child.out_features,
                        bias=has_bias,
                        has_fp16_weights=False,
                        # What from_pretrained gives: diffusers' BitsAndBytesConfig(load_in_8bit=True) keeps
                        # LLM.int8's outlier threshold of 6.0 (runs 1-4 used 0.0, which measured a cheaper kernel).
                        threshold=settings.bench_int8_threshold(),
                        device="meta",
                    )
                    new.weight = bnb.nn.Int8Params(child.weight.data, requires_grad=False, has_fp16_weights=False)
                    new.weight = new.weight._quantize(device)
                else:
                    raise ValueError(f"unknown quantization {kind!r}")
                if has_bias:
                    new.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
                setattr(parent, child_name, new)
                count += 1
        torch.cuda.empty_cache()
    # diffusers keys off these to leave quantized models where they are (no .to(), no offload hooks).
    transformer.is_quantized = True
    return count

