"""Facts about the software and hardware a video was rendered with."""

from __future__ import annotations

import functools
from importlib import metadata


@functools.lru_cache(maxsize=1)
def library_versions() -> dict:
    versions = {}
    for name in ("torch", "diffusers", "transformers", "accelerate", "bitsandbytes"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    import platform

    return f"cpu ({platform.processor() or platform.machine()})"
