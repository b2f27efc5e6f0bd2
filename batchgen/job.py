"""A Job is a plain value: everything that decides one video, plus where it came from."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace

# The fields a manifest entry may set, named as MochiPipeline's own keyword arguments.
# Defaults follow diffusers' MochiPipeline, except fps (batchgen writes 30 fps MP4s).
JOB_DEFAULTS: dict[str, object] = {
    "prompt": None,
    "negative_prompt": "",
    "seed": 0,
    "num_frames": 19,
    "height": 480,
    "width": 848,
    "num_inference_steps": 64,
    "guidance_scale": 4.5,
    "fps": 30,
}
JOB_FIELDS = tuple(JOB_DEFAULTS)

# Jobs of this family leave the family out of their ids (and settings), as every job did before families.
MOCHI_FAMILY = "mochi"
# Fields that decide the pixels (and the file): they make up the job id, with the family of non-Mochi jobs.
_ID_FIELDS = (
    "model",
    "revision",
    "precision",
    "prompt",
    "negative_prompt",
    "seed",
    "num_frames",
    "height",
    "width",
    "num_inference_steps",
    "guidance_scale",
    "fps",
)


@dataclass(frozen=True)
class Lora:
    """One LoRA a job renders with: where it comes from, at what scale, and the content hash that makes it
    part of the job id (the file's own bytes: moving or renaming it keeps the ids)."""

    source: str  # a local .safetensors file or folder, or a hub id
    scale: float = 1.0
    weight_name: str | None = None  # the file inside a folder or hub repo
    adapter_name: str = ""  # diffusers' adapter name; default "lora_<sha256[:8]>"
    sha256: str = ""  # of the weights file, 16 hex digits

    @property
    def name(self) -> str:
        return self.adapter_name or f"lora_{self.sha256[:8]}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Lora":
        return cls(**{k: data[k] for k in ("source", "scale", "weight_name", "adapter_name", "sha256") if k in data})


def lora_set_key(loras: tuple[Lora, ...]) -> str:
    """What jobs with the same LoRAs at the same scales share: the claim order groups them (one load a group)."""
    return ",".join(f"{lo.sha256}@{float(lo.scale)!r}" for lo in loras)


CHECKPOINT_FIELDS = ("variant", "transformer", "transformer_revision")


def checkpoint_key(source) -> str | None:
    """Canonical JSON of what a job (or a manifest) loads beside its model, None for the model's own files:
    the store's `checkpoint` column, by which one loaded pipeline claims only its own jobs."""
    values = {k: getattr(source, k) for k in CHECKPOINT_FIELDS if getattr(source, k, None)}
    return json.dumps(values, sort_keys=True) if values else None


@dataclass(frozen=True)
class Job:
    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    num_frames: int = 19
    height: int = 480
    width: int = 848
    num_inference_steps: int = 64
    guidance_scale: float = 4.5
    fps: int = 30
    model: str = "tiny"
    revision: str | None = None
    # The numeric recipe the job renders with ("fp32", "bf16", "fp8", "int8", "nf4", "+quality"...):
    # profiles that give the same pixels share it, so moving a batch between them re-renders nothing.
    precision: str = "fp32"
    # The model family (batchgen.engine.families: "mochi", "wan", "ltx"). Part of the id for every family but
    # Mochi, whose ids predate families and stay what they were.
    family: str = "mochi"
    # The checkpoint beside `model` (engine/checkpoints.py): the weights variant asked for (None: the rule
    # picks, which never changes pixels), a transformer swapped into the pipeline and its revision; and the
    # job's LoRAs. Each is part of the id only when set, so jobs without them keep the ids they always had.
    variant: str | None = None
    transformer: str | None = None
    transformer_revision: str | None = None
    loras: tuple[Lora, ...] = ()
    # Where the entry came from ("jobs.yaml:12"), for messages; not part of the id.
    source: str = field(default="", compare=False)
    # Position in the manifest's `seeds:` list ({index} in output_name); not part of the id.
    index: int = field(default=0, compare=False)
    # The file stem under OUT, resolved from output_name; filled in by the manifest.
    output_name: str = field(default="", compare=False)

    @property
    def job_id(self) -> str:
        return job_id(self)

    def settings(self) -> dict:
        """The pixel-deciding settings, as stored in the database and metadata."""
        return _id_payload(self)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Job":
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        if values.get("loras"):
            values["loras"] = tuple(lo if isinstance(lo, Lora) else Lora.from_dict(lo) for lo in values["loras"])
        return cls(**values)

    def with_(self, **changes) -> "Job":
        return replace(self, **changes)


def _id_payload(job: Job) -> dict:
    payload = {k: getattr(job, k) for k in _ID_FIELDS}
    if job.family != MOCHI_FAMILY:
        payload["family"] = job.family
    for name in CHECKPOINT_FIELDS:
        if getattr(job, name) is not None:
            payload[name] = getattr(job, name)
    if job.loras:
        # The content and the scale decide the pixels; the path and the adapter's name do not.
        payload["loras"] = [[lo.sha256, float(lo.scale)] for lo in job.loras]
    return payload


def job_id(job: Job) -> str:
    """16 hex digits of sha256 over the canonical JSON of the pixel-deciding settings."""
    payload = _id_payload(job)
    payload["guidance_scale"] = float(payload["guidance_scale"])
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
