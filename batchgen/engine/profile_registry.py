"""The memory profiles, one declaration each: everything else about a profile is derived from here.

Every profile runs in two phases, because a batch knows all its prompts up front: first the text encoder
alone encodes every distinct text, then it is freed and the denoiser (and VAE) are set up once for the
whole batch and stay put, so a video costs nothing beyond its denoising steps and its decode.

| profile        | denoiser weights on the GPU                      | text encoder while encoding |
|----------------|--------------------------------------------------|-----------------------------|
| resident       | all but the AdaLN layers (a), bf16               | all                         |
| fast           | all, bf16, blocks compiled                       | all                         |
| fp8-fast       | all, block linears fp8 multiplied, compiled      | all                         |
| fp8-attn       | fp8-fast plus fp8 attention (FA3, Hopper)        | all                         |
| offload        | all while denoising, none while decoding         | all (diffusers' offload)    |
| group-offload  | a few GiB of blocks; the rest streamed per step  | streamed block by block     |
| fp8            | all but the AdaLN layers (a), stored fp8         | all                         |
| int8           | all but the AdaLN layers (a), int8 (b)           | all                         |
| nf4            | all, bitsandbytes NF4 linears (b)                | streamed                    |

(a) their outputs depend only on the timestep and the prompt, so they are precomputed per job from a
pinned CPU copy (modulation.py): 2.7B parameters that never take GPU memory, with the same pixels.
(b) int8 multiplies in bf16 from its int8 weights (int8_linear.py), nf4 with bitsandbytes' own kernels.

No torch here, not even inside a function: manifest/ reads previous runs' precisions through this module,
and the import-linter contract keeps torch out of manifest/. Placing the models is engine/placement.py's
job, choosing a profile on this machine engine/profiles.py's. Adding a profile is one `Profile(...)` in
`_DECLARED` (plus its kernel module when it brings one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from batchgen import settings

if TYPE_CHECKING:
    from batchgen.engine.families import Memory


@dataclass(frozen=True)
class Profile:
    name: str
    # The numeric recipe, part of every job id: profiles that give the same pixels share it.
    precision: str
    # How the denoiser sits during a batch: "cpu", "gpu" (all of it resident), "model-offload" (diffusers'
    # model CPU offload), "group-offload" (blocks streamed per step).
    placement: str
    # How its weights are stored and multiplied: "fp32", "bf16", "fp8-storage" (layerwise casting),
    # "fp8-matmul" (fp8_matmul.py), "int8" (bitsandbytes 8-bit, converted by int8_linear.py), "nf4".
    weights: str = "bf16"
    summary: str = ""
    needs_cuda: bool = True
    needs_bitsandbytes: bool = False
    needs_fp8_cores: bool = False  # Ada/Hopper fp8 tensor cores (fp8_matmul.MIN_CAPABILITY)
    needs_fp8_attention: bool = False  # Hopper and FlashAttention-3's fp8 kernel (fp8_attention.unavailable)
    compiles: bool = False  # torch.compile of the blocks (an inductor cache beside the batch pays off)
    attention: str = "prefix"  # batchgen attention backend (attention.py); "prefix" is diffusers' pixels;
    # "fp8": fp8_attention.py's recipe (fp8_attention_recipes.py)
    precomputes_modulation: bool = False  # AdaLN layers kept on the CPU (modulation.py)
    streams_text_encoder: bool = False  # T5 streamed block by block rather than resident while encoding
    allows_approximate: bool = False  # diffusers' cache hooks (approximate.py) can wrap its blocks
    storage: str | None = None  # how the weights are stored, as the fingerprint records it (None: dtype)
    # The memory model `auto` and doctor use, in GiB: denoiser weights on the GPU (plus the group-offload
    # resident blocks when `plus_resident_blocks`), and whether the VAE decodes beside them.
    denoiser_gib: float = 0.0
    plus_resident_blocks: bool = False
    decodes_beside_denoiser: bool = True
    # Next profile down on a CUDA out-of-memory error, keeping the precision (so job ids and pixels) ...
    step_down: str | None = None
    # ... and when changing precision is acceptable too (the caller re-derives job ids).
    step_down_any_precision: str | None = None
    auto_rank: int | None = None  # `auto` tries these in rank order (bf16 only: it never changes pixels)
    auto_last_resort: bool = False  # what `auto` picks when none of the ranked ones fits
    # For a profile whose recipe a setting chooses (int8's kernel, fp8-attn's attention): the settings
    # variable (its default declared in settings.py), and each of its values -> the precision it renders.
    kernel_variable: str | None = None
    kernel_precisions: tuple[tuple[str, str], ...] = ()


# Memory model: Mochi 1 at bf16 compute with CFG (batch 2), fitted from the H100 runs in benchmarks/results/
# (see benchmarks/RESULTS.md), rounded up.
_DECLARED = (
    Profile("cpu", "fp32", "cpu", weights="fp32", summary="everything on the CPU in fp32", needs_cuda=False,
            allows_approximate=True),
    # 10.03B parameters in bf16, less the 2.70B AdaLN ones precomputed modulation keeps on the CPU, plus a
    # job's table of their outputs. offload is skipped on the way down: group-offload needs less and is faster.
    Profile("resident", "bf16", "gpu", summary="bf16 denoiser resident", precomputes_modulation=True,
            allows_approximate=True, denoiser_gib=13.9, step_down="group-offload",
            step_down_any_precision="group-offload", auto_rank=0),
    # Compiled blocks fuse bf16 arithmetic differently (~2e-2 relative): other pixels, another id. They
    # keep the AdaLN layers.
    Profile("fast", "bf16-compiled", "gpu", summary="bf16, blocks compiled", compiles=True, denoiser_gib=18.7,
            step_down_any_precision="group-offload"),
    # fp8 multiplies with per-token and per-channel scales (fp8_matmul.py), compiled like fast: 7.3B block
    # linears in fp8, the AdaLN layers and the rest in bf16. Its bf16 weights are gone once converted:
    # nothing to step down to in place.
    Profile("fp8-fast", "fp8-rowwise-compiled", "gpu", weights="fp8-matmul", summary="fp8 multiplies, compiled",
            needs_fp8_cores=True, compiles=True, storage="float8_e4m3fn (block linears, fp8 multiplies)",
            denoiser_gib=12.8),
    # fp8-fast with the attention core in fp8 too (fp8_attention.py: FA3, per-head scales, K and V
    # smoothed): attention is 71% of a 163-frame step's FLOP. A profile of its own rather than a change of
    # fp8-fast: it needs Hopper and the fa3-fwd wheel where fp8-fast runs on Ada too, it adds its own error,
    # and fp8-fast's recorded jobs keep their pixels. Measured in benchmarks/results/FP8_ATTENTION.md.
    # BATCHGEN_FP8_ATTN_RECIPE picks its attention (fp8_attention_recipes.py); v1 stays the default until the
    # others are measured to pay on the device, and each keeps a precision of its own.
    Profile("fp8-attn", "fp8attn-fa3-smoothkv+fp8-rowwise-compiled", "gpu", weights="fp8-matmul",
            summary="fp8 attention and multiplies, compiled", needs_fp8_cores=True, needs_fp8_attention=True,
            compiles=True, attention="fp8", storage="float8_e4m3fn (block linears, fp8 multiplies)",
            denoiser_gib=12.8, kernel_variable="BATCHGEN_FP8_ATTN_RECIPE",
            kernel_precisions=(("v1", "fp8attn-fa3-smoothkv+fp8-rowwise-compiled"),
                               ("v2", "fp8attn-fa3b-v2+fp8-rowwise-compiled"),
                               ("v2h", "fp8attn-fa3bh-v2+fp8-rowwise-compiled"))),
    # Measured on the H100: model CPU offload did not reproduce resident's frames byte for byte (the
    # denoising matches; the decode differs once the VAE has been to the CPU and back, which offload does
    # every video: benchmarks/offload_vs_resident.py), so it keeps ids of its own. group-offload matches.
    Profile("offload", "bf16-offload", "model-offload", summary="diffusers' model CPU offload", denoiser_gib=18.7,
            decodes_beside_denoiser=False, step_down_any_precision="group-offload"),
    # Resident blocks, embeddings, blocks in flight.
    Profile("group-offload", "bf16", "group-offload", summary="bf16 blocks streamed from the CPU",
            precomputes_modulation=True, streams_text_encoder=True, denoiser_gib=1.5, plus_resident_blocks=True,
            step_down_any_precision="nf4", auto_rank=1),
    # fp8 storage for what is left on the GPU, small modules in bf16.
    Profile("fp8", "fp8", "gpu", weights="fp8-storage", summary="fp8 storage, bf16 compute",
            precomputes_modulation=True, allows_approximate=True, storage="float8_e4m3fn", denoiser_gib=7.5,
            step_down_any_precision="nf4"),
    # 7.3B int8 block weights (the AdaLN layers are precomputed, in int8 on the CPU), one layer dequantized
    # at a time: 9.43 GiB denoising at 25 frames, 16.37 at 163 (run 12). int8 weights dequantized per layer,
    # bf16 multiplies (int8_linear.py); "int8" is bitsandbytes' LLM.int8 (BATCHGEN_INT8_KERNEL=llm-int8).
    Profile("int8", "int8-bf16", "gpu", weights="int8", summary="int8 weights, bf16 multiplies",
            needs_bitsandbytes=True, precomputes_modulation=True, allows_approximate=True,
            storage="int8 (bitsandbytes)", denoiser_gib=7.0, step_down_any_precision="nf4",
            kernel_variable="BATCHGEN_INT8_KERNEL", kernel_precisions=(("dequant", "int8-bf16"), ("llm-int8", "int8"))),
    Profile("nf4", "nf4", "gpu", weights="nf4", summary="bitsandbytes NF4", needs_bitsandbytes=True,
            streams_text_encoder=True, allows_approximate=True, storage="nf4 (bitsandbytes)", denoiser_gib=5.0,
            auto_last_resort=True),
)

REGISTRY: dict[str, Profile] = {p.name: p for p in _DECLARED}
AUTO = "auto"
# What a manifest or --profile may name: auto first, then the declared ones.
PROFILES: tuple[str, ...] = (AUTO, *REGISTRY)

_ACTIVATION_GIB_PER_KTOKEN = 0.22  # per 1000 latent tokens (CFG batch included); 163 frames = 44.5k tokens
_DECODE_GIB = 3.0  # VAE weights + one tiled, time-chunked decode chunk, whatever the frame count
_MARGIN_GIB = 1.5  # CUDA context, allocator fragmentation


class UnknownProfile(KeyError, ValueError):
    """A name that declares no concrete profile (auto included: it is resolved before anything renders).
    A KeyError for the lookups that always raised one, a ValueError for callers checking user input."""


def get(name: str) -> Profile:
    """The declaration of a concrete profile (not auto); UnknownProfile naming the choices otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownProfile(f"unknown profile {name!r}: choose one of {', '.join(REGISTRY)}") from None


