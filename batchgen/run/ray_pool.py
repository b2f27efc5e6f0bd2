"""Many hosts through Ray: one actor per GPU holding a pipeline, this process the single writer.

The driver (this process) keeps OUT/batchgen.db, the videos and the index, exactly as a local run does:
actors only turn a job into frames, and frames come back through Ray's object store, so no node needs
to reach OUT. Ray's own fault tolerance covers lost nodes: actors restart (`max_restarts`) and their
calls are retried (`max_task_retries`); a job whose call fails for good is recorded as failed, and a
driver that dies leaves `running` jobs that the next run takes back, as on one host.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from batchgen.errors import BatchgenError

MAX_TASK_RETRIES = 3


def _ray():
    try:
        import ray
    except ImportError:
        raise BatchgenError("--ray needs Ray: pip install 'batchgen[ray]'") from None
    return ray


class _RenderActor:
    """Lives on a Ray worker: its own Renderer, loaded once, reused for every job sent to it."""

    def __init__(self, config: dict):
        from batchgen.engine.environment import quiet_library_logs
        from batchgen.engine.renderer import Renderer

        quiet_library_logs()
        self.renderer = Renderer.from_config(config, cache_dir=None)

    def encode(self, texts: list[str]) -> None:
        self.renderer.encode(texts)

    def describe(self) -> dict:
        from batchgen.engine import environment
        from batchgen.engine import fingerprint

        loaded = self.renderer.load()
        return {
            "revision": loaded.revision,
            "max_sequence_length": loaded.max_sequence_length,
            "device_name": environment.device_name(self.renderer.device),
            "fingerprint": fingerprint.collect(self.renderer),
            # What this actor renders at under its own settings (deterministic mode is not part of it).
            "precision": self.renderer.precision,
        }

    def render(self, job: dict):
        from batchgen import faults
        from batchgen.job import Job

        faults.point("actor_render")
        rendered = self.renderer.render(Job.from_dict(job))
        # Recollected after the denoiser is set up: what the frames were really made with.
        from batchgen.engine import fingerprint

        return rendered, fingerprint.collect(self.renderer)


@dataclass
class _Loaded:
    revision: str
    max_sequence_length: int
    pipe: object = None


class RemoteRenderer:
    """Stands in for a local Renderer inside the driver's loop; each render is a call to one actor."""

    def __init__(self, actor, config: dict, description: dict):
        self.actor = actor
        self.model = config["model"]
        self.revision = config["revision"]
        self.profile = config["profile"]
        self.quality = config["quality"]
        self.approximate = config.get("approximate")
        self.device = config["device"]
        self.device_label = description["device_name"]
        self.remote_fingerprint = description["fingerprint"]
        self._loaded = _Loaded(description["revision"], description["max_sequence_length"])

    def load(self) -> _Loaded:
        return self._loaded

    def encode(self, texts) -> None:
        _ray().get(self.actor.encode.remote(list(texts)))

    def render(self, job, on_step=None):
        rendered, self.remote_fingerprint = _ray().get(self.actor.render.remote(job.to_dict()))
        return rendered


def forwarded_env(environ) -> dict[str, str]:
    """What Ray actors get from this process's environment, which actors on another host do not inherit:
    the allocator setting and batchgen's own (BATCHGEN_INT8_KERNEL decides pixels and job ids). Fault
    injection stays with the tests that aim it."""
    return {k: v for k, v in environ.items()
            if k == "PYTORCH_CUDA_ALLOC_CONF" or (k.startswith("BATCHGEN_") and not k.startswith("BATCHGEN_FAULT"))}


