"""`batchgen doctor`: is this machine ready to render, and if not, what to do about it.

Every check is local and bounded: no network call (the hub cache is read from disk, the token from its
file or HF_TOKEN), and the only subprocesses (nvidia-smi, ffmpeg) run under a timeout.
"""

from __future__ import annotations

import importlib.util
import json
from importlib import metadata
import os
import shutil
import subprocess
from dataclasses import asdict
from pathlib import Path

from batchgen.engine import families, lora, profile_registry
from batchgen.engine.doctor_check import FAIL, OK, WARN, Check
from batchgen.engine.doctor_profiles import check_profiles
from batchgen.errors import StoreError
from batchgen.store.readonly import open_readonly

DEFAULT_MODEL = "genmo/mochi-1-preview"
DISK_FAIL_GIB = 1.0
DISK_WARN_GIB = 20.0
_TIMEOUT = 20

def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def _run(cmd: list[str]) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT)
    except (OSError, subprocess.SubprocessError):
        return None


# -- CUDA, driver, GPUs ------------------------------------------------------------------------------


def nvidia_smi() -> list[dict]:
    """GPUs as the driver sees them (empty when there is no nvidia-smi or it fails)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    done = _run([exe, "--query-gpu=name,driver_version,memory.total,memory.free", "--format=csv,noheader,nounits"])
    if done is None or done.returncode != 0:
        return []
    gpus = []
    for line in done.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4:
            gpus.append({"name": parts[0], "driver": parts[1], "total_mib": parts[2], "free_mib": parts[3]})
    return gpus


def check_cuda() -> tuple[Check, list[dict]]:
    """torch's CUDA build and the driver; returns the usable devices with their free memory."""
    try:
        import torch
    except Exception as exc:  # broken installs raise more than ImportError
        return Check("torch", FAIL, f"cannot import torch: {type(exc).__name__}: {exc}",
                     "install PyTorch for this machine from https://pytorch.org, then `pip install -e .`", True), []
    smi = nvidia_smi()
    driver = f", driver {smi[0]['driver']}" if smi else ""
    built = torch.version.cuda
    if not torch.cuda.is_available():
        if smi and not built:
            return Check("CUDA", WARN, f"torch {torch.__version__} is a CPU build, but the driver sees "
                         f"{len(smi)} GPU(s) ({smi[0]['name']}{driver})",
                         "install the CUDA build of torch (https://pytorch.org, e.g. `pip install torch "
                         "--index-url https://download.pytorch.org/whl/cu128`)"), []
        if smi:
            return Check("CUDA", WARN, f"torch {torch.__version__} is built for CUDA {built}, but no GPU is usable"
                         f"{driver}: the driver may be older than CUDA {built} needs, or CUDA_VISIBLE_DEVICES hides them",
                         "update the NVIDIA driver, or install a torch built for an older CUDA; check "
                         "CUDA_VISIBLE_DEVICES"), []
        return Check("CUDA", WARN, f"no CUDA device (torch {torch.__version__}): only `model: tiny` is practical "
                     "here; Mochi on the CPU takes hours per video",
                     "run on a machine with an NVIDIA GPU (24 GiB or more is comfortable, see the profile table)"), []
    devices = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        try:
            free, total = torch.cuda.mem_get_info(i)
        except Exception:  # a GPU in exclusive mode held by another process
            free, total = 0, props.total_memory
        devices.append({"index": i, "name": props.name, "capability": f"{props.major}.{props.minor}",
                        "bf16": props.major >= 8, "free": free, "total": total})
    return Check("CUDA", OK, f"torch {torch.__version__}, CUDA {built}{driver}, {len(devices)} GPU(s)"), devices


