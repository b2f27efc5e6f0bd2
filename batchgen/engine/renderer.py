"""Rendering jobs with one loaded pipeline: encode every text once, then denoise job after job."""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from batchgen import settings
from batchgen.engine import approximate, approximate_hooks, families, lora, modulation, placement, profiles, progress_mode
from batchgen.engine.families import MOCHI, family_for_class
from batchgen.engine.loading import LoadedPipeline, load_pipeline
from batchgen.engine.mochi_decode import decode_latents
from batchgen.engine.module_state import peek
from batchgen.engine.profile_registry import get as declared
from batchgen.errors import BatchgenError
from batchgen.job import Job
from batchgen.outputs import atomic as files


@dataclass
class Rendered:
    frames: np.ndarray  # uint8, (frames, height, width, 3)
    seconds: float
    seconds_per_step: float
    peak_vram_allocated: int | None
    peak_vram_reserved: int | None
    # Split of `seconds`: the denoising loop (what seconds_per_step divides) and the VAE decode.
    denoise_seconds: float | None = None
    decode_seconds: float | None = None
    # Peak allocated during the decode alone, to tell a decode-bound peak from a denoise-bound one.
    decode_peak_vram_allocated: int | None = None
    # Seconds spent making the job's LoRAs the active set (engine/lora.py); None when nothing changed.
    lora_switch_seconds: float | None = None

    @property
    def frames_sha256(self) -> str:
        return frames_sha256(self.frames)


def frames_sha256(frames: np.ndarray) -> str:
    """Hash of the decoded uint8 frames, shape included: what reproducibility is judged by."""
    digest = hashlib.sha256(f"{frames.dtype}:{frames.shape}".encode())
    digest.update(np.ascontiguousarray(frames).tobytes())
    return digest.hexdigest()


