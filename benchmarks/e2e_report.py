"""Per-video wall time of a finished batch, from its database: what a user pays per video.

  python benchmarks/e2e_report.py OUT [--command-seconds S]

Prints, per job, the time from claim to done (render + decode + MP4 write + bookkeeping) and the render
seconds recorded by the Renderer; then the batch's per-video wall time from first claim to last done
(one-time costs such as compiling spread over the batch), the same for the jobs after the first (steady
state), and, given the whole command's seconds, the per-video time including model loading.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sqlite3
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--command-seconds", type=float)
    args = parser.parse_args()
    conn = sqlite3.connect(args.out / "batchgen.db")
    rows = conn.execute(
        "select job_id, profile, started_at, finished_at, render_seconds, seconds_per_step, peak_vram_allocated "
        "from jobs where status='done' order by started_at"
    ).fetchall()
    ts = lambda s: datetime.datetime.fromisoformat(s).timestamp()  # noqa: E731
    jobs = []
    for jid, profile, start, end, render, sps, peak in rows:
        jobs.append({"job_id": jid, "profile": profile, "claim_to_done_s": round(ts(end) - ts(start), 2),
                     "render_s": round(render, 2), "s_per_step": round(sps, 4),
                     "peak_gib": round(peak / 2**30, 2) if peak else None})
    span = ts(rows[-1][3]) - ts(rows[0][2])
    later = ts(rows[-1][3]) - ts(rows[0][3]) if len(rows) > 1 else None
    result = {
        "videos": len(rows),
        "jobs": jobs,
        "per_video_first_claim_to_last_done_s": round(span / len(rows), 2),
        "per_video_after_the_first_s": round(later / (len(rows) - 1), 2) if later else None,
    }
    if args.command_seconds:
        result["command_seconds"] = args.command_seconds
        result["per_video_whole_command_s"] = round(args.command_seconds / len(rows), 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
