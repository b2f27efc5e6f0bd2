"""Many hosts through Ray: one actor per GPU holding a pipeline, this process the single writer.

The driver (this process) keeps OUT/batchgen.db, the videos and the index, exactly as a local run does:
actors turn a job into an encoded MP4 and send its bytes (with the frames' hash) through Ray's object
store, so no node needs to reach OUT and the driver never moves or encodes frames. An actor that crashes
is restarted by Ray and its call sent again; an actor whose node is lost is dropped and its job goes to a
surviving actor (RemoteRenderer); a job whose call fails for good is recorded as failed. Actors are
never detached, so they die with a driver that dies; its `running` jobs are taken back by the next run,
as on one host. Joining the cluster (token authentication, loopback addresses) is ray_connect's.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

from batchgen.errors import BatchgenError
from batchgen.run.ray_connect import connect, load_ray

MAX_TASK_RETRIES = 3


_ray = load_ray


class _RenderActor:
    """Lives on a Ray worker: its own Renderer, loaded once, reused for every job sent to it."""

    def __init__(self, config: dict):
        from batchgen.engine.environment import quiet_library_logs
        from batchgen.engine.renderer import Renderer

        quiet_library_logs()
        self.renderer = Renderer.from_config(config, cache_dir=None)

    def encode(self, texts: list[str]) -> None:
        self.renderer.encode(texts)

    def ping(self) -> bool:
        return True

    def describe(self) -> dict:
        import ray

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
            # Where it runs, to tell a lost node from a crashed actor and to name the node in the log.
            "node_id": ray.get_runtime_context().get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),
        }

    def render(self, job: dict):
        from batchgen import faults
        from batchgen.job import Job

        faults.point("actor_render")
        job = Job.from_dict(job)
        rendered = self.renderer.render(job)
        # Recollected after the denoiser is set up: what the frames were really made with.
        from batchgen.engine import fingerprint

        return EncodedRender(rendered, job.fps), fingerprint.collect(self.renderer)


class EncodedRender:
    """A render as it leaves an actor: the MP4's bytes instead of the frames (a 163-frame 480x848 video
    is ~200 MB of frames, its MP4 a few MB), so one driver keeps up with many nodes. The driver writes
    the bytes (outputs.video.publish_video); every other field of the Rendered is kept for the bookkeeping."""

    frames = None

    def __init__(self, rendered, fps: int):
        import dataclasses

        from batchgen.outputs.video import encode_mp4

        for field in dataclasses.fields(rendered):
            if field.name != "frames":
                setattr(self, field.name, getattr(rendered, field.name))
        self.frames_sha256 = rendered.frames_sha256
        self.encoded_mp4 = encode_mp4(rendered.frames, fps)


@dataclass
class _Loaded:
    revision: str
    max_sequence_length: int
    pipe: object = None


class _Actors:
    """The actors of one run, shared by their RemoteRenderers: which still have a live node."""

    def __init__(self, handles, descriptions, log):
        self.live = list(zip(handles, descriptions))
        self.log = log
        self._lock = threading.Lock()
        self._turn = 0

    def node_alive(self, node_id: str) -> bool:
        return any(n["NodeID"] == node_id and n["Alive"] for n in _ray().nodes())

    def lose(self, handle) -> None:
        """Drop an actor whose node died; Ray would otherwise restart it, and its retried calls wait for a
        free GPU elsewhere (forever, when every GPU already holds an actor)."""
        with self._lock:
            self.live = [(h, d) for h, d in self.live if h is not handle]
        try:
            _ray().kill(handle, no_restart=True)
        except Exception:  # already gone with its node
            pass

    def survivor(self):
        """A live actor (in turn, so the lost actors' threads spread over the survivors), or None."""
        with self._lock:
            if not self.live:
                return None
            self._turn += 1
            return self.live[self._turn % len(self.live)]


class RemoteRenderer:
    """Stands in for a local Renderer inside the driver's loop; each render is a call to one actor.

    An actor that crashes on a live node is restarted by Ray and its call sent again (up to
    MAX_TASK_RETRIES times: a job that kills every actor it meets fails). An actor whose node is lost is
    dropped; its job in flight, and every later job of this renderer's thread, go to a surviving actor.
    """

    def __init__(self, actor, config: dict, description: dict, actors: _Actors | None = None):
        self.model = config["model"]
        self.revision = config["revision"]
        self.profile = config["profile"]
        self.quality = config["quality"]
        self.approximate = config.get("approximate")
        self.device = config["device"]
        self.actors = actors or _Actors([actor], [description], lambda line: None)
        self._use(actor, description)
        self._loaded = _Loaded(description["revision"], description["max_sequence_length"])

    @classmethod
    def for_actors(cls, handles, config: dict, descriptions, log) -> list["RemoteRenderer"]:
        actors = _Actors(handles, descriptions, log)
        return [cls(h, config, d, actors) for h, d in zip(handles, descriptions)]

    def _use(self, actor, description: dict) -> None:
        self.actor = actor
        self.node_id = description.get("node_id")
        self.device_label = description["device_name"]
        self.remote_fingerprint = description["fingerprint"]

    def load(self) -> _Loaded:
        return self._loaded

    def encode(self, texts) -> None:
        _ray().get(self.actor.encode.remote(list(texts)))

    def render(self, job, on_step=None):
        ray = _ray()
        crashes = 0
        while True:
            try:
                rendered, self.remote_fingerprint = ray.get(self.actor.render.remote(job.to_dict()))
                return rendered
            except ray.exceptions.RayActorError as exc:
                if self.node_id is None or self.actors.node_alive(self.node_id):
                    crashes += 1
                    if crashes > MAX_TASK_RETRIES:
                        raise
                    self._wait_restarted()
                    continue
                self._move_to_survivor(job, exc)

    def _wait_restarted(self) -> None:
        """Ray restarts a crashed actor on its node (loading its pipeline again); until it is back, calls
        fail at once as unavailable, which must not use up the job's retries."""
        ray = _ray()
        while True:
            try:
                ray.get(self.actor.ping.remote())
                return
            except ray.exceptions.ActorUnavailableError:
                if self.node_id is not None and not self.actors.node_alive(self.node_id):
                    return  # its node went meanwhile: the next call tells, and the job moves on
                time.sleep(0.5)
            except ray.exceptions.RayActorError:
                return  # dead for good, or its node went: the next call tells, and counts

    def _move_to_survivor(self, job, exc: BaseException) -> None:
        lost_node, lost_ip = self.node_id, "?"
        for handle, description in list(self.actors.live):
            if handle is self.actor:
                lost_ip = description.get("node_ip", "?")
        self.actors.lose(self.actor)
        survivor = self.actors.survivor()
        if survivor is None:
            raise BatchgenError(f"Ray node {lost_node} ({lost_ip}) was lost with job {job.job_id} in flight, and no "
                                "Ray actor is left on a live node. Run the same command again once the cluster "
                                "has its nodes back.") from exc
        self._use(*survivor)
        self.actors.log(f"batchgen: Ray node {lost_node} ({lost_ip}) was lost with job {job.job_id} in flight; "
                        f"it goes back to the queue of a surviving actor on node {self.node_id}")


def forwarded_env(environ) -> dict[str, str]:
    """What Ray actors get from this process's environment, which actors on another host do not inherit:
    the allocator setting and batchgen's own (BATCHGEN_INT8_KERNEL and BATCHGEN_FP8_ATTN_RECIPE decide
    pixels and job ids). Fault injection stays with the tests that aim it."""
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
        init = {"include_dashboard": False, "log_to_driver": False, "ignore_reinit_error": True}
        forwarded = forwarded_env(os.environ)
        if forwarded:
            init["runtime_env"] = {"env_vars": forwarded}
        connect(self.address, init)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        count = self.actors or gpus or 1
        choice, manifest = ctx.choice, ctx.manifest
        config = {"model": manifest.model, "revision": manifest.revision, "profile": choice.name if gpus else "cpu",
                  "quality": manifest.quality, "approximate": manifest.approximate,
                  "device": "cuda" if gpus else "cpu", "checkpoint_fields": manifest.checkpoint}
        if not gpus and choice.name != "cpu":
            raise BatchgenError(
                f"The Ray cluster has no GPU, but this batch renders with profile '{choice.name}' ({ctx.precision}); "
                "its job ids would not match CPU renders. Use a cluster with GPUs, or render with --profile cpu."
            )
        # Calls are retried by RemoteRenderer, not by Ray: Ray would wait for a lost node's actor to restart.
        remote_cls = ray.remote(num_gpus=1 if gpus else 0, num_cpus=1, max_restarts=-1,
                                max_task_retries=0)(_RenderActor)
        handles = [remote_cls.remote(config) for _ in range(count)]
        ctx.log(f"batchgen: {count} Ray actor(s) on {'GPUs' if gpus else 'CPUs'} at {self.address}")
        texts = ctx.store.pending_texts(model=ctx.model, precision=ctx.precision, checkpoint=ctx.checkpoint)
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
        self.renderers = RemoteRenderer.for_actors(handles, config, descriptions, ctx.log)

    def run(self, ctx) -> None:
        from batchgen.run.job_loop import work_loop
        from batchgen.store.queue import Store

        errors: list[BaseException] = []
        stop = threading.Event()

        def drive(renderer, n):
            # One thread per actor, each with its own database connection: SQLite serialises the writes.
            own = Store(ctx.out)
            try:
                work_loop(ctx.out, own, renderer, model=ctx.model, precision=ctx.precision, checkpoint=ctx.checkpoint,
                          summary=ctx.summary,
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
