"""A manifest against an output folder that already holds jobs: which of OUT's jobs are this manifest's,
which belong to none of its jobs (an edited manifest: kept, never deleted), and which finished jobs the
manifest now names differently (a changed output_name: the files keep their names).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from batchgen.job import Job
from batchgen.manifest.manifest import Manifest
from batchgen.store.queue import STATUSES, Store


@dataclass
class InOut:
    """How a manifest's jobs stand in OUT."""

    out: str
    ours: dict[str, int]  # status -> how many of this manifest's jobs OUT holds
    not_queued: int  # this manifest's jobs OUT does not hold yet
    others: int  # jobs in OUT that are no job of this manifest
    renamed: list[tuple[Job, str]] = field(default_factory=list)  # (job, the name OUT has it under), finished jobs

    def lines(self) -> list[str]:
        """What to tell the user (nothing when OUT holds exactly this manifest's jobs under its names)."""
        told = []
        if self.others:
            told.append(
                f"{self.out} also holds {self.others} job(s) that are no job of this manifest (from an earlier "
                f"version of it, or another manifest): they are kept, never deleted, and not counted here"
            )
        if self.renamed:
            job, old = self.renamed[0]
            told.append(
                f"{len(self.renamed)} finished job(s) have another output_name in this manifest than in {self.out} "
                f"(e.g. {job.source}: '{old}.mp4' would now be '{job.output_name}.mp4'); finished videos are "
                f"not renamed or rendered again: render into a new --out for the new names, or lay the finished "
                f"videos out with `batchgen export {self.out} DEST --layout ...`"
            )
        return told


def compare(jobs: list[Job], store: Store) -> InOut:
    """Where each of `jobs` (a manifest expanded at the run's precision) stands in `store`'s folder."""
    states = store.job_states()
    ours = {status: 0 for status in STATUSES}
    not_queued = 0
    renamed = []
    mine = set()
    for job in jobs:
        jid = job.job_id
        mine.add(jid)
        state = states.get(jid)
        if state is None:
            not_queued += 1
            continue
        status, stored_name = state
        ours[status] = ours.get(status, 0) + 1
        if status == "done" and stored_name != job.output_name:
            renamed.append((job, stored_name))
    others = sum(1 for jid in states if jid not in mine)
    return InOut(out=str(store.out), ours=ours, not_queued=not_queued, others=others, renamed=renamed)


def compare_manifest(manifest: Manifest, store: Store) -> InOut:
    """`compare` for a manifest whose precision is not known (`batchgen status --manifest`): of the precisions
    OUT holds jobs of this model at, the one that matches most of the manifest's jobs."""
    precisions = list(store.precisions(model=manifest.model)) or ["fp32"]
    found = [compare(manifest.expand(precision), store) for precision in precisions]
    return max(found, key=lambda result: sum(result.ours.values()))
