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
        return cls(**{k: v for k, v in data.items() if k in names})

    def with_(self, **changes) -> "Job":
        return replace(self, **changes)


def _id_payload(job: Job) -> dict:
    payload = {k: getattr(job, k) for k in _ID_FIELDS}
    if job.family != MOCHI_FAMILY:
        payload["family"] = job.family
    return payload


def job_id(job: Job) -> str:
    """16 hex digits of sha256 over the canonical JSON of the pixel-deciding settings."""
    payload = _id_payload(job)
    payload["guidance_scale"] = float(payload["guidance_scale"])
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