def to_uint8(video: np.ndarray) -> np.ndarray:
    """diffusers' floats in [0, 1] to uint8 frames, rounded the same way on every machine."""
    return (np.clip(video, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def _quiet_diffusers() -> None:
    """batchgen reports truncation itself, naming the job; diffusers' own notices would repeat it per call."""
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    # Mochi's RoPE asks for fp32 autocast, which CPU autocast does not support; harmless, and said per step.
    warnings.filterwarnings("ignore", message="In CPU autocast, but the target dtype is not supported")


def _family_of(model: str, pipeline) -> families.Family | None:
    """The family a renderer's model belongs to before it is loaded (None when it cannot be told)."""
    if pipeline is not None:
        return family_for_class(type(pipeline).__name__) or MOCHI
    try:
        return families.family_for_model(model)
    except families.UnknownFamily:
        return None  # loading names the class it cannot render


def cpu_threads() -> int:
    """Threads for the cpu profile: BATCHGEN_CPU_THREADS, default 1 (the tiny model gains little from more)."""
    return settings.cpu_threads()


class Renderer:
    """Holds the one pipeline of a run and the batch's text embeddings."""

    def __init__(
        self,
        model: str,
        *,
        revision: str | None = None,
        profile: str = "auto",
        quality: bool = False,
        device: str | None = None,
        cache_dir: Path | None = None,
        vae_tiling: bool = True,
        progress: bool | str = True,
        largest: tuple[int, int, int] | None = None,
        pipeline=None,
        approximate: str | None = None,
        checkpoint: dict | None = None,
    ):
        """`largest` is (num_frames, height, width) of the batch's biggest job, for `auto`.
        `pipeline` is an already built pipeline of any family (benchmarks' published-size random models) used
        instead of loading `model`; its class gives the family, whose profiles are checked like a loaded one's."""
        self.model = model
        self.revision = revision
        self.quality = quality
        # An opt-in approximate accelerator's spec (batchgen.engine.approximate), None for exact renders.
        self.approximate = approximate
        # What is loaded beside the model (engine/checkpoints.py): variant, transformer, its revision.
        self.checkpoint = dict(checkpoint or {})
        self.choice = profiles.resolve(profile, device, largest=largest, family=_family_of(model, pipeline),
                                       model=model)
        self.profile = self.choice.name
        self.device = self.choice.device
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.vae_tiling = vae_tiling
        # The per-job steps bar is a bar or nothing: in a log (lines mode) it would be carriage returns.
        self.progress = progress_mode.resolve(progress) == "bars"
        if self.device == "cpu":
            # CPU kernels split reductions by thread count, so the count decides the last bits of every
            # frame: fix it, so one seed gives one video alone, in --workers processes or on Ray actors.
            import torch

            torch.set_num_threads(cpu_threads())
        self.loaded: LoadedPipeline | None = None
        # Told when a phase of the run starts (loading, encoding, placing/compiling): the batch's progress.
        self.on_phase: Callable[[str], None] = lambda text: None
        self._embeds: dict[str, tuple] = {}
        self._loras = lora.LoraState()
        self._denoiser_ready = False
        if pipeline is not None:
            from batchgen.engine.loading import MAX_SEQUENCE_LENGTH

            family = family_for_class(type(pipeline).__name__) or MOCHI
            max_len = MAX_SEQUENCE_LENGTH if family is MOCHI else family.max_tokens
            self.loaded = LoadedPipeline(pipeline, model, revision or "prebuilt", max_len, family=family.name)
            pipeline.set_progress_bar_config(**self._steps_bar())

    @classmethod
    def from_config(cls, config: dict, *, cache_dir: Path | None) -> "Renderer":
        """The renderer a worker process or Ray actor builds from its parent's run settings (a JSON dict)."""
        return cls(
            config["model"],
            revision=config["revision"],
            profile=config["profile"],
            quality=config["quality"],
            approximate=config.get("approximate"),
            device=config["device"],
            cache_dir=cache_dir,
            progress=False,
            checkpoint=config.get("checkpoint_fields"),
        )

    @property
    def precision(self) -> str:
        return profiles.precision(self.profile, self.quality, approximate=self.approximate)

    # -- loading -----------------------------------------------------------------------------------
    def load(self) -> LoadedPipeline:
        if self.loaded is None:
            # Before loading: casting the tiny model's modules to bf16 is one of the notices it silences.
            _quiet_diffusers()
            self.on_phase(f"loading the pipeline ({self.model})")
            loaded = load_pipeline(
                self.model, revision=self.revision, load_kwargs=placement.load_kwargs(self.profile, self.device),
                checkpoint=self.checkpoint,
            )
            if loaded.variant:
                self.on_phase(f"weights variant '{loaded.variant}' ({loaded.variant_reason})")
            refused = families.get(loaded.family).profile_problem(self.profile)
            if refused:
                raise BatchgenError(f"model {self.model!r}: {refused}")
            self.loaded = loaded
            self.loaded.pipe.set_progress_bar_config(**self._steps_bar())
        return self.loaded

    def _steps_bar(self) -> dict:
        """diffusers' per-job bar: redrawn every step (tqdm's default 0.1 s interval left it at 0/N when
        steps are short), under the batch's videos bar."""
        return dict(disable=not self.progress, leave=False, position=1, desc="steps", dynamic_ncols=True,
                    mininterval=0)

    @property
    def pipe(self):
        return self.load().pipe

    @property
    def family(self) -> families.Family:
        return families.get(self.load().family)

    # -- phase one: text ---------------------------------------------------------------------------
    def _cache_path(self, text: str) -> Path | None:
        if self.cache_dir is None:
            return None
        loaded = self.load()
        te_dtype = str(placement.text_encoder_dtype(self.profile, self.quality)).replace("torch.", "")
        key = f"{loaded.model}\n{loaded.revision}\n{te_dtype}\n{loaded.max_sequence_length}\n{text}"
        if self.family.prompt_packages:
            # What the pipeline does to the text first (WanPipeline: ftfy when installed) decides the embedding.
            key = f"{self.family.builders().prompt_cleaning()}\n{key}"
        return self.cache_dir / (hashlib.sha256(key.encode("utf-8")).hexdigest() + ".pt")

    def encode(self, texts: Iterable[str]) -> None:
        """Encode every distinct text once, one at a time, so a job's embedding never depends on its neighbours."""
        import torch

        todo = [t for t in dict.fromkeys(texts) if t not in self._embeds]
        missing = []
        for text in todo:
            path = self._cache_path(text)
            if path is not None and path.exists():
                try:
                    data = torch.load(path, map_location="cpu", weights_only=True)
                    self._embeds[text] = (data["embeds"], data["mask"])
                    continue
                except Exception:
                    pass  # a damaged cache entry is simply recomputed
            missing.append(text)
        if not missing:
            return
        if self._denoiser_ready and declared(self.profile).needs_cuda:
            # On a GPU profile the text encoder has been freed for the denoiser's sake.
            raise RuntimeError("all texts must be encoded before the first render on a GPU profile: call encode() first")
        pipe = self.pipe
        self.on_phase(f"encoding {len(missing)} text(s)")
        if not self._denoiser_ready:
            placement.prepare_text_encoder(pipe, self.profile, self.device, self.quality)
        with torch.inference_mode():
            for text in missing:
                encoded = pipe.encode_prompt(
                    prompt=text,
                    do_classifier_free_guidance=False,
                    max_sequence_length=self.load().max_sequence_length,
                    device=torch.device(self.device),
                )
                # Mochi and LTX give (embeds, mask, negative, negative mask); Wan (embeds, negative), no mask.
                embeds, mask = encoded[0], (encoded[1] if len(encoded) == 4 else None)
                embeds, mask = embeds.to("cpu"), (mask.to("cpu") if mask is not None else None)
                self._embeds[text] = (embeds, mask)
                path = self._cache_path(text)
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    # A temporary name of this process's own: worker processes sharing OUT cache the same
                    # texts, and one's rename must not take away the file another is about to rename.
                    # (Not files.publish: its fault point counts video publications for the crash tests.)
                    tmp = files.temp_path(path)
                    torch.save({"embeds": embeds, "mask": mask}, tmp)
                    tmp.replace(path)

    def count_tokens(self, text: str) -> int:
        return len(self.pipe.tokenizer(text, add_special_tokens=True).input_ids)

    # -- phase two: video --------------------------------------------------------------------------
    def _ensure_denoiser(self) -> None:
        if self._denoiser_ready:
            return
        refused = approximate.check_profile(self.approximate, self.profile)
        if refused:
            raise ValueError(refused)  # before freeing T5 and placing the denoiser for nothing
        pipe = self.pipe
        compiles = " (the first job of each shape also compiles)" if declared(self.profile).compiles else ""
        self.on_phase(f"placing the denoiser for profile '{self.profile}'{compiles}")
        placement.release_text_encoder(pipe)
        placement.prepare_denoiser(pipe, self.profile, self.device, self.quality, self.vae_tiling, self.family)
        approximate_hooks.apply(pipe, self.approximate)
        self._denoiser_ready = True
        if self.device.startswith("cuda"):
            import torch

            # Moving weights leaves freed blocks cached: hand them back so the batch starts from its real footprint.
            torch.cuda.empty_cache()

    def step_down(self) -> str | None:
        """After a CUDA out-of-memory error: free what the current profile holds and switch to the next
        lower-memory profile of the same precision (so job ids do not change). Returns its name, or None
        when there is nothing lower; the caller retries the job once."""
        import gc

        import torch

        new = profiles.fallback(self.profile)
        if new is None or approximate.check_profile(self.approximate, new):
            return None
        old = self.profile
        if self.loaded is not None:
            if self._denoiser_ready:
                placement.teardown_denoiser(self.pipe, old, self.family)
            else:
                placement.release_text_encoder(self.pipe)
        self._denoiser_ready = False
        self.profile = new
        self.choice = profiles.ProfileChoice(new, self.device, f"stepped down from {old} after running out of GPU memory")
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return new

    def _call(self, job: Job, device) -> dict:
        """The pipeline call for `job`: its shape and steps, and its texts' embeddings from phase one."""
        import torch

        pipe = self.pipe
        dtype = pipe.transformer.dtype if declared(self.profile).placement == "cpu" else torch.bfloat16
        embeds, mask = self._embeds[job.prompt]
        kwargs = {"prompt_embeds": embeds.to(device, dtype)}
        if mask is not None:
            kwargs["prompt_attention_mask"] = mask.to(device)
        if job.guidance_scale > 1:
            neg, neg_mask = self._embeds[job.negative_prompt]
            kwargs["negative_prompt_embeds"] = neg.to(device, dtype)
            if neg_mask is not None:
                kwargs["negative_prompt_attention_mask"] = neg_mask.to(device)
        if self.family.fps_is_input:
            kwargs["frame_rate"] = job.fps
        return dict(num_frames=job.num_frames, height=job.height, width=job.width,
                    num_inference_steps=job.num_inference_steps, guidance_scale=job.guidance_scale,
                    output_type="latent", max_sequence_length=self.load().max_sequence_length, **kwargs)

    def _before_call(self, job: Job, call: dict, table) -> None:
        """Per-job state the pipeline call relies on: Mochi's modulation table, the cache hooks reset."""
        if table is not None:
            # Everything that shapes the transformer's inputs except the seed: same-prompt jobs share it.
            key = (job.prompt, job.negative_prompt, job.guidance_scale, job.num_inference_steps,
                   job.num_frames, job.height, job.width)
            modulation.prepare(self.pipe, call, key)
        if self.approximate:
            # A job that failed mid-denoise leaves the cache hooks' step state behind; diffusers only
            # resets it at the end of a call that finished. Every job starts clean.
            self.pipe.transformer._reset_stateful_cache()

    def _decode(self, latents, job: Job, generator) -> np.ndarray:
        """The denoised latents to uint8 frames: Mochi's exact chunked decode, or the family's own."""
        pipe = self.pipe
        if self.family.own_levers:
            video = decode_latents(pipe, latents, self.profile, self.device, self.quality)
        else:
            video = self.family.builders().decode(pipe, latents, job, generator)
        return to_uint8(np.asarray(pipe.video_processor.postprocess_video(video, output_type="np")[0]))

    def render(self, job: Job, on_step: Callable[[int, int], None] | None = None) -> Rendered:
        import torch

        if job.family != self.load().family:
            # The manifest checked the job by its family's rules (`family:` for a hub id not yet in the cache);
            # the pipeline that came is another family's: its frames would not be the job's.
            raise BatchgenError(
                f"model {self.model!r} is a {self.family.title} pipeline, but the job was made for the "
                f"{families.get(job.family).title} family; fix `family:` in the manifest (or remove it)"
            )
        texts = [job.prompt] + ([job.negative_prompt] if job.guidance_scale > 1 else [])
        self.encode(texts)
        self._ensure_denoiser()
        pipe = self.pipe
        device = torch.device(self.device)
        call = self._call(job, device)

        def callback(pipeline, step, timestep, callback_kwargs):
            if on_step is not None:
                on_step(step + 1, job.num_inference_steps)
            return callback_kwargs

        cuda = self.device.startswith("cuda")
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        table = peek(pipe.transformer).modulation
        switch = lora.apply(pipe, job.loras, self._loras, modulation_detached=table is not None)
        start = time.perf_counter()
        with torch.inference_mode():
            self._before_call(job, call, table)
            # A CPU generator per job: the same noise on any machine, whatever ran before it.
            generator = torch.Generator("cpu").manual_seed(job.seed)
            denoise_start = time.perf_counter()
            output = pipe(generator=generator, callback_on_step_end=callback, **call)
            if table is not None:
                table.check_used()
            if cuda:
                torch.cuda.synchronize(device)
            denoised = time.perf_counter()
            peak_alloc = torch.cuda.max_memory_allocated(device) if cuda else None
            peak_res = torch.cuda.max_memory_reserved(device) if cuda else None
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            frames = self._decode(output.frames, job, generator)
        end = time.perf_counter()
        decode_peak = None
        if cuda:
            decode_peak = torch.cuda.max_memory_allocated(device)
            peak_alloc = max(peak_alloc, decode_peak)
            peak_res = max(peak_res, torch.cuda.max_memory_reserved(device))
        return Rendered(
            frames,
            end - start,
            (denoised - denoise_start) / job.num_inference_steps,
            peak_alloc,
            peak_res,
            denoise_seconds=denoised - denoise_start,
            decode_seconds=end - denoised,
            decode_peak_vram_allocated=decode_peak,
            lora_switch_seconds=switch,
        )
