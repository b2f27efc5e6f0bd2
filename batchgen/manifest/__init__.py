"""Manifests: YAML, CSV and TXT job lists and previous runs' records, validated into Jobs. No torch, no click."""

from batchgen.manifest.parse import Entry, Manifest, load_manifest

__all__ = ["Entry", "Manifest", "load_manifest"]
