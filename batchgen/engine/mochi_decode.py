"""Mochi's VAE decode, exact and flat in memory: the latents denormalized as MochiPipeline does, then decoded
in chunks of latent frames (and tiles, as diffusers tiles), giving the one-shot decode's frames.

The other families decode with their pipeline's own steps (families/wan.py, families/ltx.py); this is
Mochi's own lever (Family.own_levers), and why a 163-frame video decodes in ~3 GiB on every profile.
"""

from __future__ import annotations

from batchgen import settings
from batchgen.engine.profile_registry import get as declared


def denormalize_latents(vae, latents, dtype):
    """Undo the latent scaling exactly as MochiPipeline does, in `dtype`."""
    import torch

    latents = latents.to(dtype)
    cfg = vae.config
    mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
    if mean is not None and std is not None:
        channels = latents.shape[1]
        mean = torch.tensor(mean).view(1, channels, 1, 1, 1).to(latents.device, dtype)
        std = torch.tensor(std).view(1, channels, 1, 1, 1).to(latents.device, dtype)
        return latents * std / cfg.scaling_factor + mean
    return latents / cfg.scaling_factor


def decode_latents(pipe, latents, profile: str, device: str, quality: bool, chunk: int | None = None):
    """Latents from the denoiser to a video tensor in [-1, 1].

    The VAE may run in fp32 (quality) while the latents come out bf16, so they are cast here rather than in
    diffusers. On the GPU the decode is also chunked in time (see `decode_video`) so its memory stays flat
    whatever the frame count; the CPU profile keeps diffusers' own decode, which is what its hashes were
    made with.
    """
    vae = pipe.vae
    vae_dtype = next(vae.parameters()).dtype
    if declared(profile).placement == "model-offload":
        vae.to(device)  # diffusers' offload hooks parked it on the CPU at the end of the pipeline call
    z = denormalize_latents(vae, latents.to(device), vae_dtype if quality else latents.dtype).to(vae_dtype)
    if declared(profile).placement == "cpu":
        return vae.decode(z, return_dict=False)[0]
    return decode_video(vae, z, settings.decode_latent_frames() if chunk is None else chunk)


def decode_video(vae, z, latent_frames_per_chunk: int):
    """AutoencoderKLMochi.decode, spatially tiled as diffusers does when tiling is on, and additionally
    decoded `latent_frames_per_chunk` latent frames at a time (0: all at once).

    Exact, unlike diffusers' private framewise decode (which swaps the causal convolutions' replicate
    padding for zero padding, changing every frame): the Mochi decoder has no attention and normalizes
    each frame on its own, so time only flows through its causal 3x convolutions, and feeding each one the
    last two input frames of the previous chunk reproduces the one-shot result.
    """
    import torch

    _, _, _, height, width = z.shape
    ratio = vae.spatial_compression_ratio
    tile_h = vae.tile_sample_min_height // ratio
    tile_w = vae.tile_sample_min_width // ratio
    if not (vae.use_tiling and (width > tile_w or height > tile_h)):
        return _decode_frames(vae, z, latent_frames_per_chunk)
    # Tiling and blending as AutoencoderKLMochi.tiled_decode, with the time-chunked decode per tile.
    stride_h = vae.tile_sample_stride_height // ratio
    stride_w = vae.tile_sample_stride_width // ratio
    blend_h = vae.tile_sample_min_height - vae.tile_sample_stride_height
    blend_w = vae.tile_sample_min_width - vae.tile_sample_stride_width
    rows = []
    for i in range(0, height, stride_h):
        row = []
        for j in range(0, width, stride_w):
            row.append(_decode_frames(vae, z[:, :, :, i : i + tile_h, j : j + tile_w], latent_frames_per_chunk))
        rows.append(row)
    result_rows = []
    for i, row in enumerate(rows):
        result_row = []
        for j, tile in enumerate(row):
            if i > 0:
                tile = vae.blend_v(rows[i - 1][j], tile, blend_h)
            if j > 0:
                tile = vae.blend_h(row[j - 1], tile, blend_w)
            result_row.append(tile[:, :, :, : vae.tile_sample_stride_height, : vae.tile_sample_stride_width])
        result_rows.append(torch.cat(result_row, dim=4))
    return torch.cat(result_rows, dim=3)[:, :, :, : height * ratio, : width * ratio]


def _decode_frames(vae, z, chunk: int):
    import torch

    num_frames = z.shape[2]
    if chunk <= 0 or num_frames <= chunk:
        dec, _ = vae.decoder(z)
    else:
        parts = []
        cache = None
        with _carried_causal_convs(vae.decoder):
            for k in range(0, num_frames, chunk):
                part, cache = vae.decoder(z[:, :, k : k + chunk], conv_cache=cache)
                parts.append(part)
        dec = torch.cat(parts, dim=2)
    if vae.drop_last_temporal_frames and dec.size(2) >= vae.temporal_compression_ratio:
        dec = dec[:, :, vae.temporal_compression_ratio - 1 :]
    return dec


def _causal_conv_with_carry(conv, inputs, conv_cache=None):
    """CogVideoXCausalConv3d in 'replicate' mode, with its two frames of causal context carried over from
    the previous chunk (the first chunk replicates its first frame, as the one-shot decode does)."""
    import torch
    import torch.nn.functional as F

    pad = conv.time_pad
    new_cache = None
    if pad > 0:
        head = conv_cache if conv_cache is not None else inputs[:, :, :1].expand(-1, -1, pad, -1, -1)
        inputs = torch.cat([head, inputs], dim=2)
        new_cache = inputs[:, :, -pad:].clone()
    inputs = F.pad(inputs, (conv.width_pad, conv.width_pad, conv.height_pad, conv.height_pad, 0, 0), mode="replicate")
    return conv.conv(inputs), new_cache


class _carried_causal_convs:
    """Context in which the decoder's causal convolutions carry context between chunks."""

    def __init__(self, decoder):
        from diffusers.models.autoencoders.autoencoder_kl_cogvideox import CogVideoXCausalConv3d

        self.convs = [m for m in decoder.modules() if isinstance(m, CogVideoXCausalConv3d)]

    def __enter__(self):
        import functools

        for conv in self.convs:
            if conv.pad_mode != "replicate":
                raise RuntimeError("chunked decode expects the VAE's causal convolutions in 'replicate' mode")
            conv.forward = functools.partial(_causal_conv_with_carry, conv)
        return self

    def __exit__(self, *exc):
        for conv in self.convs:
            del conv.forward  # back to the class's forward
        return False
