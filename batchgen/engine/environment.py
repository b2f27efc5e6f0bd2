"""Facts about the software and hardware a video was rendered with."""

from __future__ import annotations

import functools
import logging
from importlib import metadata

from batchgen.errors import BatchgenError


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


def check_device(device: str | None) -> None:
    """Refuse (exit 2, naming --device) a device this torch cannot use, before anything is written."""
    if device is None or device == "cpu":
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise BatchgenError(f"--device {device}: not a torch device. Use cpu, cuda or cuda:N.") from None
    if parsed.type == "cpu":
        return
    if parsed.type != "cuda":
        backend = getattr(torch, parsed.type, None)
        if backend is None or not getattr(backend, "is_available", lambda: False)():
            raise BatchgenError(f"--device {device}: this machine's torch cannot use '{parsed.type}'. "
                                "Use cpu, cuda or cuda:N.")
        return
    if not torch.cuda.is_available():
        why = ("this torch is a CPU-only build" if torch.version.cuda is None
               else "no CUDA device is visible (check the driver and CUDA_VISIBLE_DEVICES)")
        raise BatchgenError(f"--device {device}: {why} (torch {torch.__version__}). Drop --device to render on "
                            "the CPU, or install a CUDA build of torch.")
    count = torch.cuda.device_count()
    if parsed.index is not None and parsed.index >= count:
        raise BatchgenError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to "
                            f"cuda:{count - 1}.")