def names(**wanted: object) -> tuple[str, ...]:
    """Declared profiles whose attributes have the given values, e.g. names(allows_approximate=True)."""
    return tuple(p.name for p in _DECLARED if all(getattr(p, k) == v for k, v in wanted.items()))


def auto_order() -> tuple[str, ...]:
    """The profiles `auto` walks, fastest first."""
    ranked = [p for p in _DECLARED if p.auto_rank is not None]
    return tuple(p.name for p in sorted(ranked, key=lambda p: p.auto_rank))


def auto_last_resort() -> str:
    return next(p.name for p in _DECLARED if p.auto_last_resort)


def latent_tokens(num_frames: int, height: int, width: int) -> int:
    """Tokens the transformer attends over for one video (Mochi: 6x temporal, 8x spatial VAE, 2x2 patches)."""
    latent_frames = (num_frames - 1) // 6 + 1
    return latent_frames * math.ceil(height / 16) * math.ceil(width / 16)


def denoiser_gib(profile: str) -> float:
    p = get(profile)
    return p.denoiser_gib + (settings.group_offload_resident_gib() if p.plus_resident_blocks else 0.0)


def estimate_peak_gib(profile: str, num_frames: int = 163, height: int = 480, width: int = 848,
                      memory: "Memory | None" = None, weights_gib: float | None = None) -> float:
    """Rough peak VRAM of rendering one video under `profile`; what `auto` compares with free memory.

    Without `memory` it is Mochi's model, fitted on the H100. With a family's Memory (and `weights_gib`, the
    bf16 denoiser's GiB, when the model's own size is known) it is that family's: the profile's share of
    the weights on the GPU, plus activations and the decode per thousand latent tokens."""
    if not get(profile).needs_cuda:
        raise KeyError(f"profile {profile!r} does not render on a GPU")
    if memory is not None:
        return _family_peak_gib(get(profile), memory, num_frames, height, width, weights_gib)
    weights = denoiser_gib(profile)
    denoise = weights + _ACTIVATION_GIB_PER_KTOKEN * latent_tokens(num_frames, height, width) / 1000
    decode = weights + _DECODE_GIB if get(profile).decodes_beside_denoiser else _DECODE_GIB
    return max(denoise, decode) + _MARGIN_GIB


