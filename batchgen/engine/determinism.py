"""`--deterministic`: torch's deterministic algorithms and the settings CUDA needs for them.

Without it a job already renders the same frames run after run on one machine in practice (a CPU
generator per job, no autotuning in the pipeline), but nothing forbids a CUDA kernel with atomics from
reordering a sum. With it, torch refuses such kernels: an operation without a deterministic
implementation raises instead of varying, and cuBLAS uses a fixed workspace split.
"""

from __future__ import annotations

import contextlib
import os

from batchgen import settings as batchgen_settings
from collections.abc import Iterator

CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"
# The two values cuBLAS documents as deterministic; :4096:8 is the faster one (more workspace).
CUBLAS_VALUE = ":4096:8"
_CUBLAS_DETERMINISTIC = (":4096:8", ":16:8")
# Set while a run is in deterministic mode, so that the worker processes it starts follow suit.
REQUEST_ENV = "BATCHGEN_DETERMINISTIC"

COST_NOTE = (
    "batchgen: --deterministic: torch deterministic algorithms on, cuDNN deterministic with autotuning off, "
    f"{CUBLAS_ENV}={CUBLAS_VALUE}; it costs GPU speed (measure it with `python benchmarks/gpu_repro.py "
    "--deterministic-cost`), and an operation with no deterministic kernel makes "
    "its job fail instead of vary"
)


def prepare_env() -> None:
    """Set CUBLAS_WORKSPACE_CONFIG in this process's environment (inherited by worker processes).

    torch sizes its cuBLAS workspaces from it once, at the first CUDA matmul, so call this before torch
    touches CUDA (the CLI does it as soon as it parses the flag). A deterministic value the user chose is kept.
    """
    if os.environ.get(CUBLAS_ENV) not in _CUBLAS_DETERMINISTIC:
        os.environ[CUBLAS_ENV] = CUBLAS_VALUE


def state() -> dict:
    """The settings in force that decide whether (and which) kernels vary: recorded in the fingerprint."""
    import torch

    return {
        "deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled()),
        "deterministic_warn_only": bool(torch.is_deterministic_algorithms_warn_only_enabled()),
        "cublas_workspace_config": os.environ.get(CUBLAS_ENV),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        # TF32 changes the result of every fp32 matmul/convolution on Ampere and later.
        "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


@contextlib.contextmanager
def settings(enabled: bool = True) -> Iterator[None]:
    """Deterministic mode for the duration of a run (a no-op when not `enabled`); the previous torch
    settings come back afterwards, so a library caller's process is left as it was."""
    if not enabled:
        yield
        return
    import torch

    prepare_env()
    marker = os.environ.get(REQUEST_ENV)
    os.environ[REQUEST_ENV] = "1"
    old = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old[0], warn_only=old[1])
        torch.backends.cudnn.deterministic = old[2]
        torch.backends.cudnn.benchmark = old[3]
        if marker is None:
            os.environ.pop(REQUEST_ENV, None)
        else:
            os.environ[REQUEST_ENV] = marker


def requested() -> bool:
    """Whether a parent process runs in deterministic mode: worker processes inherit the environment, not
    torch's settings, so a worker wraps its loop in `settings(requested())`."""
    return batchgen_settings.deterministic_requested()
