"""LoRAs per job (issue 20): a tiny LoRA made with peft on the tiny transformer, saved with diffusers'
save_lora_weights, applied per job through the CLI; grouping, ids, refusals, resume and reproduce."""

from __future__ import annotations

import json
import signal
import sqlite3

import pytest

from batchgen.engine import lora as lora_engine
from batchgen.job import Job, Lora
from conftest import SMALL, run_cli, write_manifest
from test_resume import assert_consistent, start

pytest.importorskip("peft")


def _save_lora(folder, *, seed: int, rename: str | None = None):
    import torch
    from diffusers import MochiPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from batchgen.engine.loading import build_tiny_pipeline

    transformer = build_tiny_pipeline().transformer
    torch.manual_seed(seed)
    # init_lora_weights=False: random A and B, so the LoRA changes the frames (peft's default B is zero).
    transformer.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights=False,
                                       target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    layers = get_peft_model_state_dict(transformer)
    if rename:
        layers = {k.replace("attn1.to_q", rename): v for k, v in layers.items()}
    MochiPipeline.save_lora_weights(folder, transformer_lora_layers=layers)
    return folder / "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    base = tmp_path_factory.mktemp("loras")
    return {"a": _save_lora(base / "a", seed=1), "b": _save_lora(base / "b", seed=2),
            "alien": _save_lora(base / "alien", seed=3, rename="attn1.to_qq")}


def _manifest(tmp_path, jobs: str, top: str = "") -> object:
    body = "model: tiny\n" + top + "defaults:\n" + "".join(f"  {k}: {v}\n" for k, v in SMALL.items())
    return write_manifest(tmp_path / "jobs.yaml", body + "jobs:\n" + jobs)


def _by_scale(out):
    """Each finished job's record, by its LoRA's scale ("plain": no LoRA)."""
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    return {(r["loras"][0]["scale"] if "loras" in r else "plain"): r for r in rows}


def test_a_lora_changes_the_frames_scale_zero_does_not_and_scales_make_ids(tmp_path, loras):
    a = loras["a"]
    jobs = ("  - {prompt: a fox, seed: 1}\n"
            + "".join(f"  - {{prompt: a fox, seed: 1, loras: [{{path: {a}, scale: {s}}}]}}\n" for s in (1.0, 0, 0.5)))
    manifest = _manifest(tmp_path, jobs)
    result = run_cli("render", manifest, "--out", tmp_path / "out", "--no-progress")
    assert result.exit_code == 0, result.output
    rows = _by_scale(tmp_path / "out")
    assert set(rows) == {"plain", 1.0, 0.0, 0.5}  # four jobs, four ids
    assert rows[0.0]["frames_sha256"] == rows["plain"]["frames_sha256"]
    assert rows[1.0]["frames_sha256"] != rows["plain"]["frames_sha256"]
    assert rows[0.5]["frames_sha256"] not in (rows[1.0]["frames_sha256"], rows["plain"]["frames_sha256"])
    assert len(rows[1.0]["loras"][0]["sha256"]) == 16 and rows[1.0]["lora_switch_seconds"] >= 0


def test_a_lora_set_renders_as_a_group_and_loads_once(tmp_path, loras):
    a, b = loras["a"], loras["b"]
    lines = []
    for i in range(6):
        which = f"[{{path: {a}}}]" if i % 2 else f"[{{path: {b}}}]"
        lines.append(f"  - {{prompt: a fox, seed: {i}, loras: {which}}}\n")
    manifest = _manifest(tmp_path, "".join(lines))
    assert run_cli("render", manifest, "--out", tmp_path / "out", "--no-progress").exit_code == 0
    conn = sqlite3.connect(tmp_path / "out" / "batchgen.db")
    order = [r[0] for r in conn.execute("select lora_set from jobs order by started_at")]
    conn.close()
    switches = sum(1 for x, y in zip(order, order[1:]) if x != y)
    assert switches == 1, order  # manifest order alternates; the claims grouped the sets


def test_a_per_job_list_replaces_the_top_level_one_and_an_empty_list_means_none(tmp_path, loras):
    a = loras["a"]
    jobs = "  - {prompt: a fox, seed: 1}\n  - {prompt: a fox, seed: 2, loras: []}\n"
    manifest = _manifest(tmp_path, jobs, top=f"loras: [{{path: {a}, scale: 0.7}}]\n")
    assert run_cli("render", manifest, "--out", tmp_path / "out", "--no-progress").exit_code == 0
    rows = _by_scale(tmp_path / "out")
    assert rows[0.7]["seed"] == 1 and rows["plain"]["seed"] == 2


def test_a_lora_for_other_layers_fails_its_job_naming_them_and_the_batch_goes_on(tmp_path, loras):
    jobs = (f"  - {{prompt: a fox, seed: 1, loras: [{{path: {loras['alien']}}}]}}\n"
            "  - {prompt: a fox, seed: 2}\n")
    result = run_cli("render", _manifest(tmp_path, jobs), "--out", tmp_path / "out", "--no-progress")
    assert result.exit_code == 1
    assert "not in this model's transformer" in result.output and "attn1.to_qq" in result.output
    assert [r["seed"] for r in _by_scale(tmp_path / "out").values()] == [2]