# GPU bytes per bf16 byte of denoiser weights, by how a profile stores them (nf4: 4-bit linears plus their
# scales, the norms and embeddings left in bf16).
_WEIGHT_SHARE = {"bf16": 1.0, "fp8-storage": 0.5, "int8": 0.5, "nf4": 0.3}
_IN_FLIGHT_GIB = 1.0  # group offload: the embedders and the blocks being copied, beyond the resident ones
# A text encoder streamed block by block holds its token embedding (umT5's 256k-word one is 2 GiB) and a
# block or two in flight: a quarter of its weights is a rough upper figure for umT5 and T5 XXL.
_STREAMED_ENCODER_SHARE = 0.25


def _bf16_gib(params_b: float) -> float:
    return params_b * 1e9 * 2 / 2**30


def _family_peak_gib(p: Profile, memory: "Memory", frames: int, height: int, width: int,
                     weights_gib: float | None) -> float:
    full = weights_gib if weights_gib is not None else _bf16_gib(memory.denoiser_params_b)
    if p.placement == "group-offload":
        # Never more than the whole model: a small one simply keeps every block resident.
        on_gpu = min(full, settings.group_offload_resident_gib() + _IN_FLIGHT_GIB)
    else:
        on_gpu = full * _WEIGHT_SHARE.get(p.weights, 1.0)
    # Phase one holds the text encoder alone (the denoiser is placed after it is freed). Mochi's own model
    # leaves it out: T5's 8.9 GiB is below every Mochi denoise peak; a 1.3B Wan's is not.
    encoder = _bf16_gib(memory.text_encoder_params_b)
    encode = encoder * (_STREAMED_ENCODER_SHARE if p.streams_text_encoder else 1.0)
    ktokens = memory.latent_tokens(frames, height, width) / 1000
    vae = _bf16_gib(memory.vae_params_b)
    denoise = on_gpu + (memory.activation_gib_per_ktoken or _ACTIVATION_GIB_PER_KTOKEN) * ktokens
    decode_beside = on_gpu if p.decodes_beside_denoiser else 0.0
    decode = decode_beside + vae + (memory.decode_gib_per_ktoken or 0.0) * ktokens
    return max(encode, denoise, decode) + _MARGIN_GIB


