"""batchgen: render batches of text-to-video jobs with Mochi 1 through diffusers, resumably.

The library's public face: `load_manifest`, `render_manifest`, `Renderer`, `Job` and the errors. The
heavy ones are imported on first use, so `import batchgen` stays cheap and needs no torch.
"""

from batchgen.errors import BatchgenError, ManifestError, ModelLoadError, StoreError
from batchgen.job import Job

__version__ = "0.1.0"

_LAZY = {
    "load_manifest": "batchgen.manifest",
    "render_manifest": "batchgen.run.supervisor",
    "RunSummary": "batchgen.run.supervisor",
    "Renderer": "batchgen.engine.renderer",
}

__all__ = ["BatchgenError", "Job", "ManifestError", "ModelLoadError", "StoreError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'batchgen' has no attribute {name!r}")