@pytest.mark.parametrize("item, message", [
    ("{path: missing.safetensors}", "LoRA file not found"),
    ("{path: A, scale: 9}", "scale 9 is outside -4..4"),
    ("{path: A, scale: strong}", "scale must be a number"),
    ("{path: A, repo: x/y}", "give exactly one of path"),
    ("{path: A, rank: 4}", "unknown key 'rank'"),
])
def test_bad_lora_items_are_refused_with_the_line(tmp_path, loras, item, message):
    item = item.replace("A", str(loras["a"]))
    manifest = _manifest(tmp_path, f"  - prompt: a fox\n    loras: [{item}]\n")
    result = run_cli("validate", manifest)
    assert result.exit_code == 2
    assert f"jobs.yaml:10: field 'loras': item 1: {message}" in result.output, result.output
    assert "Traceback" not in result.output


def test_profiles_that_replace_or_compile_the_layers_are_refused():
    assert lora_engine.profile_problem("cpu") is None and lora_engine.profile_problem("resident") is None
    for profile in ("fast", "fp8-fast", "nf4", "group-offload"):
        assert f"profile '{profile}' replaces, compiles or streams" in lora_engine.profile_problem(profile)


def test_job_ids_follow_the_content_and_scale_not_the_path():
    one = Job(prompt="p", loras=(Lora(source="/a/x.safetensors", sha256="ab" * 8),))
    moved = Job(prompt="p", loras=(Lora(source="/b/y.safetensors", sha256="ab" * 8, adapter_name="style"),))
    assert one.job_id == moved.job_id
    assert one.job_id != Job(prompt="p", loras=(Lora(source="/a/x.safetensors", sha256="ab" * 8, scale=0.5),)).job_id
    assert Job.from_dict(one.to_dict()) == one


def test_a_lora_batch_resumes_after_a_kill_and_reproduces(tmp_path, loras):
    a = loras["a"]
    jobs = "".join(f"  - {{prompt: a fox, seed: {i}, loras: [{{path: {a}, scale: 0.8}}]}}\n" for i in range(3))
    manifest = _manifest(tmp_path, jobs)
    out = tmp_path / "out"
    killed = start(manifest, out, fault="marked_done:2", write_behind="0")
    killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL
    resumed = start(manifest, out, write_behind="0")
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert_consistent(out, 3)
    job_id = _by_scale(out)[0.8]["job_id"]
    result = run_cli("reproduce", out, job_id, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "identical" in result.output


@pytest.mark.parametrize("records", ["metadata.jsonl", "batchgen.db"])
def test_a_lora_batch_is_recreated_from_its_records_with_the_same_ids(tmp_path, loras, records):
    jobs = f"  - {{prompt: a fox, seed: 1, loras: [{{path: {loras['a']}, scale: 0.6}}]}}\n  - {{prompt: a fox, seed: 2}}\n"
    assert run_cli("render", _manifest(tmp_path, jobs), "--out", tmp_path / "out", "--no-progress").exit_code == 0
    result = run_cli("render", tmp_path / "out" / records, "--out", tmp_path / "again", "--no-progress")
    assert result.exit_code == 0, result.output
    first, again = _by_scale(tmp_path / "out"), _by_scale(tmp_path / "again")
    assert {k: r["job_id"] for k, r in first.items()} == {k: r["job_id"] for k, r in again.items()}
    assert again[0.6]["frames_sha256"] == first[0.6]["frames_sha256"]


def test_the_gallery_names_each_jobs_loras(tmp_path, loras):
    from batchgen.outputs.gallery import gallery_items
    from batchgen.store.queue import Store

    jobs = f"  - {{prompt: fox, loras: [{{path: {loras['a']}, scale: 0.5, adapter_name: style}}]}}\n  - {{prompt: owl}}\n"
    out = tmp_path / "out"
    assert run_cli("render", _manifest(tmp_path, jobs), "--out", out, "--no-progress").exit_code == 0
    store = Store(out)
    try:
        shown = {item["prompt"]: item["checkpoint"] for item in gallery_items(store)}
    finally:
        store.close()
    assert shown == {"fox": "LoRA style@0.5", "owl": ""}
    assert "LoRA style@0.5" in (out / "index.html").read_text(encoding="utf-8")


def test_doctor_names_the_layers_of_a_lora_made_for_another_model(tmp_path, loras):
    good = _manifest(tmp_path, f"  - {{prompt: fox, loras: [{{path: {loras['a']}}}]}}\n")
    result = run_cli("doctor", "--manifest", good)
    assert "OK    LoRA layers" in result.output, result.output
    (tmp_path / "b").mkdir()
    bad = _manifest(tmp_path / "b", f"  - {{prompt: fox, loras: [{{path: {loras['alien']}}}]}}\n")
    result = run_cli("doctor", "--manifest", bad)
    assert result.exit_code == 1
    assert "FAIL  LoRA layers" in result.output and "attn1.to_qq" in result.output
