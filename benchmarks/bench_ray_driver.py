"""What one Ray driver sustains: videos per second of bookkeeping and writing, and MB/s, with tiny actors.

A head and two worker nodes simulated on 127.0.0.1 (ray.cluster_utils.Cluster); batchgen's real driver
(render_manifest with --ray ADDRESS: one thread per actor, claim, atomic write of the MP4 bytes the actor
sent, mark done, index, gallery). The actors load the tiny model, render one job for real, and then
answer every job at once with that render carrying `--mb` MB of MP4 bytes, so all the time measured is
the driver's (and Ray's transfer), none the GPU's.

    python benchmarks/bench_ray_driver.py --jobs 120 --actors 4 --mb 1 6 --json benchmarks/results/ray_driver_cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sqlite3
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # nodes on 127.0.0.1 only
os.environ.setdefault("HF_HUB_OFFLINE", "1")

NODE = dict(object_store_memory=300_000_000, include_dashboard=False, node_ip_address="127.0.0.1")


def tiny_actor(mb: float):
    from batchgen.run import ray_pool

    class TinyActor(ray_pool._RenderActor):
        """Renders its first job for real; answers every later one with that render and `mb` MB of bytes."""

        payload = None

        def render(self, job: dict):
            if self.payload is None:
                rendered, fingerprint = super().render(job)
                rendered.encoded_mp4 = os.urandom(int(mb * 2**20))
                self.payload = (rendered, fingerprint)
            return self.payload

    return TinyActor


def measure(address: str, jobs: int, actors: int, mb: float, folder: Path) -> dict:
    from conftest import small_yaml

    from batchgen.manifest import load_manifest
    from batchgen.run import ray_pool
    from batchgen.run.supervisor import render_manifest

    ray_pool._RenderActor = tiny_actor(mb)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = small_yaml(folder, [f"prompt {i}" for i in range(jobs)], name=f"jobs-{mb}.yaml")
    out = folder / f"out-{mb}"
    summary = render_manifest(load_manifest(manifest), out, progress=False, ray_address=address, ray_actors=actors,
                              log=lambda line: None)
    assert summary.rendered == jobs, summary
    # The steady state, from the jobs' own finish times: actor start-up (model load, one real render
    # each) is over once every actor has finished a job, so the first `actors` finishes are left out.
    conn = sqlite3.connect(out / "batchgen.db")
    stamps = sorted(datetime.datetime.fromisoformat(r[0]).timestamp()
                    for r in conn.execute("select finished_at from jobs where status='done'"))
    conn.close()
    steady = stamps[actors - 1:]
    videos, seconds = len(steady) - 1, steady[-1] - steady[0]
    return {"mb_per_video": mb, "actors": actors, "jobs": jobs, "steady_videos": videos, "seconds": round(seconds, 2),
            "videos_per_second": round(videos / seconds, 2), "mb_per_second": round(videos * mb / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=120)
    parser.add_argument("--actors", type=int, default=4)
    parser.add_argument("--mb", type=float, nargs="+", default=[1.0, 6.0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import ray
    from ray.cluster_utils import Cluster

    per_node = max(1, args.actors // 2)
    cluster = Cluster(initialize_head=True, head_node_args=dict(NODE, num_cpus=0))
    for _ in range(2):
        cluster.add_node(num_cpus=per_node, **NODE)
    cluster.wait_for_nodes(timeout=120)
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for mb in args.mb:
                row = measure(cluster.address, args.jobs, args.actors, mb, Path(tmp))
                ray.shutdown()
                print(json.dumps(row), flush=True)
                results.append(row)
    finally:
        cluster.shutdown()
    report = {"machine": f"{os.cpu_count()} cores", "load_average": os.getloadavg(), "results": results}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
