import json
import subprocess
from collections import namedtuple

import huggingface_hub
import pytest
from click.testing import CliRunner
from huggingface_hub import constants

from batchgen.engine import doctor, doctor_profiles
from batchgen.cli.app import cli
from fakerun import make_run

GiB = 2**30


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def by_name(checks):
    return {c.name: c for c in checks}


def test_doctor_on_this_machine_with_the_tiny_model(tmp_path):
    result = run("doctor", "--model", "tiny", "--out", tmp_path / "new" / "out")
    assert result.exit_code == 0, result.output
    for name in ("CUDA", "profiles", "bitsandbytes", "ffmpeg", "HF login", "model", "disk"):
        assert any(line.split()[1:2] == name.split()[:1] for line in result.output.splitlines()), name
    assert "tiny: built in memory" in result.output
    checks = json.loads(run("doctor", "--model", "tiny", "--json").output)
    assert {c["status"] for c in checks} <= {"OK", "WARN", "FAIL"}
    assert all(c["fix"] for c in checks if c["status"] != "OK")


def test_ffmpeg_without_libx264_blocks_rendering(monkeypatch):
    real = subprocess.run

    def fake(cmd, **kw):
        if "-encoders" in cmd:
            return subprocess.CompletedProcess(cmd, 0, " V..... libopenh264  OpenH264\n", "")
        return real(cmd, **kw)

    monkeypatch.setattr(doctor.subprocess, "run", fake)
    check = doctor.check_ffmpeg()
    assert check.status == "FAIL" and check.blocking and "libx264" in check.detail and "imageio-ffmpeg" in check.fix
    monkeypatch.setattr(doctor, "check_ffmpeg", lambda: check)
    result = run("doctor", "--model", "tiny")
    assert result.exit_code == 1
    assert "fix: pip install --force-reinstall imageio-ffmpeg" in result.output


def test_cpu_torch_on_a_gpu_machine_says_how_to_fix_it(monkeypatch):
    monkeypatch.setattr(doctor, "nvidia_smi", lambda: [{"name": "NVIDIA H100", "driver": "570.1", "total_mib": "81559",
                                                         "free_mib": "80000"}])
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    check, devices = doctor.check_cuda()
    assert devices == [] and check.status == "WARN"
    assert "CPU build" in check.detail and "NVIDIA H100" in check.detail and "570.1" in check.detail
    assert "download.pytorch.org" in check.fix


def gpu(free_gib, total_gib=80, capability=(9, 0)):
    return {"index": 0, "name": "GPU", "capability": "%d.%d" % capability, "bf16": capability[0] >= 8,
            "free": free_gib * GiB, "total": total_gib * GiB}


def test_profiles_that_fit_follow_free_memory():
    # Needs come from batchgen.engine.profiles' memory model, which is tuned as measurements come in.
    needs = doctor_profiles.profile_needs()
    longest, short = list(doctor_profiles.SIZES)
    resident = needs["resident"][longest]
    smallest = min(by[longest] for by in needs.values())
    assert smallest < resident and needs["resident"][short] < resident
    big = doctor_profiles.check_profiles([gpu(resident + 1)], bnb_ok=True)
    assert big.status == "OK" and "resident" in big.detail
    mid_free = (smallest + resident) / 2
    mid = doctor_profiles.check_profiles([gpu(mid_free)], bnb_ok=True)
    fastest = next(n for n, by in needs.items() if by[longest] <= mid_free)
    assert mid.status == "WARN" and f"Fastest that fits: {fastest}" in mid.detail
    # Not enough for resident at 163 frames (it may still fit the short size).
    assert mid.detail.split("resident ~")[1].split(";")[0].split(" GiB ")[1] in ("too big", "fits 19 frames")
    no_bnb = doctor_profiles.check_profiles([gpu(resident + 1)], bnb_ok=False)
    assert "needs bitsandbytes" in no_bnb.detail.split("nf4 ~")[1]
    tiny = doctor_profiles.check_profiles([gpu(smallest - 0.5)], bnb_ok=True)
    assert tiny.status == "WARN" and "num_frames" in tiny.fix


def test_old_gpus_and_busy_gpus_warn():
    checks = doctor.check_gpus([gpu(70, capability=(7, 0)), dict(gpu(10), index=1)])
    assert [c.status for c in checks] == ["WARN", "WARN"]
    assert "bf16" in checks[0].detail and "other processes" in checks[1].detail


def test_login(monkeypatch):
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert doctor.check_login("tiny").status == "OK"
    check = doctor.check_login("genmo/mochi-1-preview")
    assert check.status == "WARN" and "hf auth login" in check.fix
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_secret_value")
    check = doctor.check_login("genmo/mochi-1-preview")
    assert check.status == "OK" and "hf_secret_value" not in check.detail


