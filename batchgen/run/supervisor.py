"""One run of a batch, however it renders: the only owner of the run's lifecycle.

The supervisor checks the options, plans the batch, takes the folder lock, prepares OUT (queue, stale
jobs, partial files, the quick check of finished videos), writes the `runs` row, owns progress and the
stop signals, hands the rendering to one runner (in this process, the local worker pool or Ray), and
always ends the same way: index and gallery rebuilt, the runs row closed, a summary.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from batchgen.engine import approximate, checkpoints, lora
from batchgen.engine import determinism
from batchgen.engine import families, profile_registry, profiles
from batchgen.engine.environment import check_device
from batchgen.errors import BatchgenError
from batchgen.job import Job
from batchgen.manifest.in_out import compare
from batchgen.manifest.parse import Manifest
from batchgen.outputs import gallery
from batchgen.outputs import metadata_index
from batchgen.outputs import unwritable
from batchgen.outputs import verify
from batchgen.outputs.atomic import remove_partials
from batchgen.outputs.unwritable import OutputUnwritable
from batchgen.run.context import VIDEO_DIR, RunContext, RunSummary, video_path
from batchgen.run.lock import FolderLock
from batchgen.run.progress import BatchProgress, pending_shapes
from batchgen.run.signals import STOP, Interrupted
from batchgen.store.queue import Store

__all__ = ["RunSummary", "plan", "render_manifest", "video_path", "VIDEO_DIR"]


def plan(
    manifest: Manifest, device: str | None = None, deterministic: bool = False
) -> tuple[profiles.ProfileChoice, str, list[Job]]:
    """Resolve the profile for this machine and expand the manifest at its precision."""
    check_device(device)
    # auto sizes its choice to this batch's biggest video, not to the longest Mochi can make, counted in
    # the family's own latent tokens (Wan compresses time 4x, LTX 8x, Mochi 6x).
    family = families.get(manifest.family)
    tokens = next(iter(family.memory.values())).latent_tokens if family.memory else profiles.latent_tokens
    largest = max(
        ((e.fields["num_frames"], e.fields["height"], e.fields["width"]) for e in manifest.entries),
        key=lambda shape: tokens(*shape),
        default=None,
    )
    # A profile the family cannot take was refused by the manifest already, with its file and field.
    choice = profiles.resolve(manifest.profile, device, largest=largest, family=family, model=manifest.model)
    refused = approximate.check_profile(manifest.approximate, choice.name)
    if refused:
        raise BatchgenError(f"{manifest.path}: field 'approximate': {refused}. Pick one of those with --profile "
                            "or profile: in the manifest.")
    precision = profiles.precision(choice.name, manifest.quality, deterministic, manifest.approximate)
    precision = _checkpoint_precision(manifest, choice.name, precision)
    jobs = manifest.expand(precision)
    if any(job.loras for job in jobs):
        problem = lora.backend_problem() or lora.profile_problem(choice.name)
        if problem:
            raise BatchgenError(f"{manifest.path}: field 'loras': {problem}")
    return choice, precision, jobs


def _checkpoint_precision(manifest: Manifest, profile: str, precision: str) -> str:
    """A pre-quantized transformer's tag in place of the compute dtype; a profile that would quantize it
    again refused, before anything loads."""
    if not manifest.transformer:
        return precision
    try:
        tag = checkpoints.prequantized_tag(checkpoints.transformer_config(manifest.transformer,
                                                                          manifest.transformer_revision))
        declared = profile_registry.get(profile)
        checkpoints.check_profile(tag, profile, declared.weights, declared.compiles, manifest.transformer)
    except checkpoints.CheckpointError as exc:
        raise BatchgenError(f"{manifest.path}: field 'transformer': {exc}") from None
    return checkpoints.precision_with(precision, tag)


def render_manifest(
    manifest: Manifest,
    out: Path | None = None,
    *,
    device: str | None = None,
    progress: bool | str = True,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
    renderer_factory=None,
    workers: list[str] | None = None,
    deterministic: bool = False,
    ray_address: str | None = None,
    ray_actors: int | None = None,
) -> RunSummary:
    """Render every pending job of `manifest` into `out`, resuming whatever an earlier run left."""
    from batchgen.run import in_process, local_pool, ray_pool

    out = Path(out or manifest.out or "out")
    # A library caller gets the same safe-point handling for the length of the call; the CLI installed it
    # (with the quiet exit during start-up) before its first import.
    ours = not STOP._installed and STOP.install(exit_outside_runs=False)
    STOP.reset()
    try:
        choice, precision, jobs = plan(manifest, device, deterministic)
        if ray_address:
            runner = ray_pool.RayRunner(ray_address, ray_actors)
        elif workers:
            runner = local_pool.PoolRunner(workers)
        else:
            runner = in_process.InProcessRunner(renderer_factory)
        summary = RunSummary(out, profile=choice.name, profile_reason=choice.reason)
        unwritable.make_output_folder(out)
        with unwritable.guard(out), determinism.settings(deterministic), FolderLock(out) as lock:
            unwritable.SpaceReserve(out).claim()
            store = Store(out)
            try:
                ctx = RunContext(out, store, manifest, choice, precision, 0, summary, log, None, STOP,
                                 show_bars=progress, lock_fd=lock.fileno())
                _run(ctx, jobs, runner)
            finally:
                store.close()
        return summary
    finally:
        if ours:
            STOP.uninstall()


def _prepare(ctx: RunContext, jobs: list[Job]) -> None:
    """OUT as the last run left it, made whole: new jobs queued, stale ones back, partial files gone."""
    out, store = ctx.out, ctx.store
    _refuse_kernel_switch(out, store, ctx.model, ctx.precision)
    ctx.summary.added = store.add_jobs(jobs)
    stale = store.reset_running()
    verify.startup_check(out, store, ctx.log)
    _sweep_partials(out)
    metadata_index.rebuild(out, store)
    gallery.maybe_write_gallery(out, store, force=True)
    if stale:
        ctx.log(f"batchgen: {stale} job(s) left running by an interrupted run go back to the queue")


def _run(ctx: RunContext, jobs: list[Job], runner) -> None:
    out, store, summary, log, choice = ctx.out, ctx.store, ctx.summary, ctx.log, ctx.choice
    _prepare(ctx, jobs)
    ctx.pending = store.pending_count(model=ctx.model, precision=ctx.precision, checkpoint=ctx.checkpoint)
    counts = store.counts()
    # This manifest's jobs counted apart from whatever else OUT holds (an earlier version of it, say).
    standing = compare(jobs, store)
    for line in standing.lines():
        log(f"batchgen: {line}")
    summary.total, summary.skipped = counts["total"], standing.ours["done"]
    if ctx.pending == 0:
        log(f"batchgen: nothing to render in {out}: {standing.ours['done']} done, {standing.ours['failed']} failed")
        summary.failed = counts["failed"]
        return
    log(f"batchgen: profile '{choice.name}' ({choice.reason}); {ctx.pending} job(s) to render, "
        f"{standing.ours['done']} already done")
    if choice.device == "cpu" and not families.is_tiny(ctx.model):
        log("batchgen: warning: no CUDA device; a full-size video model on the CPU takes hours per video. "
            "Use `model: tiny` (or tiny-wan, tiny-ltx) to try batchgen, or run on a CUDA machine.")
    if profile_registry.get(choice.name).compiles:
        # Inductor's cache beside the batch: a resumed run (and every worker) reuses the compiled kernels.
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(out / "cache" / "inductor"))
    ctx.progress = BatchProgress(ctx.pending, ctx.show_bars, pending_shapes(store, ctx.model, ctx.precision))
    try:
        try:
            runner.start(ctx)
            ctx.signals.check()  # a library caller's signal during start-up, recorded only
        except (Interrupted, KeyboardInterrupt) as exc:
            summary.interrupted_by = getattr(exc, "signum", signal.SIGINT)
            ctx.log("batchgen: interrupted before rendering began; nothing was lost.")
            return
        run_id = store.start_run(manifest=str(ctx.manifest.path), model=ctx.model, profile=choice.name,
                                 profile_reason=choice.reason + "".join(f"; {n}" for n in runner.notes()))
        _render(ctx, runner, run_id, counts["done"])
    finally:
        ctx.progress.close()


def _render(ctx: RunContext, runner, run_id: int, done_before: int) -> None:
    store, summary = ctx.store, ctx.summary
    stopped: OutputUnwritable | None = None
    with ctx.signals.acting():
        try:
            runner.run(ctx)
        except KeyboardInterrupt:  # Python's own, where no handler of ours was installed
            summary.interrupted_by = signal.SIGINT
        except Interrupted as exc:
            summary.interrupted_by = exc.signum
        except OutputUnwritable as exc:
            stopped = exc
        except Exception as exc:
            # The queue's own writes (claiming, say) meet the full disk as bare SQLite errors.
            if unwritable.unwritable_errno(exc, ctx.out) is None:
                _finish(ctx, run_id, None)
                raise
            stopped = OutputUnwritable(unwritable.describe(exc, ctx.out))
        stopped = _finish(ctx, run_id, stopped)
    if stopped is not None:
        raise stopped
    counts = store.counts()
    summary.rendered = max(summary.rendered, counts["done"] - done_before)
    summary.failed = counts["failed"]


def _finish(ctx: RunContext, run_id: int, stopped: OutputUnwritable | None) -> OutputUnwritable | None:
    """The end of every run, whatever stopped it: nothing left running, index and gallery whole, run closed."""
    out, store, summary = ctx.out, ctx.store, ctx.summary
    if summary.interrupted_by is None and ctx.signals.received is not None:
        summary.interrupted_by = ctx.signals.received  # arrived after the last safe point: still obeyed
    if stopped is not None:
        unwritable.SpaceReserve(out).release()  # room for the bookkeeping below; the next run claims it again
    try:
        store.reset_running()  # a runner's job cut short (a worker, an actor) is the next run's again
        _sweep_partials(out)  # left by a worker that died; every writer of this run has stopped
        metadata_index.rebuild(out, store)
    except Exception as exc:
        # With the batch already stopping for a full disk, the index is rebuilt on the next run.
        if stopped is None and unwritable.unwritable_errno(exc, out) is None:
            raise
        stopped = stopped or OutputUnwritable(unwritable.describe(exc, out / metadata_index.METADATA_FILE))
    gallery.maybe_write_gallery(out, store, force=True)
    word = "finished"
    if summary.interrupted_by is not None:
        word = "interrupted"
        ctx.log("batchgen: interrupted; the job in flight is back in the queue. Run the same command to resume.")
    if stopped is not None:
        word = "stopped: output unwritable"
    try:
        store.finish_run(run_id, word)
    except Exception:
        if stopped is None:  # the database may sit on the same full disk: the stop is what to report
            raise
    return stopped


def _sweep_partials(out: Path) -> None:
    """No writer of this folder is alive (the lock says so): every temporary file is an orphan."""
    for folder in (out / VIDEO_DIR, out, out / "cache" / "embeddings"):
        remove_partials(folder)


def _refuse_kernel_switch(out: Path, store, model: str, precision: str) -> None:
    """A folder started under one recipe setting (int8 kernel, fp8 attention recipe) would otherwise get
    every job again under the other recipe's ids."""
    for recorded, count in store.precisions(model=model).items():
        if profiles.kernel_switched(recorded, precision):
            raise BatchgenError(
                f"{out} holds {count} job(s) at precision {recorded}, and this run would render the same batch "
                f"again at {precision}{profiles.kernel_hint(recorded)}. Or use another --out; nothing is overwritten."
            )
