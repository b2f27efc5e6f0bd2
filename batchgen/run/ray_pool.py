"""Many hosts through Ray: one actor per GPU holding a pipeline, this process the single writer.

The driver (this process) keeps OUT/batchgen.db, the videos and the index, exactly as a local run does:
actors only turn a job into frames, and frames come back through Ray's object store, so no node needs
to reach OUT. Ray's own fault tolerance covers lost nodes: actors restart (`max_restarts`) and their
calls are retried (`max_task_retries`); a job whose call fails for good is recorded as failed, and a
driver that dies leaves `running` jobs that the next run takes back, as on one host.
"""

from __future__ import annotations

import os
import signal
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


def run_on_ray(manifest, out, store, choice, precision: str, pending: int, summary, address: str,
               actors: int | None, progress: bool, log):
    """Render the pending jobs of this pipeline on a Ray cluster; this process writes everything."""
    from batchgen.run.supervisor import Interrupted, _SignalGuard, work_loop
    from batchgen.store.queue import Store

    ray = _ray()
    init = {"include_dashboard": False, "log_to_driver": False, "ignore_reinit_error": True}
    forwarded = forwarded_env(os.environ)
    if forwarded:
        init["runtime_env"] = {"env_vars": forwarded}
    if address == "local":
        ray.init(**init)
    else:
        try:
            ray.init(address=address, **init)
        except (ConnectionError, RuntimeError) as exc:
            raise BatchgenError(f"Could not reach the Ray cluster at '{address}': {exc}. Start it with `ray start --head`, or give its address.") from exc
    gpus = int(ray.cluster_resources().get("GPU", 0))
    count = actors or gpus or 1
    device = "cuda" if gpus else "cpu"
    config = {"model": manifest.model, "revision": manifest.revision, "profile": choice.name if gpus else "cpu",
              "quality": manifest.quality, "approximate": manifest.approximate, "device": device}
    if not gpus and choice.name != "cpu":
        raise BatchgenError(
            f"The Ray cluster has no GPU, but this batch renders with profile '{choice.name}' ({precision}); "
            "its job ids would not match CPU renders. Use a cluster with GPUs, or render with --profile cpu."
        )
    remote_cls = ray.remote(
        num_gpus=1 if gpus else 0, num_cpus=1, max_restarts=-1, max_task_retries=MAX_TASK_RETRIES
    )(_RenderActor)
    handles = [remote_cls.remote(config) for _ in range(count)]
    log(f"batchgen: {count} Ray actor(s) on {'GPUs' if gpus else 'CPUs'} at {address}")
    texts = store.pending_texts(model=manifest.model, precision=precision)
    descriptions = ray.get([h.describe.remote() for h in handles])
    expected = precision.removesuffix("+deterministic")
    for d in descriptions:
        if d["precision"] != expected:
            raise BatchgenError(
                f"A Ray actor renders at precision {d['precision']}, this batch at {expected}: its settings differ "
                "from this machine's (BATCHGEN_* variables or library versions); its frames would get other ids."
            )
    ray.get([h.encode.remote(texts) for h in handles])
    renderers = [RemoteRenderer(h, config, d) for h, d in zip(handles, descriptions)]

    from batchgen.run.progress import BatchProgress, pending_shapes

    bar = BatchProgress(pending, progress, pending_shapes(store, manifest.model, precision))
    errors: list[BaseException] = []
    stop = threading.Event()

    def drive(renderer, n):
        # One thread per actor, each with its own database connection: SQLite serialises the writes.
        own = Store(out)
        try:
            work_loop(out, own, renderer, model=manifest.model, precision=precision, summary=summary, log=log,
                      bar=bar, worker=f"ray-actor-{n}", stop=stop,
                      write_behind=False)  # one driver thread per actor already overlaps writing with rendering
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)
        finally:
            own.close()

    threads = [threading.Thread(target=drive, args=(r, n), daemon=True) for n, r in enumerate(renderers)]
    try:
        with _SignalGuard():
            try:
                for t in threads:
                    t.start()
                for t in threads:
                    while t.is_alive():
                        t.join(0.5)
            except KeyboardInterrupt:
                summary.interrupted_by = signal.SIGINT
            except Interrupted as exc:
                summary.interrupted_by = exc.signum
            if summary.interrupted_by is not None:
                # Calls in flight cannot be taken back from the actors: their jobs go back to pending now,
                # and the threads die with this process (a half-written file is hidden and swept next run).
                stop.set()
                store.reset_running()
    finally:
        bar.close()
        ray.shutdown()
        from batchgen.outputs import gallery
        from batchgen.outputs import metadata_index as index

        index.rebuild(out, store)
        gallery.maybe_write_gallery(out, store, force=True)
    if errors and summary.interrupted_by is None:
        raise errors[0]
    return summary