class RayRunner:
    """Render the pending jobs of this pipeline on a Ray cluster; this process writes everything."""

    def __init__(self, address: str, actors: int | None):
        self.address, self.actors = address, actors
        self.renderers: list[RemoteRenderer] = []

    def notes(self) -> list[str]:
        return [f"Ray at {self.address}"]

    def start(self, ctx) -> None:
        # Ray starts processes of its own here: a signal is acted on once they are up, so that
        # ray.shutdown() takes them down, instead of ending this process under them.
        with ctx.signals.acting():
            self._start(ctx)
            ctx.signals.check()

    def _start(self, ctx) -> None:
        ray = _ray()
        connect(ray, self.address)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        count = self.actors or gpus or 1
        choice, manifest = ctx.choice, ctx.manifest
        config = {"model": manifest.model, "revision": manifest.revision, "profile": choice.name if gpus else "cpu",
                  "quality": manifest.quality, "approximate": manifest.approximate,
                  "device": "cuda" if gpus else "cpu"}
        if not gpus and choice.name != "cpu":
            raise BatchgenError(
                f"The Ray cluster has no GPU, but this batch renders with profile '{choice.name}' ({ctx.precision}); "
                "its job ids would not match CPU renders. Use a cluster with GPUs, or render with --profile cpu."
            )
        remote_cls = ray.remote(
            num_gpus=1 if gpus else 0, num_cpus=1, max_restarts=-1, max_task_retries=MAX_TASK_RETRIES
        )(_RenderActor)
        handles = [remote_cls.remote(config) for _ in range(count)]
        ctx.log(f"batchgen: {count} Ray actor(s) on {'GPUs' if gpus else 'CPUs'} at {self.address}")
        texts = ctx.store.pending_texts(model=ctx.model, precision=ctx.precision)
        descriptions = ray.get([h.describe.remote() for h in handles])
        expected = ctx.precision.removesuffix("+deterministic")
        for d in descriptions:
            if d["precision"] != expected:
                raise BatchgenError(
                    f"A Ray actor renders at precision {d['precision']}, this batch at {expected}: its settings "
                    "differ from this machine's (BATCHGEN_* variables or library versions); its frames would get "
                    "other ids."
                )
        ctx.progress.phase(f"encoding {len(texts)} text(s) on {count} actor(s)")
        ray.get([h.encode.remote(texts) for h in handles])
        self.renderers = [RemoteRenderer(h, config, d) for h, d in zip(handles, descriptions)]

    def run(self, ctx) -> None:
        from batchgen.run.job_loop import work_loop
        from batchgen.store.queue import Store

        errors: list[BaseException] = []
        stop = threading.Event()

        def drive(renderer, n):
            # One thread per actor, each with its own database connection: SQLite serialises the writes.
            own = Store(ctx.out)
            try:
                work_loop(ctx.out, own, renderer, model=ctx.model, precision=ctx.precision, summary=ctx.summary,
                          log=ctx.log, bar=ctx.progress, worker=f"ray-actor-{n}", stop=stop,
                          write_behind=False)  # one driver thread per actor already overlaps writing with rendering
            except BaseException as exc:  # surfaced in the main thread
                errors.append(exc)
            finally:
                own.close()

        threads = [threading.Thread(target=drive, args=(r, n), daemon=True) for n, r in enumerate(self.renderers)]
        try:
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                if ctx.signals.received is not None:
                    # Calls in flight cannot be taken back from the actors: the supervisor puts their jobs
                    # back to pending, and a half-written file is hidden and swept by the next run.
                    stop.set()
                    ctx.signals.check()
                for t in threads:
                    t.join(0.2)
        finally:
            stop.set()
            _ray().shutdown()
        if errors:
            raise errors[0]


def connect(ray, address: str) -> None:
    init = {"include_dashboard": False, "log_to_driver": False, "ignore_reinit_error": True}
    forwarded = forwarded_env(os.environ)
    if forwarded:
        init["runtime_env"] = {"env_vars": forwarded}
    if address == "local":
        ray.init(**init)
        return
    try:
        ray.init(address=address, **init)
    except (ConnectionError, RuntimeError) as exc:
        raise BatchgenError(f"Could not reach the Ray cluster at '{address}': {exc}. Start it with `ray start "
                            "--head`, or give its address.") from exc
