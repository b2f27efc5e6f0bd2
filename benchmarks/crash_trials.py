"""Many SIGKILL-and-resume trials in real processes; prints how many trials and moments were tried.

    python benchmarks/crash_trials.py                       # 4-job batch, every fault point at jobs 1, 3, 4, 20 random kills
    python benchmarks/crash_trials.py --jobs 2 --random 10  # what tests/test_faults.py runs

Each trial renders a fresh tiny batch, kills it (at a named BATCHGEN_FAULT point, or after a seeded random
delay), resumes it, and checks: every job done exactly once (jobs finished before the kill untouched),
every video byte-identical to an uninterrupted run's, index rows == jobs, no temporary file left,
PRAGMA integrity_check ok. See tests/crash_harness.py for how the processes are made and killed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import crash_harness  # noqa: E402
from conftest import small_yaml  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=4, help="jobs per batch (1 prompt per 2 seeds)")
    parser.add_argument("--random", type=int, default=20, help="random-time kills")
    parser.add_argument("--seed", type=int, default=20240607, help="seed of the random kill times")
    args = parser.parse_args()
    prompts = [f"a red fox in snow, take {i}" for i in range((args.jobs + 1) // 2)]
    seeds = [1, 2] if args.jobs > 1 else [1]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="crash-trials-") as tmp:
        folder = Path(tmp)
        manifest = small_yaml(folder, prompts, seeds=seeds)
        jobs = len(prompts) * len(seeds)
        lab = crash_harness.Lab()
        try:
            reference, seconds = crash_harness.reference_run(lab, manifest, folder / "reference")
            moments = crash_harness.named_moments(jobs, middle=True)
            named = []
            for n, moment in enumerate(moments):
                named.append(crash_harness.crash_trial(lab, manifest, folder / f"named{n}", reference, fault=moment))
                print(f"  {moment:<28} killed={named[-1].killed} done at kill={named[-1].done_at_kill}", flush=True)
            randoms = crash_harness.random_trials(
                lab, manifest, folder, reference, seconds, count=args.random, seed=args.seed
            )
            for trial in randoms:
                print(f"  {trial.moment:<28} killed={trial.killed} done at kill={trial.done_at_kill}", flush=True)
        finally:
            lab.close()
    trials = named + randoms
    killed = [t for t in trials if t.killed]
    ordinals = {m.rpartition(":")[2] for m in moments if m.rpartition(":")[0] in crash_harness.JOB_POINTS}
    print(
        f"crash trials: {len(trials)} trials on a {jobs}-job batch, {len(set(moments))} named moments "
        f"({len(crash_harness.JOB_POINTS)} job fault points x jobs {', '.join(sorted(ordinals))} "
        f"+ the index rewrite at run start and end) and {len(randoms)} random times (seed {args.seed}); "
        f"{len(killed)} killed mid-run; every resume consistent; {time.perf_counter() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
