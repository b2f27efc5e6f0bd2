"""Wan 2.x text-to-video pipelines (diffusers' WanPipeline): the tiny random-weight one (`model: tiny-wan`)
and the published-size random configs for GPU benchmarks.

WanPipeline cleans every prompt before tokenizing it, with ftfy when ftfy is importable (it rewrites
mojibake, quotes and some Unicode), so the same prompt can give other embeddings where ftfy is installed.
`prompt_cleaning()` says which applies; the family declares ftfy in `prompt_packages` so the fingerprint
and the text cache's key can carry it.
"""

from __future__ import annotations

from importlib import metadata

from batchgen.engine.families import building

PIPELINE_CLASS = "WanPipeline"

# The published transformers (diffusers' conversion configs of the Wan model cards); text_dim 4096 is umT5 XXL's.
_TRANSFORMER_COMMON = dict(patch_size=(1, 2, 2), attention_head_dim=128, text_dim=4096, freq_dim=256,
                           cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)
TRANSFORMERS = {
    "realsize-wan2.1-1.3b": dict(num_attention_heads=12, ffn_dim=8960, num_layers=30, in_channels=16, out_channels=16),
    "realsize-wan2.1-14b": dict(num_attention_heads=40, ffn_dim=13824, num_layers=40, in_channels=16, out_channels=16),
    "realsize-wan2.2-5b": dict(num_attention_heads=24, ffn_dim=14336, num_layers=30, in_channels=48, out_channels=48),
}
# Wan 2.1's VAE is AutoencoderKLWan's default; Wan 2.2 5B has its own 16x one. Its latent statistics are
# placeholders (zeros and ones): with random weights only the shapes matter.
VAE_2_2 = dict(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, in_channels=12, out_channels=12,
               patch_size=2, scale_factor_temporal=4, scale_factor_spatial=16, latents_mean=[0.0] * 48,
               latents_std=[1.0] * 48)
UMT5_XXL = dict(d_model=4096, d_ff=10240, d_kv=64, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu",
                vocab_size=256384, relative_attention_num_buckets=32, relative_attention_max_distance=128)
# Wan's published scheduler: UniPC over flow-matching sigmas, shift 3 (480p).
SCHEDULER = dict(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0)


def prompt_cleaning() -> dict:
    """What WanPipeline does to prompt text here: html unescape and whitespace, plus ftfy if importable."""
    from diffusers.utils import is_ftfy_available

    ftfy = metadata.version("ftfy") if is_ftfy_available() else None
    return {"ftfy": ftfy}


def pipeline_class():
    from diffusers import WanPipeline

    return WanPipeline


def _scheduler():
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(**SCHEDULER)


def _tiny_components() -> dict:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    # The shapes of diffusers' own WanPipeline tests, with a tiny umT5 and batchgen's offline tokenizer:
    # 4x temporal, 8x spatial VAE and 2x2 patches, as the published 2.1 models have.
    return dict(
        vae=AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                             temperal_downsample=[False, True, True]),
        text_encoder=UMT5EncoderModel(UMT5Config(**building.tiny_text_config())),
        transformer=WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                          in_channels=16, out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32,
                                          num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                          rope_max_seq_len=32),
    )


def build_tiny():
    """A random-weight WanPipeline that renders a few frames on a CPU in about a second."""
    components = building.build_tiny(_tiny_components)
    return pipeline_class()(tokenizer=building.tiny_tokenizer(), scheduler=_scheduler(), **components)


def build_realsize(name: str, device: str = "cuda", dtype=None, seed: int = 0):
    """A published-size Wan pipeline (`name` one of TRANSFORMERS) with random weights on `device`."""
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from batchgen.engine.realsize import _tokenizer

    if name not in TRANSFORMERS:
        raise KeyError(f"unknown Wan config {name!r}: choose one of {', '.join(TRANSFORMERS)}")
    vae_config = VAE_2_2 if name == "realsize-wan2.2-5b" else {}
    built = building.build_published(
        {
            "transformer": lambda: WanTransformer3DModel(**_TRANSFORMER_COMMON, **TRANSFORMERS[name]),
            "text_encoder": lambda: UMT5EncoderModel(UMT5Config(**UMT5_XXL)),
            "vae": lambda: AutoencoderKLWan(**vae_config),
        },
        device,
        dtype or torch.bfloat16,
        seed,
    )
    # Wan 2.2 5B (TI2V) denoises each latent frame at its own timestep; its model_index.json sets this.
    extra = {"expand_timesteps": True} if name == "realsize-wan2.2-5b" else {}
    return pipeline_class()(tokenizer=_tokenizer(), scheduler=_scheduler(), **built, **extra)


def decode(pipe, latents, job, generator):
    """The denoised latents to a video tensor in [-1, 1], exactly as WanPipeline decodes them."""
    import torch

    vae = pipe.vae
    # The pipeline's execution device, not the VAE's: under model offload the VAE waits on the CPU and its
    # hook brings it to the GPU, where the latents must already be.
    latents = latents.to(pipe._execution_device, dtype=vae.dtype)
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents.device, latents.dtype)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(latents.device, latents.dtype)
    return vae.decode(latents / inv_std + mean, return_dict=False)[0]
