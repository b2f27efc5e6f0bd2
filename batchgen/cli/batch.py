"""`batchgen render`, `validate`, `status`, `retry`: one batch's life from manifest to finished folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from batchgen.cli.common import friendly, progress_options
from batchgen.errors import BatchgenError


@click.command()
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Output folder (overrides the manifest).")
@click.option("--model", help="Hub id, local pipeline folder or 'tiny' (overrides the manifest).")
@click.option("--profile", help="Memory profile (overrides the manifest): auto, resident, fast, fp8-fast, fp8-attn, offload, group-offload, fp8, int8, nf4, cpu.")
@click.option("--device", help="Torch device, e.g. cuda:1 or cpu (default: cuda if available).")
@click.option("--gpus", help="One worker process per GPU: 'all' or indices such as 0,1,2,3.")
@click.option("--workers", type=click.IntRange(1, 64), help="Number of worker processes on the CPU (testing, CPU farms).")
@click.option("--ray", "ray_address", help="Render on a Ray cluster: its address, 'auto', or 'local' (starts one here).")
@click.option("--ray-actors", type=click.IntRange(1, 1024), help="Number of Ray actors (default: one per GPU of the cluster).")
@progress_options
@click.option("--deterministic", is_flag=True, help="torch's deterministic algorithms (and the CUDA settings they need); slower on a GPU.")
@click.option("--approximate", help="Opt-in approximate accelerator (overrides the manifest): first-block-cache[:THRESHOLD], pab, or none. Other frames, own job ids.")
@friendly
def render(manifest: Path, out: Path | None, model: str | None, profile: str | None, device: str | None,
           gpus: str | None, workers: int | None, ray_address: str | None, ray_actors: int | None,
           progress: str, deterministic: bool = False, approximate: str | None = None) -> None:
    """Render every job of MANIFEST into OUT; run it again to resume.

    MANIFEST may also be a previous run's metadata.jsonl or batchgen.db: the same jobs and file names again."""
    if deterministic:
        from batchgen.engine.determinism import COST_NOTE, prepare_env

        prepare_env()  # before anything touches CUDA
        click.echo(COST_NOTE, err=True)
    from batchgen.manifest.parse import load_manifest
    from batchgen.run.supervisor import render_manifest

    from batchgen.manifest.model_check import check_model

    m = load_manifest(manifest, model=model, out=out, profile=profile, approximate=approximate)
    for warning in m.warnings:
        click.echo(f"Warning: {warning}", err=True)
    if m.out is None:
        raise BatchgenError(f"{manifest}: no output folder: give --out OUT or `out:` in the manifest.")
    check_model(m.model, m.revision)  # before anything is written
    if sum(bool(x) for x in (gpus, workers, ray_address)) > 1:
        raise BatchgenError("Give one of --gpus (one worker per GPU), --workers (CPU worker processes) or --ray.")
    pool = None
    if gpus:
        from batchgen.run.local_pool import parse_gpus

        pool = parse_gpus(gpus)
    elif workers:
        pool = ["cpu"] * workers
        device = "cpu"
    summary = render_manifest(m, m.out, device=device, progress=progress, workers=pool, deterministic=deterministic,
                              ray_address=ray_address, ray_actors=ray_actors)
    left = f", {summary.left_pending} still pending (run the same command again)" if summary.left_pending else ""
    click.echo(
        f"{summary.rendered} rendered, {summary.skipped} already done, {summary.failed} failed{left}; "
        f"outputs in {summary.out}",
        err=True,
    )
    if summary.failed and summary.interrupted_by is None:
        click.echo(f"Some jobs failed: see `batchgen status {summary.out}`; `batchgen retry {summary.out}` queues them again.", err=True)
    sys.exit(summary.exit_code)


@click.command()
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--model", help="Override the manifest's model.")
@click.option("--profile", help="Override the manifest's profile.")
@friendly
def validate(manifest: Path, model: str | None, profile: str | None) -> None:
    """Check MANIFEST and its model and say how many jobs it expands to; renders nothing."""
    from batchgen.manifest.model_check import check_model
    from batchgen.manifest.parse import load_manifest

    m = load_manifest(manifest, model=model, profile=profile)
    check_model(m.model, m.revision)
    for warning in m.warnings:
        click.echo(f"Warning: {warning}", err=True)
    # The precision only changes job ids, not how many there are; fp32 avoids probing for a GPU.
    jobs = m.expand("fp32")
    entries = len(m.entries)
    dup = entries - len(jobs)
    extra = f" ({dup} duplicate entr{'y' if dup == 1 else 'ies'} merged)" if dup else ""
    click.echo(f"{manifest}: OK, {len(jobs)} job(s){extra}, model {m.model}")


@click.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object: total, pending, running, done, failed.")
@click.option("--manifest", "manifest", type=click.Path(dir_okay=False, path_type=Path),
              help="Count this manifest's jobs apart from the others in OUT (an edited manifest).")
@friendly
def status(out: Path, as_json: bool, manifest: Path | None = None) -> None:
    """Show how far the batch in OUT has come."""
    from batchgen.store.queue import Store

    store = Store(out, create=False)
    try:
        counts = store.counts()
        in_out = _manifest_in(manifest, store) if manifest is not None else None
        if as_json:
            if in_out is not None:
                counts["manifest"] = {**in_out.ours, "not_queued": in_out.not_queued, "others": in_out.others,
                                      "renamed": len(in_out.renamed)}
            click.echo(json.dumps(counts))
            return
        total = counts["total"] or 1
        click.echo(
            f"{out}: {counts['done']}/{counts['total']} done ({100 * counts['done'] / total:.0f}%), "
            f"{counts['pending']} pending, {counts['running']} running, {counts['failed']} failed"
        )
        if in_out is not None:
            ours = in_out.ours
            click.echo(
                f"  {manifest}: {ours['done']}/{sum(ours.values()) + in_out.not_queued} of its jobs done, "
                f"{ours['pending'] + in_out.not_queued} to render ({in_out.not_queued} not queued yet), "
                f"{ours['running']} running, {ours['failed']} failed"
            )
            for line in in_out.lines():
                click.echo(f"  {line}")
        for row in store.rows("failed")[:20]:
            click.echo(f"  failed {row['job_id']} ({row['source']}): {row['error']}")
    finally:
        store.close()


def _manifest_in(manifest: Path, store):
    from batchgen.manifest.in_out import compare_manifest
    from batchgen.manifest.parse import load_manifest

    return compare_manifest(load_manifest(manifest), store)


@click.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@friendly
def retry(out: Path) -> None:
    """Put the failed jobs of OUT back in the queue."""
    from batchgen.store.queue import Store

    store = Store(out, create=False)
    try:
        n = store.retry_failed()
    finally:
        store.close()
    click.echo(f"{n} failed job(s) back to pending; run `batchgen render` with the same manifest and --out to render them.")
