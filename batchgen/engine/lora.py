"""LoRAs per job on the one loaded pipeline, through diffusers' own `load_lora_weights` / `set_adapters`.

Each distinct LoRA file is loaded once, as an adapter named after it, the first time a job needs it; a
job then activates exactly its own set at its own scales (`set_adapters`), and a job without LoRAs runs
with every adapter disabled, which gives the model's own frames (a test checks it against a pipeline that
never saw a LoRA). The queue claims jobs grouped by LoRA set (store/queue.py), so a batch switches once
per group; the switch's seconds go into the job's record (`lora_switch_seconds`).

Profiles: a LoRA wraps the transformer's linear layers (peft), so it applies where those are plain bf16 or
fp32 layers the pipeline owns: cpu, resident, offload. The others replace the layers (fp8, int8, nf4),
compile them (fast) or stream them block by block (group-offload), and are refused with that reason.
Layers that resident's precomputed modulation takes out of the blocks (the AdaLN `norm*.linear*`) cannot
take a LoRA there either: such a LoRA is refused, naming the layers.

Torch and diffusers are imported inside the functions: the run's plan asks `profile_problem` first.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

from batchgen.errors import BatchgenError

LORA_PROFILES = ("cpu", "resident", "offload")
_PREFIX = "transformer."


class LoraMismatch(BatchgenError, ValueError):
    """A LoRA whose layers the transformer does not have (another model's LoRA, say)."""


def backend_problem() -> str | None:
    """Why LoRAs cannot load here (diffusers loads them through peft), None when they can."""
    import importlib.util

    if importlib.util.find_spec("peft") is None:
        return 'LoRAs need peft, which is not installed: pip install -e ".[lora]"'
    return None


def profile_problem(profile: str) -> str | None:
    if profile in LORA_PROFILES:
        return None
    return (f"LoRAs apply with profile {', '.join(LORA_PROFILES)}; profile '{profile}' replaces, compiles or streams "
            "the layers a LoRA wraps. Pick one of those with --profile or profile:")


@dataclass
class LoraState:
    """What the pipeline holds: adapter name by LoRA content hash, and the set now active."""

    loaded: dict[str, str] = field(default_factory=dict)
    active: tuple = ()


def lora_layers(keys) -> set[str]:
    """The transformer layers a LoRA's weight names (diffusers' or peft's format) point at."""
    names = set()
    for key in keys:
        stem = key.split(".lora_A")[0].split(".lora_B")[0].split(".lora_down")[0].split(".lora_up")[0]
        names.add(stem.removeprefix(_PREFIX))
    return names


def check_matches(pipe, lora, state_dict: dict, *, modulation_detached: bool) -> None:
    """Refuse a LoRA naming layers the transformer lacks (or that precomputed modulation took out)."""
    have = dict(pipe.transformer.named_modules())
    wanted = lora_layers(state_dict)
    missing = sorted(n for n in wanted if n not in have)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise LoraMismatch(f"LoRA {lora.source}: {len(missing)} of its {len(wanted)} layers are not in this model's "
                           f"transformer: {shown}. Is it a LoRA for another model?")
    # The AdaLN layers and what feeds them (time_embed): the precomputed table neither runs the first nor
    # is keyed by the LoRA set.
    detached = sorted(n for n in wanted if (".norm" in n and ".linear" in n) or n.startswith("time_embed"))
    if detached and modulation_detached:
        raise LoraMismatch(f"LoRA {lora.source} changes the AdaLN layers {', '.join(detached[:3])}, which this profile "
                           "precomputes: render it with BATCHGEN_PRECOMPUTE_MODULATION=0 or profile offload or cpu")


def _load(pipe, lora, modulation_detached: bool) -> None:
    source = lora.source
    kwargs = {"weight_name": lora.weight_name} if lora.weight_name else {}
    state_dict = pipe.lora_state_dict(source, **kwargs)
    if isinstance(state_dict, tuple):
        state_dict = state_dict[0]
    check_matches(pipe, lora, state_dict, modulation_detached=modulation_detached)
    with warnings.catch_warnings():
        # peft's notice that a second adapter joins the first: that is what a LoRA set of several is.
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        pipe.load_lora_weights(state_dict, adapter_name=lora.name)


def apply(pipe, loras: tuple, state: LoraState, *, modulation_detached: bool = False) -> float | None:
    """Make `loras` (a job's) the active set; the seconds it took, None when the set was already active."""
    wanted = tuple((lo.sha256, float(lo.scale)) for lo in loras)
    if wanted == state.active:
        return None
    start = time.perf_counter()
    for lo in loras:
        if lo.sha256 not in state.loaded:
            _load(pipe, lo, modulation_detached)
            state.loaded[lo.sha256] = lo.name
    if loras:
        pipe.set_adapters([state.loaded[lo.sha256] for lo in loras], [float(lo.scale) for lo in loras])
        pipe.enable_lora()
    elif state.loaded:
        pipe.disable_lora()
    state.active = wanted
    return time.perf_counter() - start
