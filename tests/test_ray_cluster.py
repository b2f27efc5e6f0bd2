"""batchgen on a Ray cluster reached by its address: a head and two worker nodes, all on 127.0.0.1, each
worker with its own CPU. Every job done once with a local run's frames; a node lost mid-batch; a driver
killed with SIGKILL; no cluster and a refused token told apart.

Simulated nodes only ever listen on and are reached at 127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps
Ray from rewriting that to the machine's network address). A job is held in flight by a crash point that
holds instead of killing (BATCHGEN_FAULT_HOLD): the cluster's raylets, so every actor, inherit a fault at
`actor_render` that is disarmed while its BATCHGEN_FAULT_ONCE file exists; a test arms it by deleting it.
"""

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest

from batchgen.outputs.metadata_index import read as read_index
from conftest import render_small_batch, small_yaml

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_gcs_server_port_wait_time_s": "3"}
NODE = dict(num_cpus=1, object_store_memory=80_000_000, include_dashboard=False, node_ip_address="127.0.0.1")
PROMPTS = ["fox", "waves", "city"]


@contextmanager
def environ(env):
    """`env` for the node processes started inside, then this process's own environment back. Ray reads
    RAY_AUTH_MODE once into its C++ config, so that is reloaded both ways (as Ray's own token setup does)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ray._raylet.Config.initialize("")
    try:
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        ray._raylet.Config.initialize("")


class Nodes:
    def __init__(self, tmp):
        self.arm_file, self.hold_file = tmp / "fault-disarmed", tmp / "held-pid"
        self.arm_file.touch()
        from ray.cluster_utils import Cluster

        # Inherited by every node's raylet, so by every actor.
        self.env = dict(LOOPBACK_ENV, BATCHGEN_FAULT="actor_render", BATCHGEN_FAULT_ONCE=str(self.arm_file),
                        BATCHGEN_FAULT_HOLD=str(self.hold_file))
        with environ(self.env):
            self.cluster = Cluster(initialize_head=True, head_node_args=dict(NODE, num_cpus=0))
            self.workers = [self.cluster.add_node(**NODE) for _ in range(2)]
            self.cluster.wait_for_nodes(timeout=60)
        self.address = self.cluster.address
        assert self.address.startswith("127.0.0.1:")

    def arm(self) -> None:
        self.hold_file.unlink(missing_ok=True)
        self.arm_file.unlink()

    def held_pid(self, driver: subprocess.Popen) -> int:
        while not self.hold_file.exists():
            assert driver.poll() is None, driver.communicate()
            time.sleep(0.1)
        return int(self.hold_file.read_text())

    def node_of(self, pid: int):
        """The worker node whose raylet started process `pid` (Ray workers are its children)."""
        with open(f"/proc/{pid}/stat") as handle:
            parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        return next(n for n in self.workers if n.all_processes["raylet"][0].process.pid == parent)

    def replace(self, node) -> None:
        self.cluster.remove_node(node)
        self.workers.remove(node)
        with environ(self.env):
            self.workers.append(self.cluster.add_node(**NODE))
            self.cluster.wait_for_nodes(timeout=60)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    n = Nodes(tmp_path_factory.mktemp("cluster"))
    yield n
    n.cluster.shutdown()


def command(manifest, out, address, *extra):
    return [sys.executable, "-m", "batchgen", "render", str(manifest), "--out", str(out), "--no-progress",
            "--ray", address, "--ray-actors", "2", *extra]


def driver_env(**extra):
    # The driver gets none of the loopback settings: batchgen must reach 127.0.0.1 by itself.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHGEN_", "RAY_"))}
    return dict(env, **extra)


def render(manifest, out, address, **env):
    return subprocess.run(command(manifest, out, address), env=driver_env(**env), capture_output=True, text=True,
                          timeout=300)


def frames_by_job(out):
    return {r["job_id"]: r["frames_sha256"] for r in read_index(out)}


def statuses(out):
    conn = sqlite3.connect(out / "batchgen.db")
    try:
        return conn.execute("select status, count(*), max(attempts) from jobs group by status").fetchall()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def local_frames(tmp_path_factory):
    _, out = render_small_batch(tmp_path_factory.mktemp("local"), PROMPTS, seeds=[1, 2])
    return frames_by_job(out)


def test_jobs_rendered_once_on_the_nodes_with_local_frames(nodes, local_frames, tmp_path):
    manifest = small_yaml(tmp_path, PROMPTS, seeds=[1, 2])
    result = render(manifest, tmp_path / "out", nodes.address)
    assert result.returncode == 0, result.stderr
    assert frames_by_job(tmp_path / "out") == local_frames
    assert statuses(tmp_path / "out") == [("done", 6, 1)]
    assert "warning" not in result.stderr
    assert (tmp_path / "out" / "index.html").read_text().rstrip().endswith("</html>")


def test_a_node_lost_mid_batch_hands_its_job_to_a_survivor(nodes, local_frames, tmp_path):
    manifest = small_yaml(tmp_path, PROMPTS, seeds=[1, 2])
    nodes.arm()
    driver = subprocess.Popen(command(manifest, tmp_path / "out", nodes.address), env=driver_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lost = nodes.node_of(nodes.held_pid(driver))
    nodes.replace(lost)  # removes it (its held job in flight), then gives later tests their second node back
    _, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 0, stderr
    assert f"Ray node {lost.node_id}" in stderr and "was lost" in stderr
    assert frames_by_job(tmp_path / "out") == local_frames
    assert statuses(tmp_path / "out") == [("done", 6, 1)]  # nothing rendered twice, nothing failed


def test_a_killed_driver_leaves_no_actor_and_a_rerun_resumes(nodes, local_frames, tmp_path):
    manifest = small_yaml(tmp_path, PROMPTS, seeds=[1, 2])
    nodes.arm()
    driver = subprocess.Popen(command(manifest, tmp_path / "out", nodes.address), env=driver_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    held = nodes.held_pid(driver)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    while os.path.exists(f"/proc/{held}") and "zombie" not in open(f"/proc/{held}/status").read():
        time.sleep(0.1)  # Ray ends a dead driver's actors (never detached); a leak would hang here
    result = render(manifest, tmp_path / "out", nodes.address)
    assert result.returncode == 0, result.stderr
    assert "left running by an interrupted run go back to the queue" in result.stderr
    assert frames_by_job(tmp_path / "out") == local_frames
    assert [s[:2] for s in statuses(tmp_path / "out")] == [("done", 6)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_cluster_at_the_address_says_so_at_once(tmp_path):
    manifest = small_yaml(tmp_path, ["fox"])
    address = f"127.0.0.1:{free_port()}"
    result = render(manifest, tmp_path / "out", address)
    assert result.returncode == 2
    assert f"No Ray cluster at '{address}'" in result.stderr and "ray start --head" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_refused_token_names_the_fix(tmp_path):
    from ray.cluster_utils import Cluster

    with environ(dict(LOOPBACK_ENV, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="right" * 8)):
        cluster = Cluster(initialize_head=True, head_node_args=dict(NODE, num_cpus=0))
    try:
        manifest = small_yaml(tmp_path, ["fox"])
        result = render(manifest, tmp_path / "out", cluster.address, RAY_AUTH_TOKEN="wrong" * 8,
                        HOME=str(tmp_path))
        assert result.returncode == 2, result.stderr
        assert "refused this process's authentication token" in result.stderr
        assert "ray get-auth-token" in result.stderr and "RAY_AUTH_TOKEN" in result.stderr
        assert "No Ray cluster" not in result.stderr
        # The right token, from the environment as Ray resolves it, joins.
        join = "from batchgen.run.ray_connect import connect; import ray; connect(%r, {}); print(ray.is_initialized())"
        joined = subprocess.run([sys.executable, "-c", join % cluster.address], capture_output=True, text=True,
                                env=driver_env(RAY_AUTH_TOKEN="right" * 8, HOME=str(tmp_path)), timeout=120)
        assert joined.stdout.strip() == "True", joined.stderr
    finally:
        cluster.shutdown()