def precision(profile: str, quality: bool = False, deterministic: bool = False, approximate: str | None = None) -> str:
    """The numeric recipe a profile renders with; part of every job id. Deterministic algorithms are part
    of it: on the H100 they gave other frames than the default kernels (benchmarks/results/gpu_repro_h100.log).
    So is an approximate accelerator (batchgen.engine.approximate), as "+fbc0.05" or "+pab"."""
    p = get(profile)
    base = dict(p.kernel_precisions)[kernel(profile)] if p.kernel_precisions else p.precision
    if quality:
        base += "+quality"
    if approximate:
        base += "+" + approximate
    return base + "+deterministic" if deterministic else base


def profile_for_precision(base: str) -> str | None:
    """The profile to render a recorded base precision (no "+..." parts) with when the records name none:
    auto where it would pick a profile of that precision (it only picks bf16 ones), else the first declared."""
    if base in {get(n).precision for n in auto_order()}:
        return AUTO
    for p in _DECLARED:
        if base == p.precision or base in dict(p.kernel_precisions).values():
            return p.name
    return None


def fallback(profile: str, *, same_precision: bool = True) -> str | None:
    """The next lower-memory profile after a CUDA out-of-memory error, or None at the bottom."""
    p = REGISTRY.get(profile)
    if p is None:
        return None
    return p.step_down if same_precision else p.step_down_any_precision


def kernel(profile: str) -> str | None:
    """The value of the setting that chooses `profile`'s recipe (its kernel_variable), None if none does."""
    p = get(profile)
    if p.kernel_variable is None:
        return None
    return settings.choice(p.kernel_variable, tuple(k for k, _ in p.kernel_precisions))


def _kernel_of_precision(precision: str) -> tuple[Profile, str, str] | None:
    """The profile whose setting renders `precision`, the setting's value that does, and what follows the
    base ("+quality", ...). Matched as a prefix: a base may hold "+" itself (fp8-attn's do)."""
    found = [(len(prec), p, value, precision[len(prec):]) for p in _DECLARED for value, prec in p.kernel_precisions
             if precision == prec or precision.startswith(prec + "+")]
    return max(found, key=lambda f: f[0])[1:] if found else None


def kernel_profile(precision: str) -> str | None:
    """The profile a setting's recipe renders `precision` with (int8, fp8-attn), None if none does."""
    found = _kernel_of_precision(precision)
    return found[0].name if found else None


def kernel_hint(precision: str) -> str:
    """What to add to a message about `precision` when a setting renders it that is not chosen now
    (BATCHGEN_INT8_KERNEL, BATCHGEN_FP8_ATTN_RECIPE); "" otherwise."""
    found = _kernel_of_precision(precision)
    if found is None or found[1] == kernel(found[0].name):
        return ""
    p, wanted, _ = found
    how = f"unset {p.kernel_variable}" if wanted == settings.default(p.kernel_variable) else f"set {p.kernel_variable}={wanted}"
    return f" (it was rendered with the {p.name} profile's {wanted} recipe: {how} to use it again)"


def kernel_switched(recorded: str, current: str) -> bool:
    """Whether two precisions are the same recipe but for the setting that chooses one profile's recipe."""
    r, c = _kernel_of_precision(recorded), _kernel_of_precision(current)
    return r is not None and c is not None and r[0] is c[0] and r[1] != c[1] and r[2] == c[2]
