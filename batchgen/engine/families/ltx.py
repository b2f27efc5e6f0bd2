"""LTX-Video text-to-video pipelines (diffusers' LTXPipeline): the tiny random-weight one
(`model: tiny-ltx`) and the published-size 2B random config for GPU benchmarks."""

from __future__ import annotations

from batchgen.engine.families import building

PIPELINE_CLASS = "LTXPipeline"

# LTX-Video 0.9's published scheduler: flow matching with resolution-dependent (dynamic) shifting.
SCHEDULER = dict(base_image_seq_len=1024, base_shift=0.95, max_image_seq_len=4096, max_shift=2.05, shift=1.0,
                 shift_terminal=0.1, use_dynamic_shifting=True, num_train_timesteps=1000)
# LTX-Video 2B (0.9.0): the transformer and VAE are LTXVideoTransformer3DModel's and AutoencoderKLLTXVideo's
# defaults; the text encoder is T5 v1.1 XXL, as Mochi's.
REALSIZE = ("realsize-ltx-2b",)


def pipeline_class():
    from diffusers import LTXPipeline

    return LTXPipeline


def _scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**SCHEDULER)


def _tiny_components() -> dict:
    from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    # Eight channels everywhere, but the published compression: 4x4 pixel patches and three 2x
    # spatio-temporal stages give 32x spatial and 8x temporal, so the tiny model keeps LTX's frame and size rules.
    return dict(
        transformer=LTXVideoTransformer3DModel(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
                                               num_attention_heads=4, attention_head_dim=8, cross_attention_dim=32,
                                               num_layers=1, caption_channels=32),
        vae=AutoencoderKLLTXVideo(latent_channels=8, block_out_channels=(8, 8, 8, 8),
                                  decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
                                  decoder_layers_per_block=(1, 1, 1, 1, 1),
                                  spatio_temporal_scaling=(True, True, True, False),
                                  decoder_spatio_temporal_scaling=(True, True, True, False),
                                  patch_size=4, patch_size_t=1, encoder_causal=True, decoder_causal=False),
        text_encoder=T5EncoderModel(T5Config(**building.tiny_text_config())),
    )


def build_tiny():
    """A random-weight LTXPipeline that renders a few frames on a CPU in about a second."""
    components = building.build_tiny(_tiny_components)
    return pipeline_class()(tokenizer=building.tiny_tokenizer(), scheduler=_scheduler(), **components)


def build_realsize(name: str = "realsize-ltx-2b", device: str = "cuda", dtype=None, seed: int = 0):
    """LTX-Video 2B with random weights on `device`."""
    import torch
    from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    from batchgen.engine.realsize import T5_XXL, _tokenizer

    if name not in REALSIZE:
        raise KeyError(f"unknown LTX-Video config {name!r}: choose one of {', '.join(REALSIZE)}")
    built = building.build_published(
        {
            "transformer": LTXVideoTransformer3DModel,
            "text_encoder": lambda: T5EncoderModel(T5Config(**T5_XXL)),
            "vae": AutoencoderKLLTXVideo,
        },
        device,
        dtype or torch.bfloat16,
        seed,
    )
    return pipeline_class()(tokenizer=_tokenizer(), scheduler=_scheduler(), **built)


def decode(pipe, latents, job, generator):
    """The denoised (packed) latents to a video tensor in [-1, 1], exactly as LTXPipeline decodes them with
    its default decode_timestep 0. A timestep-conditioned VAE draws its decode noise from the job's
    generator after denoising, as the pipeline does."""
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    vae = pipe.vae
    latents = pipe._unpack_latents(
        latents,
        (job.num_frames - 1) // pipe.vae_temporal_compression_ratio + 1,
        job.height // pipe.vae_spatial_compression_ratio,
        job.width // pipe.vae_spatial_compression_ratio,
        pipe.transformer_spatial_patch_size,
        pipe.transformer_temporal_patch_size,
    )
    latents = pipe._denormalize_latents(latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
    latents = latents.to(pipe.transformer.dtype)  # the pipeline's cast to its prompt embeddings' dtype
    timestep = None
    if vae.config.timestep_conditioning:
        noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        timestep = torch.tensor([0.0], device=latents.device, dtype=latents.dtype)
        latents = latents + 0.0 * noise  # decode_noise_scale = decode_timestep = 0: the draw, not the noise
    return vae.decode(latents.to(vae.dtype), timestep, return_dict=False)[0]