def check_gpus(devices: list[dict]) -> list[Check]:
    checks = []
    for d in devices:
        text = (f"cuda:{d['index']} {d['name']} (compute {d['capability']}): {_gib(d['free'])} free of "
                f"{_gib(d['total'])}")
        if not d["bf16"]:
            checks.append(Check(f"GPU {d['index']}", WARN, text + "; no native bf16, which Mochi computes in",
                                "use an Ampere or newer GPU (A100, A10, L4, RTX 30xx/40xx, H100)"))
        elif d["free"] < 0.5 * d["total"]:
            checks.append(Check(f"GPU {d['index']}", WARN, text + "; other processes hold the rest",
                                "see `nvidia-smi` for what holds it; batchgen's `auto` picks a profile for what is free"))
        else:
            checks.append(Check(f"GPU {d['index']}", OK, text))
    return checks


def _bnb_profiles(sep: str) -> str:
    return sep.join(profile_registry.names(needs_bitsandbytes=True))


def check_bitsandbytes(devices: list[dict]) -> tuple[Check, bool]:
    if importlib.util.find_spec("bitsandbytes") is None:
        if devices:
            return Check("bitsandbytes", WARN, f"not installed: the {_bnb_profiles(' and ')} profiles are unavailable",
                         "pip install -e \".[gpu]\"  (installs bitsandbytes)"), False
        return Check("bitsandbytes", OK, f"not installed; only the {_bnb_profiles('/')} profiles on a GPU need it"), False
    try:
        import bitsandbytes as bnb
    except Exception as exc:
        return Check("bitsandbytes", WARN, f"installed but cannot be imported: {type(exc).__name__}: {exc}",
                     "pip install --force-reinstall bitsandbytes (a build matching your CUDA)"), False
    version = getattr(bnb, "__version__", "?")
    if not devices:
        return Check("bitsandbytes", OK, f"{version} installed ({_bnb_profiles('/')} need a CUDA GPU to run)"), False
    try:
        import torch

        weights = torch.randn(64, 64, device="cuda:0", dtype=torch.bfloat16)
        packed, state = bnb.functional.quantize_4bit(weights, quant_type="nf4")
        back = bnb.functional.dequantize_4bit(packed, state)
        if not torch.isfinite(back).all():
            raise RuntimeError("4-bit round trip gave non-finite values")
    except Exception as exc:
        return Check("bitsandbytes", WARN, f"{version} installed but its CUDA kernels fail: {type(exc).__name__}: "
                     f"{str(exc).splitlines()[0] if str(exc) else ''}",
                     "pip install --force-reinstall bitsandbytes (a build matching torch's CUDA); "
                     "`python -m bitsandbytes` diagnoses it"), False
    return Check("bitsandbytes", OK, f"{version}, 4-bit quantization runs on cuda:0"), True


# -- ffmpeg ------------------------------------------------------------------------------------------


def check_lora() -> Check:
    problem = lora.backend_problem()
    if problem:
        return Check("LoRA", WARN, problem, 'pip install -e ".[lora]"  (installs peft)')
    return Check("LoRA", OK, f"peft {metadata.version('peft')}: manifests' loras: apply (profiles {', '.join(lora.LORA_PROFILES)})")


def check_ffmpeg() -> Check:
    fix = ("pip install --force-reinstall imageio-ffmpeg (its bundled ffmpeg has libx264), or point "
           "IMAGEIO_FFMPEG_EXE at an ffmpeg built with libx264")
    try:
        import imageio_ffmpeg
    except ImportError as exc:
        return Check("ffmpeg", FAIL, f"imageio-ffmpeg is not installed ({exc})",
                     "pip install -e .   (batchgen depends on imageio-ffmpeg, which bundles an ffmpeg with libx264)", True)
    try:
        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:
        return Check("ffmpeg", FAIL, f"no ffmpeg found: {exc}", fix, True)
    done = _run([exe, "-hide_banner", "-encoders"])
    if done is None or done.returncode != 0:
        return Check("ffmpeg", FAIL, f"{exe} does not run", fix, True)
    if "libx264" not in done.stdout:
        return Check("ffmpeg", FAIL, f"{exe} has no libx264 encoder (batchgen writes H.264)", fix, True)
    version = _run([exe, "-hide_banner", "-version"])
    first = version.stdout.splitlines()[0] if version and version.stdout else ""
    first = first.replace("ffmpeg version ", "").split(" Copyright")[0]
    return Check("ffmpeg", OK, f"{first} with libx264 ({exe})")


