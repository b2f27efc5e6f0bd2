import numpy as np
import pytest

from batchgen.errors import ModelLoadError
from batchgen.job import Job
from batchgen.engine.loading import build_tiny_pipeline, load_pipeline, weights_hash
from batchgen.engine.renderer import Renderer

SMALL = dict(num_frames=7, height=32, width=48, num_inference_steps=2)


def job(prompt="a red fox", seed=1, **kw):
    return Job(prompt=prompt, seed=seed, **{**SMALL, **kw})


def test_tiny_pipeline_is_deterministic_and_in_eval_mode():
    a, b = build_tiny_pipeline(), build_tiny_pipeline()
    assert weights_hash(a) == weights_hash(b)
    assert not a.text_encoder.training and not a.transformer.training and not a.vae.training


def test_same_seed_same_frames_alone_or_anywhere_in_a_batch(tmp_path):
    target = job("a red fox", seed=7)
    alone = Renderer("tiny", progress=False).render(target)

    batch = Renderer("tiny", progress=False)
    batch.encode(["waves at night", "a red fox", "", "a city street"])
    batch.render(job("waves at night", seed=3))
    batch.render(job("a city street", seed=7, guidance_scale=1.0))
    inside = batch.render(target)
    assert alone.frames.shape == (7, 32, 48, 3) and alone.frames.dtype == np.uint8
    assert np.array_equal(alone.frames, inside.frames)
    assert alone.frames_sha256 == inside.frames_sha256
    other_seed = batch.render(job("a red fox", seed=8))
    assert not np.array_equal(other_seed.frames, inside.frames)


def test_embedding_cache_gives_identical_frames(tmp_path):
    cache = tmp_path / "cache"
    first = Renderer("tiny", cache_dir=cache, progress=False).render(job())
    assert len(list(cache.glob("*.pt"))) == 2  # the prompt and the empty negative prompt
    again = Renderer("tiny", cache_dir=cache, progress=False)
    again.encode(["a red fox", ""])
    assert np.array_equal(first.frames, again.render(job()).frames)


def test_saved_pipeline_loads_through_from_pretrained(tmp_path):
    folder = tmp_path / "saved"
    build_tiny_pipeline().save_pretrained(folder)
    loaded = load_pipeline(str(folder))
    assert loaded.revision.startswith("sha256-")
    assert weights_hash(loaded.pipe) == weights_hash(build_tiny_pipeline())
    from_tiny = Renderer("tiny", progress=False).render(job())
    from_folder = Renderer(str(folder), progress=False).render(job(model=str(folder)))
    assert np.array_equal(from_tiny.frames, from_folder.frames)


def test_missing_model_folder_and_uncached_hub_id_are_explained(tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_pipeline(str(tmp_path / "no-such-folder"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelLoadError, match="not in the Hugging Face cache"):
        load_pipeline("genmo/mochi-1-preview")


def test_two_workers_caching_the_same_embedding_do_not_trip_over_each_other(tmp_path, monkeypatch):
    """Worker processes share OUT/cache/embeddings and encode the same texts: one's write of an entry may land
    between the other's write and rename of the same entry (seen in the multi-worker tests)."""
    import os

    import torch

    cache = tmp_path / "cache"
    real_save = torch.save
    other = Renderer("tiny", cache_dir=cache, progress=False)
    raced = []

    def save_then_race(obj, target, *args, **kwargs):
        real_save(obj, target, *args, **kwargs)
        if not raced:
            raced.append(target)
            # The other worker, a process of its own, caches the same text right now.
            pid = os.getpid()
            monkeypatch.setattr(os, "getpid", lambda: pid + 1)
            try:
                other.encode(["a red fox"])
            finally:
                monkeypatch.setattr(os, "getpid", lambda: pid)

    monkeypatch.setattr(torch, "save", save_then_race)
    mine = Renderer("tiny", cache_dir=cache, progress=False)
    mine.encode(["a red fox"])
    assert raced
    entries = [p for p in cache.rglob("*") if p.is_file()]
    assert len(entries) == 1 and entries[0].suffix == ".pt"  # one entry, no temporary file left
    loaded = torch.load(entries[0])
    assert torch.equal(loaded["embeds"], mine._embeds["a red fox"][0])
