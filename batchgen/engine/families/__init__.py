"""Model families: what differs between Mochi, Wan and LTX-Video, declared once per family.

The declarations and the lookups (family.py, registry.py) are torch-free, for manifest/; each family's
pipeline builders (mochi.py, wan.py, ltx.py) import torch and diffusers, and are reached through
`Family.builders()` only when a pipeline is built.
"""

from batchgen.engine.families.family import Family, FamilyRuleError, Memory
from batchgen.engine.families.registry import (
    FAMILIES,
    LTX,
    MOCHI,
    WAN,
    UnknownFamily,
    builtin,
    family_for_class,
    family_for_model,
    get,
    is_tiny,
    rules_for_model,
)

__all__ = [
    "FAMILIES", "LTX", "MOCHI", "WAN", "Family", "FamilyRuleError", "Memory", "UnknownFamily", "builtin",
    "family_for_class", "family_for_model", "get", "is_tiny", "rules_for_model",
]