# -- Hugging Face --------------------------------------------------------------------------------------


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_login(model: str) -> Check:
    try:
        from huggingface_hub import get_token

        token = get_token()
    except Exception as exc:
        return Check("HF login", WARN, f"cannot read the Hugging Face token: {type(exc).__name__}: {exc}",
                     "pip install -U huggingface_hub")
    if token:
        source = "HF_TOKEN" if os.environ.get("HF_TOKEN") else "the saved login"
        return Check("HF login", OK, f"token found ({source}; not checked online)")
    if families.builtin(model) is not None or Path(model).expanduser().is_dir():
        return Check("HF login", OK, "not logged in; not needed for this model")
    return Check("HF login", WARN, f"not logged in: fine for public models such as {DEFAULT_MODEL}; gated or "
                 "private models fail to download", "hf auth login   (or set HF_TOKEN)")


def _missing_in_snapshot(folder: Path) -> list[str]:
    """What a pipeline folder lacks: component folders named in model_index.json, weight shards."""
    missing = []
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ["model_index.json"]
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list) or value[0] is None:
            continue
        part = folder / name
        if not part.is_dir() or not any(part.iterdir()):
            missing.append(f"{name}/")
            continue
        for shard_index in part.glob("*.index.json"):
            try:
                shards = set(json.loads(shard_index.read_text(encoding="utf-8"))["weight_map"].values())
            except (OSError, ValueError, KeyError):
                missing.append(str(shard_index.relative_to(folder)))
                continue
            missing += [f"{name}/{s}" for s in sorted(shards) if not (part / s).exists()]
    return missing


def _names_a_folder(model: str) -> bool:
    """A model name that can only be a path (./x, ../x, /x, ~/x, a/b/c): never looked up as a hub id."""
    return model.startswith((".", "/", "~")) or "\\" in model or model.count("/") > 1 or model.endswith("/")


def check_model(model: str, explicit: bool) -> Check:
    family = families.builtin(model)
    if family is not None:
        how = "built in memory" if model == family.tiny else "published-size random weights built on the GPU"
        return Check("model", OK, f"{model}: {how}, nothing to download ({family.title})")
    folder = Path(model).expanduser()
    if not folder.is_dir() and _names_a_folder(model):
        where = "a file, not a folder" if folder.exists() else "does not exist"
        return Check("model", FAIL if explicit else WARN, f"local folder {folder} {where}",
                     "give the folder a pipeline was saved to with save_pretrained (check the path), a hub id such "
                     "as genmo/mochi-1-preview, or tiny", explicit)
    if folder.is_dir():
        missing = _missing_in_snapshot(folder)
        if missing:
            return Check("model", FAIL, f"local folder {folder} is incomplete: missing {', '.join(missing[:5])}",
                         "save the pipeline again with save_pretrained, or copy the missing parts", True)
        return Check("model", OK, f"local folder {folder}")
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except Exception as exc:
        return Check("model", WARN, f"cannot read the Hugging Face cache: {exc}", "pip install -U huggingface_hub")
    try:
        found = try_to_load_from_cache(model, "model_index.json")
    except Exception as exc:  # e.g. an id that is not repo-shaped
        return Check("model", FAIL if explicit else WARN, f"'{model}' is not a hub id or folder: {exc}",
                     "give a hub id such as genmo/mochi-1-preview, a local folder, or tiny", explicit)
    cache = Path(constants.HF_HUB_CACHE)
    if isinstance(found, str):
        snapshot = Path(found).parent
        missing = _missing_in_snapshot(snapshot)
        if missing:
            blocking = explicit and _offline()
            return Check("model", FAIL if blocking else WARN,
                         f"{model} is partly cached ({snapshot.name[:12]}): missing {', '.join(missing[:5])}"
                         f"{' and more' if len(missing) > 5 else ''}",
                         f"hf download {model}   (resumes the download)", blocking)
        return Check("model", OK, f"{model} cached (snapshot {snapshot.name[:12]} in {cache})")
    space = ""
    probe = _existing(cache)
    if probe is not None:
        space = f"; {_gib(shutil.disk_usage(probe).free)} free under {cache}"
    if _offline():
        return Check("model", FAIL if explicit else WARN,
                     f"{model} is not in the Hugging Face cache and HF_HUB_OFFLINE is set{space}",
                     f"download it where there is network: hf download {model}  (or unset HF_HUB_OFFLINE)", explicit)
    return Check("model", WARN, f"{model} is not cached yet: the first render downloads it (tens of GB){space}",
                 f"hf download {model}   (ahead of time, so an overnight run starts rendering at once)")


