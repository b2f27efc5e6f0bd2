"""Mochi 1's pipelines, behind its family declaration (registry.MOCHI): exactly what batchgen has always
built, from the same functions, so every tiny hash and every job id stays what it was."""

from __future__ import annotations

PIPELINE_CLASS = "MochiPipeline"


def pipeline_class():
    from diffusers import MochiPipeline

    return MochiPipeline


def build_tiny():
    """The embedded random-weight MochiPipeline of `model: tiny` (engine/loading.py builds it)."""
    from batchgen.engine.loading import build_tiny_pipeline

    return build_tiny_pipeline()


def build_realsize(name: str = "realsize", device: str = "cuda", **options):
    """Published-size Mochi 1 with random weights on `device` (engine/realsize.py builds it)."""
    from batchgen.engine.realsize import build_realsize_pipeline

    if name != "realsize":
        raise KeyError(f"Mochi has one published-size config, 'realsize', not {name!r}")
    return build_realsize_pipeline(device, **options)
