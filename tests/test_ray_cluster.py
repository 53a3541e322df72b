"""Many nodes on real Ray: a ``ray.cluster_utils.Cluster`` of four raylets on this machine.

Each raylet is a node with its own local run directory (``BASE/<node id>``, since they share
one disk here); on each, one ``_Ranks`` actor drives eight ``EventWriter``\\ s, ranks
``8k..8k+7`` (eight writer processes a node would be 32 processes on two cores: the writers are
real, the process per rank is not). Every test starts its own monitor actor and agents.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402

from trainguard.control import read_stop_request  # noqa: E402
from trainguard.monitor.ray import start_ray_monitor  # noqa: E402
from trainguard.monitor.ray.launch import node_labels  # noqa: E402
from trainguard.monitor.ray.service import spool_dir  # noqa: E402
from trainguard.monitor.session import MonitorOptions  # noqa: E402

pytestmark = pytest.mark.slow

NODES, PER_NODE = 4, 8
WORLD = NODES * PER_NODE

# The rank actors below are defined here: Ray workers get them by value, not by importing
# this test module (which is not on their path).
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@ray.remote(num_cpus=0)
class _Ranks:
    """Eight ranks of one node: each step, every rank writes its line and reads its own
    node's control file, as a trainer with an ``EventWriter`` per rank does."""

    def __init__(self, run_dir: str, host: str, node_index: int) -> None:
        from trainguard.emitters.writer import EventWriter

        self.writers = [EventWriter(run_dir, rank=node_index * PER_NODE + j, world_size=WORLD,
                                    host=host, local_rank=j, stop_check_interval=0.0)
                        for j in range(PER_NODE)]
        self.last_step = 0

    def step(self, step: int, nan_rank: int = -1, nan_from: int = 10**9) -> list[bool]:
        for w in self.writers:
            loss = math.nan if w.rank == nan_rank and step >= nan_from else 1.0 / step
            w.log_metrics(step, {"loss": loss, "grad_norm": 1.0})
        self.last_step = step
        return [w.should_stop for w in self.writers]

    def should_stop(self) -> list[bool]:
        return [w.should_stop for w in self.writers]

    def steps_written(self) -> list[int]:
        return [self.last_step] * len(self.writers)

    def close(self) -> None:
        for w in self.writers:
            w.close()


@pytest.fixture(scope="module")
def cluster():
    """Four raylets (one CPU each) and a driver connected to them; torn down afterwards."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(NODES - 1):
        c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


def _alive() -> list[dict]:
    return sorted((n for n in ray.nodes() if n["Alive"]), key=lambda n: n["NodeID"])


def _ranks(base: Path, nodes: list[dict]) -> list:
    return [_Ranks.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        n["NodeID"], soft=False)).remote(str(base / n["NodeID"]), f"node{k}", k)
        for k, n in enumerate(nodes)]


def _until(predicate, timeout: float = 60.0, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not reached in time")


def test_a_nan_on_one_rank_of_one_node_stops_every_rank_of_every_node_after_the_same_step(
        cluster, tmp_path):
    """Rank 21 (node2, local rank 5) goes NaN: the stop reaches the control file of every
    node, every one of the 32 ranks reads it there itself, and all stop after one step."""
    nodes = _alive()[:NODES]
    ranks = _ranks(tmp_path, nodes)
    guard = start_ray_monitor(str(tmp_path / "{node_id}"),
                              MonitorOptions(source="", stop=True, quiet=True), lost_after=60)
    stop_step = None
    for step in range(1, 200):
        flags = sum(ray.get([r.step.remote(step, nan_rank=21, nan_from=5) for r in ranks]), [])
        if any(flags):  # the job's all-reduce of the stop flag: every rank ends this step
            stop_step = step
            break
        time.sleep(0.05)
    assert stop_step is not None and stop_step >= 5
    # Each rank's own writer sees the request in its own node's control file.
    _until(lambda: all(sum(ray.get([r.should_stop.remote() for r in ranks]), [])))
    assert set(sum(ray.get([r.steps_written.remote() for r in ranks]), [])) == {stop_step}
    verdict = guard.finish()
    ray.get([r.close.remote() for r in ranks])
    fired = [a for a in verdict.alerts
             if a.rule == "common.nonfinite_loss" and a.state == "firing"]
    assert [(a.rank, a.host, a.local_rank, a.step) for a in fired] == [(21, "node2", 5, 5)]
    assert verdict.exit_code == 2
    for node in nodes:
        request = read_stop_request(tmp_path / node["NodeID"] / "control.json")
        assert request is not None and request.rule == "common.nonfinite_loss"


def test_an_agent_and_the_monitor_killed_with_sigkill_lose_and_repeat_nothing(cluster, tmp_path):
    """kill -9 of one node's agent, later of the monitor actor, mid-run: Ray restarts each, the
    agent resumes from its checkpoint, the monitor from its spool and state, and the spool and
    the record hold every rank's every step exactly once."""
    nodes = _alive()[:NODES]
    labels = node_labels(nodes)
    victim = labels[nodes[1]["NodeID"]]
    ranks = _ranks(tmp_path, nodes)
    record = tmp_path / "record.jsonl"
    guard = start_ray_monitor(str(tmp_path / "{node_id}"),
                              MonitorOptions(source="", quiet=True, record=str(record)),
                              lost_after=60)
    agent = guard.agents[victim]
    steps = 40
    pids = {}
    for step in range(1, steps + 1):
        ray.get([r.step.remote(step) for r in ranks])
        if step == 10:
            pids[agent] = ray.get(agent.status.remote())["pid"]
            os.kill(pids[agent], signal.SIGKILL)
        if step == 25:
            pids[guard.service] = guard.status()["pid"]
            os.kill(pids[guard.service], signal.SIGKILL)
        time.sleep(0.03)

    def restarted(actor) -> bool:
        try:
            return ray.get(actor.status.remote(), timeout=5)["pid"] != pids[actor]
        except ray.exceptions.RayError:
            return False

    _until(lambda: restarted(agent) and restarted(guard.service))
    assert guard.wait_idle(60)
    spool = spool_dir(guard.head_run_dir)
    for node in nodes:
        for source in sorted((tmp_path / node["NodeID"]).glob("events.rank*.jsonl")):
            copy = spool / labels[node["NodeID"]] / source.name
            assert copy.read_bytes() == source.read_bytes(), source
    verdict = guard.finish()
    ray.get([r.close.remote() for r in ranks])
    counts = Counter((e.get("rank", 0), e["step"])
                     for e in map(json.loads, record.read_text().splitlines()))
    assert len(counts) == WORLD * steps and set(counts.values()) == {1}
    assert verdict.exit_code == 0 and not verdict.problems


