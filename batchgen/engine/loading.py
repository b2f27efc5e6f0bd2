"""Building or loading the one MochiPipeline a run uses.

`tiny` is an embedded random-weight pipeline built in memory (no download, CPU, seconds), deterministic
from a fixed seed. Anything else goes through `MochiPipeline.from_pretrained`, the real loading path,
which is also how a pipeline saved with `save_pretrained` comes back.
"""

from __future__ import annotations

import hashlib
import os
import string
from dataclasses import dataclass
from pathlib import Path

from batchgen.errors import ModelLoadError
from batchgen.outputs.atomic import sha256_file

TINY = "tiny"
REALSIZE = "realsize"
TINY_SEED = 20241022
# T5 reads at most this many tokens (diffusers' max_sequence_length), the tiny character-level one too.
MAX_SEQUENCE_LENGTH = 256


@dataclass
class LoadedPipeline:
    pipe: object
    model: str
    revision: str  # resolved: commit hash for hub models, content hash for local folders and tiny
    max_sequence_length: int
    family: str = "mochi"  # batchgen.engine.families: what the renderer encodes, calls and decodes by
    variant: str | None = None  # the weights variant loaded (engine/checkpoints.py), None: the full files
    variant_reason: str = ""
    transformer_revision: str | None = None  # of a swapped-in transformer: hub commit or content hash


def _tiny_tokenizer():
    from transformers import T5Tokenizer

    # A character-level unigram vocabulary: a real T5 tokenizer class, but nothing to download.
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -3.0) for c in string.printable if not c.isspace()]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def build_tiny_pipeline():
    """A random-weight MochiPipeline small enough to render on a CPU in well under a second per step."""
    import torch
    from diffusers import (
        AutoencoderKLMochi,
        FlowMatchEulerDiscreteScheduler,
        MochiPipeline,
        MochiTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    # fork_rng: building the tiny model must not disturb (or depend on) the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        transformer = MochiTransformer3DModel(
            patch_size=2,
            num_attention_heads=2,
            attention_head_dim=8,
            num_layers=2,
            pooled_projection_dim=16,
            in_channels=12,
            out_channels=None,
            qk_norm="rms_norm",
            text_embed_dim=32,
            time_embed_dim=4,
            activation_fn="swiglu",
            max_sequence_length=MAX_SEQUENCE_LENGTH,
        )
        vae = AutoencoderKLMochi(
            latent_channels=12,
            out_channels=3,
            encoder_block_out_channels=(32, 32, 32, 32),
            decoder_block_out_channels=(32, 32, 32, 32),
            layers_per_block=(1, 1, 1, 1, 1),
        )
        text_encoder = T5EncoderModel(
            T5Config(
                vocab_size=128,
                d_model=32,
                d_kv=8,
                d_ff=37,
                num_layers=2,
                num_heads=4,
                feed_forward_proj="gated-gelu",
            )
        )
    # Models built from configs start in train mode; T5's dropout would make one seed give many videos.
    for module in (transformer, vae, text_encoder):
        module.eval()
    return MochiPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_tiny_tokenizer(),
        transformer=transformer,
    )


