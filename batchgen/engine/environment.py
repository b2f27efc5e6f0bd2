"""Facts about the software and hardware a video was rendered with."""

from __future__ import annotations

import functools
import logging
from importlib import metadata


def quiet_library_logs() -> None:
    """bitsandbytes, imported by diffusers whenever installed, warns on CPUs with AVX512-BF16 that an
    optional CPU 4-bit kernel is missing; batchgen runs nf4 on CUDA only, so it is noise in every process."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


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
