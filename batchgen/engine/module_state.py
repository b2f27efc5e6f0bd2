"""What batchgen has done to a diffusers model, kept beside it rather than as attributes on it.

One typed record per transformer, in a WeakKeyDictionary: it goes away with the model, nothing is written
into diffusers' objects, and every reader names a field that exists (no getattr with a default).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModuleState:
    attention: str | None = None  # batchgen attention backend installed (attention.py), None: diffusers'
    compiled: bool = False  # blocks compiled (compile.py)
    fp8_storage: bool = False  # layerwise fp8 casting enabled (the fp8 profile)
    fp8_linears: int = 0  # block linears swapped for Fp8Linear (fp8_matmul.py)
    fp8_originals: list | None = field(default=None, repr=False)  # the swapped-out layers, when kept
    int8_linears: int = 0  # bitsandbytes 8-bit layers converted to Int8Linear (int8_linear.py)
    resident_blocks: int | None = None  # group-offload: blocks kept on the GPU
    modulation: Any = field(default=None, repr=False)  # modulation.ModulationTable, when precomputing
    modulation_hook: Any = field(default=None, repr=False)  # its forward pre-hook handle
    qk_halved: bool = False  # query/key channels permuted into half-split order (qk_halves.py)
    approximate: str | None = None  # approximate accelerator's spec enabled (approximate_hooks.py)


_STATES: "weakref.WeakKeyDictionary[object, ModuleState]" = weakref.WeakKeyDictionary()


def state(module: object) -> ModuleState:
    """The record of `module`, created empty on first use."""
    found = _STATES.get(module)
    if found is None:
        found = _STATES[module] = ModuleState()
    return found


def peek(module: object) -> ModuleState:
    """The record of `module` without creating one (an empty record when there is none)."""
    return _STATES.get(module) or ModuleState()