def weights_hash(pipe) -> str:
    """sha256 over every parameter and buffer of the pipeline's models (names, dtypes, bytes)."""
    import torch

    digest = hashlib.sha256()
    for name in ("text_encoder", "transformer", "vae"):
        module = getattr(pipe, name, None)
        if module is None:
            continue
        for key, tensor in sorted(module.state_dict().items()):
            digest.update(f"{name}.{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            data = tensor.detach().to("cpu").contiguous()
            if data.dtype == torch.bfloat16:
                data = data.view(torch.int16)
            digest.update(data.numpy().tobytes())
    return digest.hexdigest()


def folder_hash(path: Path) -> str:
    """Content hash of a local pipeline folder: every file's relative path and bytes."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def is_local(model: str) -> bool:
    return Path(model).expanduser().is_dir()


def load_pipeline(model: str, *, revision: str | None = None, load_kwargs: dict | None = None,
                  checkpoint: dict | None = None) -> LoadedPipeline:
    """Build `tiny`, or load a local folder / hub id through `MochiPipeline.from_pretrained`; a model of
    another family (batchgen.engine.families: tiny-wan, a WanPipeline folder...) through its own class.
    `checkpoint` (variant, transformer, transformer_revision) is what engine/checkpoints.py loads beside it."""
    family = _family(model, revision)
    if checkpoint and (family.name != "mochi" or model in (TINY, REALSIZE)):
        raise ModelLoadError(f"model {model!r}: variant and transformer apply to a Mochi model folder or hub id, "
                             "not to a built-in model")
    if family.name != "mochi":
        return _load_family(family, model, revision, load_kwargs or {})
    if model == REALSIZE:
        return _realsize(load_kwargs or {})
    if model == TINY:
        pipe = build_tiny_pipeline()
        revision = "tiny-" + weights_hash(pipe)[:16]  # of the weights as built, whatever dtype they render in
        _cast(pipe, (load_kwargs or {}).get("dtype"))
        return LoadedPipeline(pipe, model, revision, MAX_SEQUENCE_LENGTH)
    return _load_with_checkpoint(model, revision, load_kwargs or {}, checkpoint or {})


def _load_with_checkpoint(model: str, revision: str | None, load_kwargs: dict, checkpoint: dict) -> LoadedPipeline:
    """A Mochi folder or hub id through from_pretrained, with the variant rule and a swapped-in transformer."""
    import torch

    from batchgen.engine import checkpoints

    kwargs = dict(load_kwargs)
    bf16 = kwargs.get("dtype", kwargs.get("torch_dtype")) == torch.bfloat16
    try:
        variant, reason = checkpoints.resolve_variant(model, revision, checkpoint.get("variant"), bf16)
    except checkpoints.CheckpointError as exc:
        raise ModelLoadError(str(exc)) from None
    if variant:
        kwargs["variant"] = variant
    transformer_revision = None
    if checkpoint.get("transformer"):
        source, asked = checkpoint["transformer"], checkpoint.get("transformer_revision")
        kwargs["transformer"] = checkpoints.load_transformer(source, asked, load_kwargs, base_model=model)
        folder = checkpoints.transformer_folder(source)
        if checkpoints.is_single_file(source):
            transformer_revision = "sha256-" + sha256_file(Path(source).expanduser())[:16]
        elif folder is not None:
            transformer_revision = "sha256-" + folder_hash(folder)[:16]
        else:
            transformer_revision = resolve_revision(source, asked)
        # The profile quantizes only the transformer, and that one is loaded (and quantized) already.
        kwargs.pop("quantization_config", None)
    pipe = _from_pretrained(model, revision, kwargs)
    for name in ("text_encoder", "transformer", "vae"):
        getattr(pipe, name).eval()
    max_len = MAX_SEQUENCE_LENGTH
    # A small saved pipeline may have a shorter text table: never ask it for more tokens than it has.
    if getattr(pipe.transformer.config, "max_sequence_length", None):
        max_len = min(max_len, int(pipe.transformer.config.max_sequence_length))
    return LoadedPipeline(pipe, model, resolve_revision(model, revision), max_len, variant=variant,
                          variant_reason=reason, transformer_revision=transformer_revision)


def _family(model: str, revision: str | None = None):
    from batchgen.engine.families import UnknownFamily, builtin, family_for_model

    if builtin(model) is None and not is_local(model) and model.count("/") == 1:
        # A hub id: its model_index.json names its pipeline class. from_pretrained would fetch it first anyway;
        # fetching it before choosing the class lets the family come from the model, not from its owner's name.
        try:
            from huggingface_hub import hf_hub_download

            hf_hub_download(model, "model_index.json", revision=revision)
        except Exception:  # offline, gated, not found: from_pretrained says so in the user's words
            pass
    try:
        return family_for_model(model)
    except UnknownFamily as exc:
        raise ModelLoadError(str(exc)) from None


def _load_family(family, model: str, revision: str | None, load_kwargs: dict) -> LoadedPipeline:
    """A model of a family other than Mochi: its tiny pipeline, a published-size random one, or a folder /
    hub id through its own pipeline class. Mochi's optimisations do not apply: the pipeline is as loaded."""
    builders = family.builders()
    if model == family.tiny:
        pipe = builders.build_tiny()
        resolved = f"{model}-" + weights_hash(pipe)[:16]
        _cast(pipe, load_kwargs.get("dtype"))
    elif model in family.realsize:
        import torch

        if not torch.cuda.is_available():
            raise ModelLoadError(f"model {model!r} (published-size random weights, for benchmarks) needs a CUDA GPU.")
        if load_kwargs.get("quantization_config") is not None:
            raise ModelLoadError(
                f"model {model!r} is built in bf16 on the GPU and cannot be quantized on load: use profile "
                "resident, fast, group-offload or fp8, or save it with save_pretrained and load that folder."
            )
        pipe = builders.build_realsize(model, "cuda")
        resolved = f"{model}-random-seed0"
    else:
        pipe = _from_pretrained(model, revision, load_kwargs, builders.pipeline_class())
        for name in ("text_encoder", "transformer", "vae"):
            getattr(pipe, name).eval()
        resolved = resolve_revision(model, revision)
    return LoadedPipeline(pipe, model, resolved, family.max_tokens, family=family.name)


def _cast(pipe, dtype) -> None:
    """A tiny pipeline, built in fp32, in the dtype a profile loads in (only a GPU profile's bf16 differs)."""
    if dtype is None:
        return
    for name in ("text_encoder", "transformer", "vae"):
        module = getattr(pipe, name)
        if module.dtype != dtype:
            module.to(dtype=dtype)


def _realsize(load_kwargs: dict) -> LoadedPipeline:
    """Published-size Mochi with random weights on the GPU: real memory and speed, for benchmarks."""
    import torch

    from batchgen.engine.realsize import build_realsize_pipeline

    if not torch.cuda.is_available():
        raise ModelLoadError("model 'realsize' (published-size random weights, for benchmarks) needs a CUDA GPU.")
    if "quantization_config" in load_kwargs:
        raise ModelLoadError(
            "model 'realsize' is built in bf16 on the GPU and cannot be quantized on load: use profile resident, "
            "fast, group-offload, offload or fp8 with it (benchmarks/bench_profiles.py measures int8 and nf4)."
        )
    pipe = build_realsize_pipeline("cuda")
    for name in ("text_encoder", "transformer", "vae"):
        getattr(pipe, name).eval()
    return LoadedPipeline(pipe, REALSIZE, "realsize-random-seed0", MAX_SEQUENCE_LENGTH)


def resolve_revision(model: str, revision: str | None) -> str:
    if is_local(model):
        return "sha256-" + folder_hash(Path(model).expanduser())[:16]
    try:
        from huggingface_hub import snapshot_download

        # Already downloaded by from_pretrained, so this only reads the cache: the snapshot folder is the commit.
        path = snapshot_download(model, revision=revision, local_files_only=True)
        return Path(path).name
    except Exception:
        return revision or "unknown"


def _from_pretrained(model: str, revision: str | None, load_kwargs: dict, pipeline_class=None):
    if pipeline_class is None:
        from diffusers import MochiPipeline as pipeline_class

    source = str(Path(model).expanduser()) if is_local(model) else model
    if not is_local(model) and (model.startswith((".", "/", "~")) or os.sep in model and model.count("/") != 1):
        raise ModelLoadError(
            f"Model folder '{model}' does not exist. Give a local folder made with save_pretrained, "
            "a Hugging Face hub id such as genmo/mochi-1-preview, or 'tiny'."
        )
    try:
        return pipeline_class.from_pretrained(source, revision=revision, **load_kwargs)
    except Exception as exc:  # translated into words a user can act on
        raise ModelLoadError(_explain_load_error(model, exc, pipeline_class.__name__)) from exc


def _explain_load_error(model: str, exc: Exception, class_name: str = "MochiPipeline") -> str:
    name = type(exc).__name__
    text = str(exc).splitlines()[0] if str(exc) else name
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if name == "GatedRepoError" or "gated" in text.lower():
        return (
            f"Model '{model}' is gated on the Hugging Face hub: accept its licence on its hub page, then "
            f"run `hf auth login` (or set HF_TOKEN). ({name}: {text})"
        )
    if name in ("RepositoryNotFoundError", "RevisionNotFoundError"):
        return f"Model '{model}' was not found on the Hugging Face hub (or is private). Check the id and revision. ({name}: {text})"
    if offline or name in ("LocalEntryNotFoundError", "OfflineModeIsEnabled") or "offline" in text.lower():
        return (
            f"Model '{model}' is not in the Hugging Face cache and the hub cannot be reached"
            f"{' (HF_HUB_OFFLINE is set)' if offline else ''}. Download it once where there is network "
            f"(`hf download {model}`), or point `model:` at a local folder. ({name}: {text})"
        )
    if Path(model).expanduser().is_dir():
        return f"Could not load the pipeline folder '{model}': {name}: {text}. Is it a {class_name} saved with save_pretrained?"
    return f"Could not load model '{model}': {name}: {text}"
