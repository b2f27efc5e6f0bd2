"""Crash trials in real processes, cheaply: a warm server forks one render process per trial.

Starting `python -m batchgen` costs seconds of imports, which would make a few dozen kill-and-resume
trials take many minutes. The server (`python tests/crash_harness.py --serve`) imports batchgen, torch
and diffusers once, without running any torch operation (so no thread pool exists to break in a fork),
then forks a fresh process per request that runs the real CLI. That child is a real process with its
own pid, SQLite connection and ffmpeg; it is killed with a real SIGKILL, either by itself at a named
`BATCHGEN_FAULT` point or by the server after a seeded random delay.

After every trial the server SIGKILLs the child's whole process group as well, as a scheduler or
systemd stopping a job's cgroup would: an ffmpeg orphaned mid-encode would otherwise finish its hidden
temporary file a few milliseconds after the next run's clean-up had already looked.

`Lab` is the client; `check_after_kill` and `check_after_resume` state what must hold.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Every fault point in batchgen, in the order a job passes them; `metadata.jsonl_synced` is the atomic
# index rewrite (written and synced, not yet renamed) at the start (1st) and end (2nd) of a run.
JOB_POINTS = [
    "claimed",
    "video_writing",
    "video_written",
    "publish_synced",
    "video_published",
    "marked_done",
    "index_appended",
    "indexed",
]
RUN_POINTS = ["metadata.jsonl_synced"]


# -- the server --------------------------------------------------------------------------------------
def _serve() -> None:
    # The expensive imports, done once; importing runs no torch operation, so forking stays safe.
    import batchgen.cli.app as cli
    import batchgen.engine.fingerprint  # noqa: F401
    import batchgen.engine.renderer  # noqa: F401
    import batchgen.run.supervisor  # noqa: F401
    import imageio_ffmpeg  # noqa: F401
    import torch  # noqa: F401
    import tqdm  # noqa: F401
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel  # noqa: F401
    from diffusers.models.autoencoders.autoencoder_kl_cogvideox import CogVideoXCausalConv3d  # noqa: F401
    from transformers import T5Config, T5EncoderModel, T5Tokenizer  # noqa: F401

    reply = sys.stdout
    for line in sys.stdin:
        req = json.loads(line)
        reply.flush()
        sys.stderr.flush()
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child(cli, req)
        deadline = start + req["kill_after"] if req.get("kill_after") is not None else None
        status = None
        while status is None:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
            elif deadline is not None and time.monotonic() >= deadline:
                _killpg(pid)
                deadline = None
            else:
                time.sleep(0.002)
        _killpg(pid)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        reply.write(json.dumps({"returncode": code, "seconds": time.monotonic() - start}) + "\n")
        reply.flush()


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _child(cli, req: dict) -> None:
    code = 1
    try:
        os.setpgid(0, 0)
        log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.environ.pop("BATCHGEN_FAULT", None)
        os.environ.update(req.get("env") or {})
        try:
            cli.cli.main(args=req["argv"], prog_name="batchgen", standalone_mode=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


# -- the client --------------------------------------------------------------------------------------
class Lab:
    """One warm server; `render` runs `batchgen render` in a fresh forked process."""

    def __init__(self):
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        env.pop("BATCHGEN_FAULT", None)
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def render(self, manifest: Path, out: Path, *, fault: str | None = None, kill_after: float | None = None) -> tuple[int, str, float]:
        """(exit status, negative for a signal; the process's output; seconds)."""
        log = out.parent / f"{out.name}.log"
        log.unlink(missing_ok=True)
        req = {
            "argv": ["render", str(manifest), "--out", str(out), "--no-progress"],
            "env": {"BATCHGEN_FAULT": fault} if fault else {},
            "kill_after": kill_after,
            "log": str(log),
        }
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the crash-trial server died")
        answer = json.loads(line)
        return answer["returncode"], log.read_text(errors="replace") if log.exists() else "", answer["seconds"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


# -- what must hold ----------------------------------------------------------------------------------
@dataclass
class State:
    """What the database says right after a kill: done jobs with (sha256, finished_at, mtime)."""

    done: dict = field(default_factory=dict)


def _db(out: Path):
    return sqlite3.connect(out / "batchgen.db")


def check_after_kill(out: Path) -> State:
    """What holds at every instant, even straight after a SIGKILL."""
    state = State()
    if not (out / "batchgen.db").exists():
        return state
    conn = _db(out)
    try:
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
        for jid, sha, fin, path in conn.execute(
            "select job_id, sha256, finished_at, output_path from jobs where status='done'"
        ).fetchall():
            file = out / path
            # Marked done only after the video was complete and in place.
            assert file.is_file(), f"job {jid} is done but {file} is missing"
            assert _sha(file) == sha, f"job {jid}: {file} does not match its checksum"
            state.done[jid] = (sha, fin, file.stat().st_mtime_ns)
    finally:
        conn.close()
    return state


def check_after_resume(out: Path, before: State, reference: dict[str, str]) -> None:
    """After a clean resume: every job done exactly once, every file whole, nothing temporary left."""
    from batchgen.outputs.metadata_index import read as read_index

    conn = _db(out)
    try:
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
        rows = conn.execute("select job_id, status, sha256, finished_at, output_path from jobs").fetchall()
    finally:
        conn.close()
    assert {r[1] for r in rows} == {"done"}, rows
    assert {r[0] for r in rows} == set(reference), "jobs differ from the reference run"
    for jid, _status, sha, fin, path in rows:
        # Same bytes as an uninterrupted run: the file decodes (the reference decoded) and is whole.
        assert sha == reference[jid], f"job {jid}: checksum differs from the uninterrupted run"
        assert _sha(out / path) == sha, f"job {jid}: {path} does not match its checksum"
        if jid in before.done:
            # Finished before the kill: never rendered again, never touched.
            assert (sha, fin, (out / path).stat().st_mtime_ns) == before.done[jid], f"job {jid} was rendered twice"
    index = read_index(out)
    assert sorted(r["job_id"] for r in index) == sorted(reference), "index rows != jobs (missing or duplicated)"
    for row in index:
        assert row["sha256"] == reference[row["job_id"]]
    leftovers = [
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and "cache" not in p.relative_to(out).parts
        and (p.name.startswith(".") or "partial" in p.name or p.name.endswith((".tmp", "-wal", "-journal")))
    ]
    assert not leftovers, f"temporary files left among the outputs: {leftovers}"
    videos = sorted(p.name for p in (out / "videos").iterdir())
    assert len(videos) == len(reference) and all(v.endswith(".mp4") for v in videos), videos


def _sha(path: Path) -> str:
    from batchgen.outputs.atomic import sha256_file

    return sha256_file(path)


def reference_run(lab: Lab, manifest: Path, out: Path) -> tuple[dict[str, str], float]:
    """An uninterrupted run: the checksum of every job, and how long a whole run takes."""
    from batchgen.outputs.video import read_mp4

    code, output, seconds = lab.render(manifest, out)
    assert code == 0, output
    conn = _db(out)
    rows = conn.execute("select job_id, sha256, output_path, num_frames, height, width from jobs").fetchall()
    conn.close()
    for _jid, _sha256, path, frames, height, width in rows:
        assert read_mp4(out / path).shape == (frames, height, width, 3)
    return {jid: sha for jid, sha, *_ in rows}, seconds


@dataclass
class Trial:
    moment: str  # "indexed:3" or "random 1.234 s"
    killed: bool  # False when the run finished before the moment came
    done_at_kill: int
    resume_seconds: float  # a whole run when done_at_kill is 0: the time scale of random kills


def crash_trial(lab: Lab, manifest: Path, out: Path, reference: dict[str, str], *, fault=None, kill_after=None) -> Trial:
    """Kill a fresh batch at one moment, resume it, and check everything."""
    moment = fault or f"random {kill_after:.3f} s"
    code, output, _ = lab.render(manifest, out, fault=fault, kill_after=kill_after)
    killed = code == -signal.SIGKILL
    assert killed or code == 0, f"{moment}: exit {code}\n{output}"
    before = check_after_kill(out)
    code, output, seconds = lab.render(manifest, out)
    assert code == 0, f"{moment}: resume exit {code}\n{output}"
    check_after_resume(out, before, reference)
    return Trial(moment, killed, len(before.done), seconds)


def random_trials(lab: Lab, manifest: Path, folder: Path, reference: dict[str, str], seconds: float, *, count: int, seed: int) -> list[Trial]:
    """SIGKILL at seeded random fractions of a run. The time scale follows the machine: it is the median
    of the whole runs seen so far (the reference, and each resume that started from nothing), so a
    loaded machine still gets its kills spread over the run instead of bunched at its start."""
    rng = random.Random(seed)
    whole = [seconds]
    trials = []
    for n in range(count):
        fraction = rng.uniform(0.02, 0.98)
        delay = fraction * statistics.median(whole)
        trial = crash_trial(lab, manifest, folder / f"random{n}", reference, kill_after=delay)
        trial.moment = f"random {fraction:.2f} of a run ({delay:.2f} s)"
        if trial.done_at_kill == 0:
            whole.append(trial.resume_seconds)
        trials.append(trial)
    return trials


def named_moments(jobs: int, *, middle: bool = False) -> list[str]:
    """Every job fault point at the first and the last job (and a middle one), and both index rewrites."""
    ordinals = sorted({1, jobs} | ({(jobs + 1) // 2 + 1} if middle and jobs > 2 else set()))
    return [f"{p}:{n}" for p in JOB_POINTS for n in ordinals] + [f"{p}:{n}" for p in RUN_POINTS for n in (1, 2)]


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    _serve()