# -- disk --------------------------------------------------------------------------------------------


def _existing(path: Path) -> Path | None:
    path = Path(path).expanduser().absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return None


def _remaining_need(out: Path) -> tuple[int, int] | None:
    """(jobs left, bytes they will likely take) from OUT's database, read-only; None without one."""
    try:
        with open_readonly(out, timeout=5) as store:
            left = store.remaining_count()
            paths = store.done_output_paths(limit=50)
    except StoreError:
        return None
    sizes = [(out / p).stat().st_size for p in paths if (out / p).exists()]
    average = sum(sizes) / len(sizes) if sizes else 0
    return left, int(left * average)


def _read_only_mount(path: Path) -> bool:
    """Whether `path` is on a filesystem mounted read-only: no permission change can make it writable."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (Windows): the permission check below still runs
        return False


def check_disk(out: Path | None) -> Check:
    target = Path(out) if out else Path.cwd()
    where = _existing(target)
    if where is None:
        return Check("disk", FAIL, f"no existing folder above {target}", "check the path", True)
    if _read_only_mount(where):
        return Check("disk", FAIL, f"{where} is on a read-only filesystem", "choose an --out on a writable disk, or "
                     "remount that filesystem read-write", True)
    if not os.access(where, os.W_OK):
        return Check("disk", FAIL, f"{where} is not writable by this user", "choose another --out, or fix its "
                     "permissions", True)
    free = shutil.disk_usage(where).free
    detail = f"{_gib(free)} free under {where}"
    need = _remaining_need(target) if out else None
    if need and need[1]:
        detail += f"; {need[0]} job(s) left need about {_gib(need[1])} at this batch's average video size"
        if free < 1.2 * need[1]:
            return Check("disk", WARN, detail, "free space, or move OUT to a bigger disk before the batch ends")
    if free < DISK_FAIL_GIB * 2**30:
        return Check("disk", FAIL, detail, "free space: a video is written in full before it is renamed into place",
                     True)
    if free < DISK_WARN_GIB * 2**30:
        return Check("disk", WARN, detail, "a long batch of full-size videos needs more; free space or use another disk")
    return Check("disk", OK, detail)


# -- all together ------------------------------------------------------------------------------------


def run_checks(out: Path | None = None, model: str | None = None) -> list[Check]:
    explicit = model is not None
    model = model or DEFAULT_MODEL
    cuda, devices = check_cuda()
    checks = [cuda, *check_gpus(devices)]
    bnb, bnb_ok = check_bitsandbytes(devices)
    checks += [check_profiles(devices, bnb_ok, model), bnb, check_ffmpeg(), check_lora(), check_login(model),
               check_model(model, explicit), check_disk(out)]
    return checks


def blocked(checks: list[Check]) -> bool:
    return any(c.status == FAIL and c.blocking for c in checks)


def format_checks(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{c.status:<4}  {c.name:<{width}}  {c.detail}")
        if c.fix and c.status != OK:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {c.fix}")
    return "\n".join(lines)


def as_json(checks: list[Check]) -> str:
    return json.dumps([asdict(c) for c in checks], indent=2)
