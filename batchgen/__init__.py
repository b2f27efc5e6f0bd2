"""batchgen: render batches of text-to-video jobs with Mochi 1 through diffusers, resumably."""

from .errors import BatchgenError, ManifestError, ModelLoadError, StoreError
from .job import Job

__version__ = "0.1.0"

__all__ = ["BatchgenError", "Job", "ManifestError", "ModelLoadError", "StoreError", "__version__"]
