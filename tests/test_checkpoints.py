"""Checkpoints beside the model (issue 20): the bf16 variant rule, a transformer swapped in, pre-quantized
transformers, all on the real loading path (tiny pipelines saved with save_pretrained)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from batchgen.engine import checkpoints
from batchgen.engine.loading import build_tiny_pipeline, load_pipeline, weights_hash
from batchgen.errors import ModelLoadError
from batchgen.job import Job
from batchgen.manifest.parse import load_manifest
from batchgen.store.queue import Store
from conftest import SMALL, run_cli, write_manifest


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny pipeline saved with its full files and a bf16 variant beside them, as genmo's repo has."""
    import shutil

    base = tmp_path_factory.mktemp("ckpt")
    folder, variant = base / "mochi", base / "bf16"
    pipe = build_tiny_pipeline()
    pipe.save_pretrained(folder)
    for name in ("text_encoder", "transformer", "vae"):
        getattr(pipe, name).to(torch.bfloat16)
    pipe.save_pretrained(variant, variant="bf16")
    for file in variant.rglob("*.bf16.*"):  # beside the full files, as on the hub
        shutil.copy(file, folder / file.relative_to(variant))
    return folder


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plain") / "mochi"
    build_tiny_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def other_transformer(tmp_path_factory):
    """A transformer saved alone, with other weights than the pipeline's own."""
    from diffusers import MochiTransformer3DModel

    folder = tmp_path_factory.mktemp("transformer") / "t"
    base = build_tiny_pipeline().transformer
    torch.manual_seed(7)
    other = MochiTransformer3DModel.from_config(base.config)
    other.save_pretrained(folder)
    return folder


def test_the_bf16_variant_is_found_and_chosen_only_for_bf16_compute(saved, plain):
    assert checkpoints.folder_variants(saved) == {"bf16"}
    assert checkpoints.folder_variants(plain) == set()
    assert checkpoints.resolve_variant(str(saved), None, None, computes_bf16=True)[0] == "bf16"
    assert checkpoints.resolve_variant(str(saved), None, None, computes_bf16=False) == (None, "full files")
    assert checkpoints.resolve_variant(str(plain), None, None, computes_bf16=True) == (None, "full files")


def test_loading_the_bf16_variant_gives_the_weights_the_full_files_give_in_bf16(saved, plain):
    bf16 = {"dtype": torch.bfloat16}
    with_variant = load_pipeline(str(saved), load_kwargs=bf16)
    assert with_variant.variant == "bf16"
    without = load_pipeline(str(plain), load_kwargs=bf16)
    assert without.variant is None
    assert with_variant.pipe.transformer.dtype == torch.bfloat16
    # The variant's files are the full ones rounded to bf16: the same weights, so the same pixels.
    assert weights_hash(with_variant.pipe) == weights_hash(without.pipe)
    assert load_pipeline(str(saved), load_kwargs={"dtype": torch.float32}).variant is None


def test_a_variant_the_folder_lacks_is_refused_naming_it(plain):
    with pytest.raises(ModelLoadError, match="variant 'fp16'.*variants it has: none"):
        load_pipeline(str(plain), checkpoint={"variant": "fp16"})


