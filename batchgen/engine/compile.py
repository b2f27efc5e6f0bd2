"""torch.compile of a transformer's repeated blocks, one graph per block, reused by all of them (Mochi's 48).

Mochi declares no `_repeated_blocks`, so diffusers' `compile_repeated_blocks()` refuses it; this does the
same by hand, for every family (Wan's and LTX-Video's `_repeated_blocks` name the very blocks their
Family.blocks holds), so that one path owns the recompile limit and the undoing. Blocks compile with `fullgraph=True` (needs batchgen.engine.attention's processor: diffusers' own
breaks the graph at `torch.nonzero`) and `dynamic=False`: one compiled graph per video shape, built on the
first step of the first job of that shape and reused by every later step and job of the shape, which is
why a batch renders jobs of one shape together. The compile time is paid on that first step; callers
measure it as (first step - a later step) and report it apart, amortised over the jobs of the shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from batchgen.engine.module_state import state

# Two block variants (the last block has no text stream) times a few video shapes per batch: dynamo's
# default of 8 cached graphs per code object would silently drop the later shapes back to eager.
RECOMPILE_LIMIT = 64


@dataclass
class CompileStats:
    blocks: int
    mode: str | None
    fullgraph: bool
    dynamic: bool
    attention: str | None  # batchgen.engine.attention backend the graphs were traced with (None: diffusers')
    torch: str


def _raise_recompile_limit() -> None:
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name) and getattr(config, name) < RECOMPILE_LIMIT:
            setattr(config, name, RECOMPILE_LIMIT)


def compile_blocks(transformer, blocks_attr: str = "transformer_blocks", mode: str | None = None, *,
                   fullgraph: bool = True, dynamic: bool = False) -> CompileStats:
    """Compile every block of `transformer.<blocks_attr>` in place (lazily: the work happens on the first
    forward of each shape). `mode` is torch.compile's (None, "max-autotune-no-cudagraphs", ...)."""
    _raise_recompile_limit()
    blocks = getattr(transformer, blocks_attr)
    for block in blocks:
        block.compile(fullgraph=fullgraph, dynamic=dynamic, mode=mode)
    state(transformer).compiled = True
    return CompileStats(
        blocks=len(blocks),
        mode=mode,
        fullgraph=fullgraph,
        dynamic=dynamic,
        attention=state(transformer).attention,
        torch=torch.__version__,
    )


def uncompile_blocks(transformer, blocks_attr: str = "transformer_blocks") -> None:
    """Back to eager blocks (the compiled graphs stay in dynamo's cache until reset)."""
    for block in getattr(transformer, blocks_attr):
        block._compiled_call_impl = None
    state(transformer).compiled = False


def graph_breaks(block, *args, **kwargs) -> tuple[int, list[str]]:
    """Graph breaks dynamo finds tracing `block(*args, **kwargs)`, and their reasons."""
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(block)(*args, **kwargs)
    reasons = [str(getattr(b, "reason", b)) for b in explanation.break_reasons]
    return explanation.graph_break_count, reasons
