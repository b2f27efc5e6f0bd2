"""What one model family declares: everything about it that batchgen's batch machinery must not hard-code.

No torch here, not even inside a function (like profile_registry.py): manifest/ checks frame counts and
sizes through these declarations before anything is loaded, and the import-linter contract keeps torch out
of manifest/. The torch side of a family (building its tiny and published-size pipelines) lives in the
module `Family.module` names, imported only when a pipeline is built.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field

from batchgen.errors import BatchgenError


class FamilyRuleError(BatchgenError, ValueError):
    """A frame count or size the family's pipeline cannot render as asked. The message says what to use
    instead; a caller that knows the file and line (the manifest) prefixes them."""


@dataclass(frozen=True)
class Memory:
    """The memory model `auto` and doctor use for a family, per published size: the shapes that decide the
    latent token count, and the parameters (billions) each component holds. Activation GiB per thousand
    latent tokens is only known once measured on the device (None until then)."""

    temporal_compression: int
    spatial_compression: int  # VAE spatial factor times the transformer's patch size
    denoiser_params_b: float
    text_encoder_params_b: float
    vae_params_b: float
    activation_gib_per_ktoken: float | None = None
    # GiB the VAE decode takes per thousand latent tokens beside the weights (Mochi's time-chunked decode is
    # flat and is the registry's own figure: None).
    decode_gib_per_ktoken: float | None = None

    def latent_tokens(self, num_frames: int, height: int, width: int) -> int:
        """Tokens the transformer attends over for one video of this shape."""
        latent_frames = (num_frames - 1) // self.temporal_compression + 1
        side = self.spatial_compression
        return latent_frames * math.ceil(height / side) * math.ceil(width / side)

    def weights_gib(self, bytes_per_param: float = 2.0) -> float:
        """GiB of every component's weights at `bytes_per_param` (2: bf16)."""
        total = self.denoiser_params_b + self.text_encoder_params_b + self.vae_params_b
        return total * 1e9 * bytes_per_param / 2**30


@dataclass(frozen=True)
class Family:
    name: str  # "mochi", "wan", "ltx": what job ids and records carry
    title: str  # what messages call it ("Mochi", "Wan", "LTX-Video")
    # model_index.json's `_class_name` values that belong to this family.
    pipeline_classes: tuple[str, ...]
    # Frames are frame_step * k + 1 with k >= 1: the VAE's temporal compression. diffusers rounds any other
    # count down (or warns and rounds), so another count would silently give fewer frames than asked.
    frame_step: int
    # Height and width are multiples of this: VAE spatial compression times the patch size.
    size_multiple: int
    size_reason: str  # why, for the message
    # The family's own defaults, as its diffusers pipeline and model card give them.
    defaults: dict = field(default_factory=dict)
    text_encoder: str = ""
    max_tokens: int = 0  # the text encoder's max_sequence_length as the pipeline uses it
    # Memory profiles (profile_registry names) that apply; () for every declared one (Mochi, whose levers
    # they are).
    profiles: tuple[str, ...] = ()
    # The transformer's attribute holding its repeated blocks (the ones `_repeated_blocks` names): what
    # group offloading streams one at a time and `fast` compiles one graph for.
    blocks: str = "transformer_blocks"
    # batchgen's own levers, written for Mochi's modules: its attention processor (attention.py,
    # fp8_attention.py), precomputed AdaLN modulation (modulation.py), the chunked VAE decode
    # (mochi_decode.py). A family without them gets diffusers' generic ones only.
    own_levers: bool = False
    memory: dict[str, Memory] = field(default_factory=dict)  # by published-size config name
    tiny: str = ""  # the `model:` name of its tiny random-weight pipeline
    realsize: tuple[str, ...] = ()  # `model:` names of its published-size random configs (GPU benchmarks)
    module: str = ""  # the module that builds its pipelines (torch), imported on use
    # Installed packages that change what the pipeline does with a prompt's text (WanPipeline runs ftfy when
    # it is importable): their versions belong in the fingerprint and the text cache's key.
    prompt_packages: tuple[str, ...] = ()
    # The pipeline takes the video's frame rate as an input (LTX: it scales the rotary embedding), so fps
    # decides pixels rather than only the MP4's timing.
    fps_is_input: bool = False
    # The key of vae/config.json giving its spatial factor when models of the family differ in it (Wan 2.2
    # 5B's VAE is 16x where 2.1's is 8x): a saved model's own sizes are then multiples of that times its patch.
    vae_spatial_key: str = ""

    def allows_profile(self, profile: str) -> bool:
        return not self.profiles or profile in self.profiles

    def profile_problem(self, profile: str) -> str | None:
        """Why `profile` cannot render this family's models; None when it can."""
        if self.allows_profile(profile):
            return None
        return (f"profile '{profile}' does not apply to {self.title} models (its kernels replace Mochi's own "
                f"layers); use one of {', '.join(repr(p) for p in self.profiles)}")

    @property
    def min_frames(self) -> int:
        return self.frame_step + 1

    @property
    def tags_job_ids(self) -> bool:
        """Whether job ids carry the family: every family but Mochi, whose ids predate families."""
        return self.name != "mochi"

    # -- rules (torch-free hooks for manifest/) ----------------------------------------------------------
    def frames_problem(self, n: int) -> str | None:
        """Why `n` frames cannot be rendered as asked, with what to use; None when it can."""
        step, low = self.frame_step, self.min_frames
        if n < low:
            examples = ", ".join(str(low + i * step) for i in range(4))
            return (
                f"num_frames {n} is too small: {self.title} needs {step}k+1 frames with k >= 1; use {low} "
                f"or more ({examples}, ...)"
            )
        if (n - 1) % step:
            below = ((n - 1) // step) * step + 1
            below = below if below >= low else None
            above = ((n - 1) // step + 1) * step + 1
            use = f"{below} or {above}" if below else f"{above}"
            return f"num_frames {n} is not {step}k+1 (diffusers would silently drop frames); use {use}"
        return None

    def size_problem(self, name: str, n: int) -> str | None:
        """Why `n` cannot be the video's `name` ("height" or "width"); None when it can."""
        m = self.size_multiple
        if n <= 0:
            return f"{name} {n} must be a positive multiple of {m}; use e.g. {self.defaults.get(name, m)}"
        if n % m:
            below = (n // m) * m
            use = f"{below} or {below + m}" if below else f"{below + m}"
            return f"{name} {n} is not a multiple of {m} ({self.size_reason}); use {use}"
        return None

    def check_frames(self, n: int) -> None:
        """FamilyRuleError when `n` frames cannot be rendered as asked."""
        problem = self.frames_problem(n)
        if problem:
            raise FamilyRuleError(problem)

    def check_size(self, height: int, width: int) -> None:
        """FamilyRuleError naming the first of height, width the family cannot render."""
        for name, n in (("height", height), ("width", width)):
            problem = self.size_problem(name, n)
            if problem:
                raise FamilyRuleError(problem)

    # -- the torch side ------------------------------------------------------------------------------
    def builders(self):
        """The family's pipeline-building module (imports torch and diffusers)."""
        # By name, at call time: a static import would put torch in the import graph of manifest/.
        return importlib.import_module(self.module)

    def names(self) -> tuple[str, ...]:
        """The built-in `model:` names this family answers to (tiny and published-size configs)."""
        return (self.tiny, *self.realsize)