def test_cli_ray_once_reads_every_node_and_names_the_node_of_the_alert(cluster, tmp_path):
    """``trainguard monitor --ray BASE/{node_id} --once``: exit 2 for a NaN on node3, and the
    alert in the head's alerts.jsonl names node3 and the local rank."""
    nodes = _alive()[:NODES]
    ranks = _ranks(tmp_path, nodes)
    for step in range(1, 6):
        ray.get([r.step.remote(step, nan_rank=3 * PER_NODE + 2, nan_from=4) for r in ranks])
    ray.get([r.close.remote() for r in ranks])
    env = dict(os.environ, RAY_ADDRESS=cluster.address, COLUMNS="200")
    done = subprocess.run([sys.executable, "-m", "trainguard", "monitor", "--ray",
                           str(tmp_path / "{node_id}"), "--once", "-q"],
                          capture_output=True, timeout=180, env=env, check=False)
    assert done.returncode == 2, done.stderr.decode()[-2000:]
    alerts = [json.loads(line) for path in tmp_path.glob("*/alerts.jsonl")
              for line in path.read_text().splitlines()]
    nan = [a for a in alerts if a["rule"] == "common.nonfinite_loss"]
    assert [(a["rank"], a["host"], a["local_rank"]) for a in nan] == [(26, "node3", 2)]


def test_cli_ray_with_rules_that_do_not_load_exits_1_with_the_reason(cluster, tmp_path):
    """The monitor actor's session cannot start: the command says why, exit 1, no hang."""
    env = dict(os.environ, RAY_ADDRESS=cluster.address, COLUMNS="200")
    done = subprocess.run([sys.executable, "-m", "trainguard", "monitor", "--ray",
                           str(tmp_path / "{node_id}"), "--once", "-r", "no_such_pack"],
                          capture_output=True, timeout=180, env=env, check=False)
    err = done.stderr.decode()
    assert done.returncode == 1 and "no_such_pack" in err and "Traceback" not in err, err[-2000:]


def test_a_node_removed_mid_run_is_reported_lost_and_never_clean(cluster, tmp_path):
    """A fifth node leaves the cluster mid-run: the verdict is degraded and names it."""
    extra = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    nodes = _alive()
    labels = node_labels(nodes)
    gone = labels[extra.node_id]
    guard = start_ray_monitor(str(tmp_path / "{node_id}"), MonitorOptions(source="", quiet=True),
                              lost_after=3, heartbeat=0.5)
    _until(lambda: gone in guard.status()["idle"])
    cluster.remove_node(extra, allow_graceful=False)
    _until(lambda: gone in guard.status()["lost"])
    guard.agents.pop(gone)  # its actor is gone with the node
    verdict = guard.finish()
    assert verdict.exit_code == 1
    assert [p for p in verdict.problems if p.startswith(f"node {gone}: lost")]
