"""`batchgen reproduce OUT JOB_ID` / `--sample N`: re-render recorded jobs and compare their frames."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from batchgen.cli.common import friendly, progress_options
from batchgen.errors import BatchgenError


@click.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.argument("job_ids", nargs=-1)
@click.option("--sample", type=click.IntRange(1), metavar="N", help="Reproduce N done jobs drawn at random.")
@click.option("--seed", type=int, help="Seed of the --sample draw (the same seed picks the same jobs).")
@click.option("--profile", help="Render with this profile instead of the recorded one; only one of the same precision.")
@click.option("--device", help="Torch device, e.g. cuda:1 or cpu (default: cuda if available).")
@click.option("--scratch", type=click.Path(file_okay=False, path_type=Path),
              help="Where the re-renders go (one folder per job); default OUT/.reproduce.")
@click.option("--deterministic", is_flag=True, help="Force deterministic mode (on anyway for jobs rendered with it).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per job on stdout.")
@progress_options
@friendly
def reproduce(out: Path, job_ids: tuple[str, ...], sample: int | None, seed: int | None, profile: str | None,
              device: str | None, scratch: Path | None, deterministic: bool, as_json: bool, progress: str) -> None:
    """Re-render jobs of OUT with exactly their recorded settings and compare the frames.

    Prints `identical`, or `differs` with the max absolute pixel difference, the PSNR and every fingerprint
    field (libraries, GPU, profile...) that differs from now. Exit 0 only when every job is identical, 1 when
    one differs. OUT is only read; the re-renders go to OUT/.reproduce/<job_id>/.
    """
    from batchgen.engine.determinism import COST_NOTE, prepare_env
    from batchgen.run.reproduce import reproduce as run_reproduce
    from batchgen.run.reproduce import sample_job_ids

    if bool(job_ids) == bool(sample):
        raise BatchgenError("Give JOB_ID(s) to reproduce, or --sample N for N random done jobs (not both).")
    if deterministic:
        prepare_env()  # before anything touches CUDA
        click.echo(COST_NOTE, err=True)
    else:
        prepare_env_if_recorded(out)
    ids = list(job_ids) if job_ids else sample_job_ids(out, sample, seed)

    def show(result) -> None:
        if as_json:
            click.echo(json.dumps(result.to_dict()))
        else:
            click.echo(result.report())

    results = run_reproduce(out, ids, scratch=scratch, profile=profile, device=device, deterministic=deterministic,
                            progress=progress, on_result=show)
    same = sum(r.identical for r in results)
    damaged = sum(bool(r.recorded_video_problem) for r in results)
    click.echo(f"{same} of {len(results)} job(s) identical"
               + (f"; {damaged} recorded video(s) missing or damaged: `batchgen verify {out}` re-queues them"
                  if damaged else ""), err=True)
    sys.exit(0 if same == len(results) else 1)


def prepare_env_if_recorded(out: Path) -> None:
    """Set CUBLAS_WORKSPACE_CONFIG before CUDA starts when some job of OUT was rendered deterministically:
    it is harmless for the others, and too late once the first job has touched CUDA."""
    from batchgen.engine.determinism import prepare_env
    from batchgen.errors import StoreError
    from batchgen.store.readonly import open_readonly

    try:
        with open_readonly(out) as store:
            texts = store.done_fingerprints()
    except StoreError:
        return  # reported properly by reproduce itself
    for text in texts:
        try:
            if json.loads(text).get("deterministic", {}).get("deterministic_algorithms"):
                prepare_env()
                return
        except ValueError:
            continue
