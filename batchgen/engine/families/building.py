"""Building a family's random-weight pipelines: the tiny ones for CPU tests, the published-size ones for
GPU benchmarks. Shared by wan.py and ltx.py so that both build the same way Mochi's tiny and realsize do."""

from __future__ import annotations

from collections.abc import Callable

from batchgen.engine.loading import TINY_SEED  # every tiny pipeline is deterministic from the same seed


def tiny_text_config() -> dict:
    """A two-layer T5-shaped encoder over the character-level tokenizer's ids (< 128)."""
    return dict(vocab_size=128, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu")


def tiny_tokenizer():
    from batchgen.engine.loading import _tiny_tokenizer

    return _tiny_tokenizer()


def build_tiny(make: Callable[[], dict], seed: int = TINY_SEED) -> dict:
    """The components `make` builds, seeded, in eval mode, without touching the caller's global RNG."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        components = make()
    _eval(components)
    return components


def build_published(makers: dict[str, Callable[[], object]], device: str, dtype, seed: int = 0) -> dict:
    """Each published-size component allocated straight on `device` in `dtype`, with cheap random weights
    (a CPU fp32 init of billions of parameters takes minutes), in eval mode."""
    import torch

    from batchgen.engine.realsize import _default_dtype, _randomize

    built = {}
    for offset, (name, make) in enumerate(makers.items()):
        with _default_dtype(dtype), torch.device(device):
            module = make()
        if device != "meta":  # meta: shapes only, for checking a config without allocating it
            _randomize(module, seed + offset)
        built[name] = module
    _eval(built)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return built


def _eval(components: dict) -> None:
    # Models built from configs start in train mode; dropout would make one seed give many videos.
    for module in components.values():
        if hasattr(module, "eval"):
            module.eval()
