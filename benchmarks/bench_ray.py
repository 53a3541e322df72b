"""Events/s and lag through the Ray path: agents on four raylets, the monitor actor on the head.

    python benchmarks/bench_ray.py [--ranks 32,256] [--events 320000] [--seconds 10]

A ``ray.cluster_utils.Cluster`` of four raylets on this machine (one CPU each); each node's
ranks are ``EventWriter``\\ s in one actor there, writing into the node's own folder. For each
number of simulated ranks:

* **Backlog**: every rank first writes its share of ``--events`` metric events (10 metrics a
  step); then ``start_ray_monitor`` starts the monitor actor and the agents, which ship it all,
  and ``finish`` returns once the monitor has evaluated it (default packs). ``events_per_s`` is
  events over that wall time (actor start-up included: ``shipped_s`` is start to the last
  node's "all read"); ``cpu_s`` is the CPU time of the agents and the monitor actor (psutil).
* **Lag**: the ranks write a step each every 0.1 s for ``--seconds`` while probes (a metric
  ``probe`` on one random rank, caught by an inline rule) are timed from the write on the node
  to the alert in the head's alerts file (this script reads it every 2 ms).

Everything shares this machine's cores, writers included: figures are a floor for real nodes.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import ray
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from trainguard.monitor.ray import start_ray_monitor
from trainguard.monitor.session import MonitorOptions

NODES = 4
METRICS = [f"m{i}" for i in range(9)]

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@ray.remote(num_cpus=0)
class _Ranks:
    def __init__(self, run_dir: str, host: str, first: int, count: int, world: int) -> None:
        from trainguard.emitters.writer import EventWriter

        self.writers = [EventWriter(run_dir, rank=first + j, world_size=world, host=host,
                                    local_rank=j) for j in range(count)]

    def backlog(self, steps: int) -> int:
        for step in range(1, steps + 1):
            for w in self.writers:
                w.log_metrics(step, {"loss": 1.0, **{m: 0.5 for m in METRICS}})
        return steps * len(self.writers) * (1 + len(METRICS))

    def steady(self, first_step: int, seconds: float, probes: list[tuple[float, int]]) -> list:
        """One step a rank every 0.1 s; at each (offset, local index) a probe on that rank."""
        start = time.monotonic()
        step, out, pending = first_step, [], sorted(probes)
        while time.monotonic() - start < seconds:
            for w in self.writers:
                w.log_metrics(step, {"loss": 1.0, "probe": 0.0})
            while pending and time.monotonic() - start >= pending[0][0]:
                _, j = pending.pop(0)
                step += 1
                written = time.time()
                self.writers[j].log_metrics(step, {"loss": 1.0, "probe": 1.0})
                out.append((self.writers[j].rank, step, written))
            step += 1
            time.sleep(0.1)
        return out

    def close(self) -> None:
        for w in self.writers:
            w.close()


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def _ranks(base: Path, nodes: list[dict[str, Any]], ranks: int) -> list[Any]:
    per = ranks // len(nodes)
    return [_Ranks.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        n["NodeID"], soft=False)).remote(str(base / n["NodeID"]), f"node{k}", k * per, per, ranks)
        for k, n in enumerate(nodes)]


def backlog(nodes: list[dict[str, Any]], ranks: int, events: int) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="tg-raybench-"))
    actors = _ranks(base, nodes, ranks)
    steps = max(1, events // (ranks * (1 + len(METRICS))))
    written = sum(ray.get([a.backlog.remote(steps) for a in actors]))
    ray.get([a.close.remote() for a in actors])
    started = time.monotonic()
    guard = start_ray_monitor(str(base / "{node_id}"), MonitorOptions(source="", quiet=True))
    assert guard.wait_idle(600)
    shipped = time.monotonic() - started
    pids = [ray.get(a.status.remote())["pid"] for a in guard.agents.values()]
    pids.append(guard.status()["pid"])
    cpu_before_finish = _cpu(pids)
    verdict = guard.finish()
    done = time.monotonic() - started
    shutil.rmtree(base, ignore_errors=True)
    assert verdict.events == written, (verdict.events, written)
    return {"ranks": ranks, "nodes": len(nodes), "events": written, "steps_per_rank": steps,
            "shipped_s": round(shipped, 2), "evaluated_s": round(done, 2),
            "events_per_s": round(written / done), "cpu_s_agents_and_monitor_at_shipped":
            round(cpu_before_finish, 2)}


def lag(nodes: list[dict[str, Any]], ranks: int, seconds: float) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="tg-raybench-"))
    actors = _ranks(base, nodes, ranks)
    guard = start_ray_monitor(str(base / "{node_id}"), MonitorOptions(
        source="", quiet=True, inline_alerts=["probe > 0 -> info: probe"]))
    alerts = guard.head_run_dir / "alerts.jsonl"
    rng = random.Random(ranks)
    per = ranks // len(nodes)
    plans: list[list[tuple[float, int]]] = [[] for _ in actors]
    probes = max(4, int(seconds * 2))
    for i in range(probes):
        plans[rng.randrange(len(actors))].append((1.0 + i * (seconds - 2) / probes,
                                                  rng.randrange(per)))
    time.sleep(3)  # the agents' start
    futures = [a.steady.remote(1, seconds, plan) for a, plan in zip(actors, plans, strict=True)]
    seen: dict[tuple[int, int], float] = {}
    offset = 0
    while len(ray.wait(futures, num_returns=len(futures), timeout=0)[0]) < len(futures):
        offset = _read_alerts(alerts, offset, seen)
        time.sleep(0.002)
    written = sum(ray.get(futures), [])
    deadline = time.monotonic() + 10
    while len(seen) < len(written) and time.monotonic() < deadline:
        offset = _read_alerts(alerts, offset, seen)
        time.sleep(0.002)
    guard.finish()
    ray.get([a.close.remote() for a in actors])
    shutil.rmtree(base, ignore_errors=True)
    lags = sorted((seen[(r, s)] - at) * 1000 for r, s, at in written if (r, s) in seen)
    assert len(lags) == len(written), (len(lags), len(written))
    rate = ranks * 10 * 2  # a step a rank every 0.1 s, two metrics
    return {"ranks": ranks, "steady_events_per_s": rate, "probes": len(lags),
            "lag_ms_p50": round(lags[len(lags) // 2], 1),
            "lag_ms_max": round(lags[-1], 1)}


def _read_alerts(path: Path, offset: int, seen: dict[tuple[int, int], float]) -> int:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return offset
    end = data.rfind(b"\n") + 1
    now = time.time()
    for raw in data[:end].splitlines():
        obj = json.loads(raw)
        if obj["rule"].startswith("inline") and obj["state"] == "firing":
            seen.setdefault((obj["rank"], obj["step"]), now)
    return offset + end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="32,256")
    parser.add_argument("--events", type=int, default=320_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(NODES - 1):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        nodes = sorted((n for n in ray.nodes() if n["Alive"]), key=lambda n: n["NodeID"])
        for ranks in (int(x) for x in args.ranks.split(",")):
            print(json.dumps(backlog(nodes, ranks, args.events)), flush=True)
            print(json.dumps(lag(nodes, ranks, args.seconds)), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