def test_an_asked_for_variant_is_part_of_the_job_id_and_the_rest_keep_theirs():
    base = Job(prompt="a fox")
    assert Job(prompt="a fox", variant="bf16").job_id != base.job_id
    assert Job(prompt="a fox", transformer="x/y").job_id != base.job_id
    assert Job(prompt="a fox", transformer="x/y", transformer_revision="abc").job_id != Job(
        prompt="a fox", transformer="x/y").job_id
    # A job without checkpoint keys has the id it had before they existed: the same twelve settings hashed.
    import hashlib

    before = {k: getattr(base, k) for k in ("model", "revision", "precision", "prompt", "negative_prompt", "seed",
                                            "num_frames", "height", "width", "num_inference_steps", "guidance_scale",
                                            "fps")}
    text = json.dumps(before, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert base.job_id == hashlib.sha256(text.encode()).hexdigest()[:16]


def _manifest(tmp_path, model, extra=""):
    body = f"model: {model}\n{extra}defaults:\n" + "".join(f"  {k}: {v}\n" for k, v in SMALL.items())
    body += "jobs:\n  - {prompt: a red fox in snow, seed: 1}\n"
    return write_manifest(tmp_path / "jobs.yaml", body)


def _frames(out):
    import imageio.v3 as iio

    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    return rows, [iio.imread(out / r["file_name"]) for r in rows]


def test_a_transformer_swapped_in_renders_with_its_own_weights(tmp_path, plain, other_transformer):
    swapped = _manifest(tmp_path, plain, extra=f"transformer: {other_transformer}\n")
    result = run_cli("render", swapped, "--out", tmp_path / "swapped", "--no-progress")
    assert result.exit_code == 0, result.output
    rows, frames = _frames(tmp_path / "swapped")
    assert rows[0]["transformer"] == str(other_transformer)
    assert rows[0]["resolved_transformer_revision"].startswith("sha256-")
    # The same pipeline saved with that transformer inside gives the same frames.
    from diffusers import MochiTransformer3DModel

    whole = tmp_path / "whole"
    pipe = build_tiny_pipeline()
    pipe.transformer = MochiTransformer3DModel.from_pretrained(other_transformer)
    pipe.save_pretrained(whole)
    (tmp_path / "b").mkdir()
    reference = _manifest(tmp_path / "b", whole)
    assert run_cli("render", reference, "--out", tmp_path / "whole-out", "--no-progress").exit_code == 0
    _, expected = _frames(tmp_path / "whole-out")
    assert np.array_equal(frames[0], expected[0])
    (tmp_path / "c").mkdir()
    own = _manifest(tmp_path / "c", plain)
    assert run_cli("render", own, "--out", tmp_path / "own", "--no-progress").exit_code == 0
    own_rows, own_frames = _frames(tmp_path / "own")
    assert own_rows[0]["job_id"] != rows[0]["job_id"]
    assert not np.array_equal(own_frames[0], frames[0])


def test_a_run_claims_only_the_jobs_of_its_own_checkpoint(tmp_path):
    store = Store(tmp_path)
    mine, other = Job(prompt="a", transformer="t/one"), Job(prompt="a", transformer="t/two")
    store.add_jobs([other.with_(output_name="o"), mine.with_(output_name="m"), Job(prompt="a").with_(output_name="p")])
    from batchgen.job import checkpoint_key

    key = checkpoint_key(mine)
    assert store.pending_count(model="tiny", precision="fp32", checkpoint=key) == 1
    claimed = store.claim(model="tiny", precision="fp32", checkpoint=key)
    assert claimed.job_id == mine.job_id and claimed.transformer == "t/one"
    assert store.claim(model="tiny", precision="fp32", checkpoint=key) is None
    assert store.claim(model="tiny", precision="fp32").job_id == Job(prompt="a").job_id
    store.close()


def test_a_prequantized_transformer_sets_the_precision_and_refuses_requantizing(tmp_path, other_transformer):
    config = json.loads((other_transformer / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    folder = tmp_path / "nf4"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    tag = checkpoints.prequantized_tag(checkpoints.transformer_config(str(folder), None))
    assert tag == "nf4-prequantized"
    assert checkpoints.precision_with("bf16", tag) == "nf4-prequantized"
    assert checkpoints.precision_with("bf16-offload", tag) == "nf4-prequantized-offload"
    for profile, weights, compiles in (("nf4", "nf4", False), ("fp8", "fp8-storage", False), ("fast", "bf16", True)):
        with pytest.raises(checkpoints.CheckpointError, match=f"already quantized.*profile '{profile}'"):
            checkpoints.check_profile(tag, profile, weights, compiles, str(folder))
    checkpoints.check_profile(tag, "resident", "bf16", False, str(folder))
    # Through the run's plan, on the CPU: the tag replaces fp32 in every job's precision (and so its id).
    from batchgen.run.supervisor import plan

    manifest = load_manifest(_manifest(tmp_path, "some/model", extra=f"transformer: {folder}\n"), profile="cpu")
    _, precision, jobs = plan(manifest)
    assert precision == "nf4-prequantized" and jobs[0].precision == precision


def test_checkpoint_keys_are_checked_with_the_line(tmp_path):
    bad = _manifest(tmp_path, "tiny", extra="variant: 16\ntransformer: ''\n")
    result = run_cli("validate", bad)
    assert result.exit_code == 2
    assert "jobs.yaml:2: field 'variant': must be a weights variant" in result.output
    assert "jobs.yaml:3: field 'transformer': must be a hub id" in result.output
    assert "Traceback" not in result.output


def test_a_local_transformer_that_is_not_there_is_refused_by_validate(tmp_path):
    missing = _manifest(tmp_path, "some/model", extra="transformer: ./nowhere/mochi.safetensors\n")
    result = run_cli("validate", missing)
    assert result.exit_code == 2
    assert "jobs.yaml:2: field 'transformer': ./nowhere/mochi.safetensors not found" in result.output


def test_a_built_in_model_refuses_a_checkpoint(tmp_path, other_transformer):
    manifest = _manifest(tmp_path, "tiny", extra=f"transformer: {other_transformer}\n")
    result = run_cli("render", manifest, "--out", tmp_path / "out", "--no-progress")
    assert result.exit_code == 2
    assert "apply to a Mochi model folder or hub id" in result.output


def test_a_single_file_in_the_original_format_is_converted_and_swapped_in(tmp_path):
    """diffusers' converter of the original single-file format hard-codes Mochi's 48 blocks, so the tiny
    transformer gets 48 (tiny) blocks here; the file is written in the original key names
    (tests/mochi_original_format.py, the converter's inverse) with other weights than the pipeline's."""
    from diffusers import MochiTransformer3DModel
    from safetensors.torch import save_file

    from mochi_original_format import to_original

    pipe = build_tiny_pipeline()
    config = {**pipe.transformer.config, "num_layers": 48}
    torch.manual_seed(3)
    pipe.transformer = MochiTransformer3DModel.from_config(config).eval()
    model = tmp_path / "mochi48"
    pipe.save_pretrained(model)
    torch.manual_seed(4)
    other = MochiTransformer3DModel.from_config(config).eval()
    single = tmp_path / "mochi_preview_bf16.safetensors"
    save_file(to_original(other.state_dict(), 48), str(single))
    loaded = load_pipeline(str(model), checkpoint={"transformer": str(single)})
    assert loaded.transformer_revision.startswith("sha256-")
    got, want = loaded.pipe.transformer.state_dict(), other.state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_an_nf4_transformer_saved_alone_is_loaded_as_it_is(tmp_path, plain):
    """The seed guide's Technique 3 in small: an NF4 transformer saved alone, swapped into the pipeline."""
    pytest.importorskip("bitsandbytes")
    if not torch.cuda.is_available():
        pytest.skip("diffusers' bitsandbytes quantizer refuses without a GPU ('No GPU found. A GPU is needed for "
                    "quantization.'), so no NF4 checkpoint can be made on this machine")
    from diffusers import BitsAndBytesConfig, MochiTransformer3DModel

    source = tmp_path / "t"
    build_tiny_pipeline().transformer.save_pretrained(source)
    quantized = MochiTransformer3DModel.from_pretrained(source, torch_dtype=torch.bfloat16, quantization_config=(
        BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)))
    nf4 = tmp_path / "nf4"
    quantized.save_pretrained(nf4)
    assert checkpoints.prequantized_tag(checkpoints.transformer_config(str(nf4), None)) == "nf4-prequantized"
    from batchgen.engine.renderer import Renderer
    from batchgen.run.supervisor import plan

    manifest = load_manifest(_manifest(tmp_path, plain, extra=f"transformer: {nf4}\nprofile: resident\n"))
    _, precision, jobs = plan(manifest)
    assert precision == "nf4-prequantized"
    renderer = Renderer(str(plain), profile="resident", progress=False, checkpoint=manifest.checkpoint)
    assert type(renderer.pipe.transformer.transformer_blocks[0].attn1.to_q).__name__ == "Linear4bit"
    frames = renderer.render(jobs[0]).frames
    assert frames.shape[0] == jobs[0].num_frames and frames.std() > 0


def test_the_bf16_rule_never_downloads_again_what_the_cache_has_in_full(tmp_path, monkeypatch):
    """A hub model whose full files are cached keeps them, though the hub lists bf16 files too."""
    commit = "a" * 40
    repo = tmp_path / "hf" / "hub" / "models--owner--mochi"
    snapshot = repo / "snapshots" / commit
    listing = []
    for component in checkpoints.WEIGHT_COMPONENTS:
        (snapshot / component).mkdir(parents=True)
        (snapshot / component / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
        listing += [f"{component}/diffusion_pytorch_model.safetensors", f"{component}/diffusion_pytorch_model.bf16.safetensors"]
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    import huggingface_hub.constants

    # The constant, not the variable: huggingface_hub reads HF_HUB_CACHE once, when first imported.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(checkpoints, "_hub_files", lambda model, revision: listing)
    variant, reason = checkpoints.resolve_variant("owner/mochi", None, None, computes_bf16=True)
    assert variant is None and "in the cache" in reason
    for component in checkpoints.WEIGHT_COMPONENTS:
        (snapshot / component / "diffusion_pytorch_model.safetensors").unlink()
    assert checkpoints.resolve_variant("owner/mochi", None, None, computes_bf16=True)[0] == "bf16"