def fake_snapshot(cache, repo="org/model", shards=("a.safetensors", "b.safetensors"), have=("a.safetensors", "b.safetensors")):
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snap = folder / "snapshots" / commit
    (snap / "transformer").mkdir(parents=True)
    (snap / "model_index.json").write_text(json.dumps({"_class_name": "MochiPipeline", "transformer": ["diffusers", "X"],
                                                       "vae": ["diffusers", "Y"], "tokenizer": [None, None]}))
    (snap / "transformer" / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {f"w{i}": s for i, s in enumerate(shards)}}))
    for s in have:
        (snap / "transformer" / s).write_bytes(b"x")
    (snap / "vae").mkdir()
    (snap / "vae" / "config.json").write_text("{}")
    return snap


def test_model_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = doctor.check_model("org/model", explicit=True)
    assert missing.status == "FAIL" and missing.blocking and "hf download org/model" in missing.fix
    assert doctor.check_model("org/model", explicit=False).status == "WARN"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    online = doctor.check_model("org/model", explicit=True)
    assert online.status == "WARN" and "not cached yet" in online.detail
    fake_snapshot(tmp_path / "hub", have=("a.safetensors",))
    partial = doctor.check_model("org/model", explicit=False)
    assert partial.status == "WARN" and "transformer/b.safetensors" in partial.detail
    shutil_snap = fake_snapshot(tmp_path / "hub2")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub2"))
    assert doctor.check_model("org/model", explicit=True).status == "OK"
    # A local pipeline folder is checked the same way.
    assert doctor.check_model(str(shutil_snap), explicit=True).status == "OK"
    (shutil_snap / "transformer" / "b.safetensors").unlink()
    local = doctor.check_model(str(shutil_snap), explicit=True)
    assert local.status == "FAIL" and "b.safetensors" in local.detail


Usage = namedtuple("Usage", "total used free")


def test_disk(tmp_path, monkeypatch):
    out = tmp_path / "out"
    store = make_run(out, [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c", "status": "pending"},
                           {"prompt": "d", "status": "pending"}])
    store.close()
    assert doctor.check_disk(out).status == "OK"
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda p: Usage(100 * GiB, 100 * GiB - 500 * 2**20, 500 * 2**20))
    low = doctor.check_disk(tmp_path / "elsewhere")
    assert low.status == "FAIL" and low.blocking and "free space" in low.fix
    # The batch's own videos tell how much its remaining jobs need.
    avg = sum(p.stat().st_size for p in (out / "videos").iterdir()) / 2
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda p: Usage(100 * GiB, 0, int(avg)))
    tight = doctor.check_disk(out)
    assert tight.status == "WARN" and "2 job(s) left" in tight.detail


def test_doctor_never_touches_the_network(monkeypatch, tmp_path):
    import socket

    def refuse(*a, **k):
        raise AssertionError("doctor opened a network connection")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    checks = by_name(doctor.run_checks(tmp_path, "genmo/mochi-1-preview"))
    assert checks["model"].status == "WARN"


@pytest.mark.parametrize("bad", ["not a repo id!!", "../nowhere/at/all"])
def test_odd_model_names_do_not_crash(bad):
    check = doctor.check_model(bad, explicit=True)
    assert check.status in ("WARN", "FAIL") and check.fix


def test_missing_imageio_ffmpeg_blocks_rendering(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import now raises ImportError
    check = doctor.check_ffmpeg()
    assert check.status == "FAIL" and check.blocking and "pip install -e ." in check.fix


def test_fp8_fast_is_listed_only_where_fp8_tensor_cores_exist():
    hopper = doctor_profiles.check_profiles([gpu(70, capability=(9, 0))], bnb_ok=True)
    assert "fp8-fast ~" in hopper.detail
    ampere = doctor_profiles.check_profiles([gpu(70, capability=(8, 0))], bnb_ok=True)
    assert "fp8-fast needs an Ada or Hopper GPU" in ampere.detail and "fp8-fast ~" not in ampere.detail
    assert "resident ~" in ampere.detail


def test_a_missing_model_folder_is_named_as_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("doctor", "--model", "./missing")
    assert result.exit_code == 1, result.output
    line = next(l for l in result.output.splitlines() if l.split()[1:2] == ["model"])
    assert "FAIL" in line and "missing does not exist" in line and "hub id" not in line.split("fix:")[0], result.output
    (tmp_path / "afile").write_text("x")
    assert "a file, not a folder" in doctor.check_model("./afile", explicit=True).detail
    # A hub id is still looked up in the cache, not taken for a folder.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert "does not exist" not in doctor.check_model("org/model", explicit=True).detail


def test_a_read_only_mount_is_called_read_only(tmp_path, monkeypatch):
    import os
    import types

    real = os.statvfs

    def read_only(path):
        st = real(path)
        fields = {k: getattr(st, k) for k in dir(st) if k.startswith("f_")}
        return types.SimpleNamespace(**dict(fields, f_flag=st.f_flag | os.ST_RDONLY))

    assert doctor.check_disk(tmp_path).status == "OK"
    monkeypatch.setattr(doctor.os, "statvfs", read_only)
    check = doctor.check_disk(tmp_path / "out")
    assert check.status == "FAIL" and check.blocking and "read-only" in check.detail, check
    assert "permissions" not in check.fix and "writable" in check.fix
