"""Rendering: loading the pipeline, memory profiles, the accelerators, the renderer. Imports no other layer
but outputs (atomic files) and the core modules. This file imports nothing, so the declarative parts of the
engine stay importable without torch."""
