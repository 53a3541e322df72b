"""The head's spool and the node agent, without Ray: exactly once by stream and offset.

The agent ships through a plain function that calls the real spool (what the monitor actor's
``ingest`` does, minus the actor call); the Ray path itself is tested in test_ray_cluster.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import run_cli
from trainguard.control import read_stop_request
from trainguard.emitters.writer import EventWriter
from trainguard.monitor.ray.agent import AGENT_STATE, AgentBatch, AgentConfig, NodeAgent
from trainguard.monitor.ray.service import DrainingStop, NodeHealth
from trainguard.monitor.ray.spool import Chunk, Spool, safe_part


def test_a_chunk_shipped_again_is_dropped_and_its_unseen_tail_kept(tmp_path):
    """Offsets de-duplicate: the same bytes twice land once; an overlap keeps only what is new."""
    spool = Spool(tmp_path)
    assert spool.append("n1", [Chunk("a.jsonl", 0, b"1\n2\n")]) == {"a.jsonl": 4}
    assert spool.append("n1", [Chunk("a.jsonl", 0, b"1\n2\n")]) == {"a.jsonl": 4}
    assert spool.append("n1", [Chunk("a.jsonl", 2, b"2\n3\n")]) == {"a.jsonl": 6}
    assert spool.path("n1", "a.jsonl").read_bytes() == b"1\n2\n3\n"
    assert (spool.duplicates, spool.duplicate_bytes) == (2, 6)


def test_a_restarted_spool_knows_its_lengths_from_its_files(tmp_path):
    """The monitor's restart keeps the de-duplication: a spool file's length is the ack."""
    Spool(tmp_path).append("n1", [Chunk("r/a.jsonl", 0, b"1\n")])
    again = Spool(tmp_path)
    assert again.append("n1", [Chunk("r/a.jsonl", 0, b"1\n2\n")]) == {"r/a.jsonl": 4}
    assert again.path("n1", "r/a.jsonl").read_bytes() == b"1\n2\n"


def test_a_hole_is_reported_and_filled_with_blank_lines(tmp_path):
    """A chunk past the spool's length says the head lost bytes: reported, never hidden."""
    spool = Spool(tmp_path)
    spool.append("n1", [Chunk("a.jsonl", 3, b"x\n")])
    assert spool.path("n1", "a.jsonl").read_bytes() == b"\n\n\nx\n"
    assert len(spool.problems()) == 1 and "lost" in spool.problems()[0]


def test_stream_and_node_names_cannot_leave_the_spool(tmp_path):
    """A node label or stream with separators or .. stays inside the spool folder."""
    spool = Spool(tmp_path)
    assert spool.path("../evil", "../../x.jsonl").resolve().is_relative_to(tmp_path.resolve())
    assert safe_part("..") == "_"


def _agent(run_dir: Path, spool: Spool, health: NodeHealth | None = None,
           stop: dict | None = None) -> NodeAgent:
    def ship(batch: AgentBatch) -> dict:
        acked = spool.append(batch.node, batch.chunks)
        if health is not None:
            health.saw(batch)
        return {"acked": acked, "stop": stop}

    return NodeAgent(AgentConfig(node="node1", run_dir=str(run_dir), poll=True), ship)


def _drain(agent: NodeAgent) -> None:
    for _ in range(10):
        if not agent.turn():
            break


def test_an_agent_dead_between_ack_and_checkpoint_repeats_nothing(tmp_path):
    """The batch the dead agent had shipped is shipped again after its restart and dropped."""
    run_dir, spool = tmp_path / "node", Spool(tmp_path / "spool")
    with EventWriter(run_dir, rank=3, world_size=8, host="node1") as writer:
        for step in range(1, 6):
            writer.log_metrics(step, {"loss": 1.0 / step})
        agent = _agent(run_dir, spool)
        _drain(agent)
        state = run_dir / ".trainguard" / AGENT_STATE
        before = state.read_bytes()
        for step in range(6, 9):
            writer.log_metrics(step, {"loss": 1.0 / step})
        _drain(agent)
        agent.close()
        state.write_bytes(before)  # as if killed after the monitor's answer, before the save
        restarted = _agent(run_dir, spool)
        _drain(restarted)
        restarted.close()
    source = (run_dir / "events.rank3.jsonl").read_bytes()
    assert spool.path("node1", "events.rank3.jsonl").read_bytes() == source
    assert spool.duplicates == 1


def test_an_agent_whose_monitor_is_away_ships_the_same_batch_again(tmp_path):
    """A failed call reads nothing more: the same bytes at the same offsets go again."""
    run_dir, spool = tmp_path / "node", Spool(tmp_path / "spool")
    calls = []

    def ship(batch: AgentBatch) -> dict:
        calls.append([(c.stream, c.start, c.data) for c in batch.chunks])
        if len(calls) == 1:
            raise ConnectionError("monitor restarting")
        return {"acked": spool.append(batch.node, batch.chunks), "stop": None}

    with EventWriter(run_dir, rank=0, world_size=2) as writer:
        writer.log_metrics(1, {"loss": 1.0})
        agent = NodeAgent(AgentConfig(node="n", run_dir=str(run_dir), poll=True), ship)
        assert agent.turn() is False
        writer.log_metrics(2, {"loss": 0.5})
        assert agent.turn() is True
        agent.close()
    assert calls[0] == calls[1]
    assert agent.failures == 1 and "ConnectionError" in (agent.last_failure or "")


def test_a_stop_reaches_the_node_control_file_with_the_node_run_id_or_none(tmp_path):
    """A node without rank 0's metadata gets an anonymous request its writers obey."""
    run_dir, spool = tmp_path / "node", Spool(tmp_path / "spool")
    request = {"command": "stop", "rule": "common.nonfinite_loss", "reason": "loss is NaN",
               "step": 5, "time": 1.0, "severity": "critical", "run_id": "run-on-head"}
    with EventWriter(run_dir, rank=9, world_size=16, host="node1") as writer:
        agent = _agent(run_dir, spool, stop=request)
        _drain(agent)
        agent.close()
        written = read_stop_request(run_dir / "control.json")
        assert written is not None and written.run_id is None and written.step == 5
        assert writer.should_stop
    saved = json.loads((run_dir / ".trainguard" / AGENT_STATE).read_text())
    assert saved["stop_written"].startswith("common.nonfinite_loss@5")


def test_node_health_reports_a_silent_node_as_lost_and_never_clean(tmp_path):
    """A node that stopped calling is a problem (so the verdict is degraded), by name."""
    health = NodeHealth(["a", "b"], lost_after=0.0)
    health.saw(AgentBatch("a"))
    problems = health.problems()
    assert any(p.startswith("node b: its agent never reported") for p in problems)
    assert any(p.startswith("node a: lost") for p in problems)


def test_a_draining_stop_ends_the_session_only_after_two_quiet_polls():
    """set() alone does not end the loop; the second quiet poll after it does."""
    stop = DrainingStop()
    assert stop.wait(0) is False and not stop.is_set()
    stop.set()
    assert not stop.is_set()
    stop.wait(0)
    assert not stop.is_set()
    stop.wait(0)
    assert stop.is_set()


def test_the_agent_ignores_the_monitor_outputs_and_its_own_state(tmp_path):
    """alerts.jsonl (the head's) and .trainguard/ are never shipped as events."""
    run_dir, spool = tmp_path / "node", Spool(tmp_path / "spool")
    run_dir.mkdir()
    (run_dir / "alerts.jsonl").write_text('{"rule": "x"}\n')
    (run_dir / "events.rank0.jsonl").write_text('{"step": 1, "metrics": {"loss": 1}}\n')
    agent = _agent(run_dir, spool)
    _drain(agent)
    agent.close()
    shipped = sorted(p.relative_to(spool.root).as_posix() for p in spool.root.rglob("*.jsonl"))
    assert shipped == ["node1/events.rank0.jsonl"]
    shutil.rmtree(run_dir)


def test_monitor_ray_without_the_extra_names_it_and_exits_1(tmp_path):
    """A machine without Ray: ``--ray`` says to install trainguard[ray], exit 1, no traceback."""
    code = ("import sys; sys.modules['ray'] = None; from trainguard.cli import run; "
            f"sys.argv = ['trainguard', 'monitor', '--ray', {str(tmp_path)!r}]; run()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60,
                          env=dict(os.environ, COLUMNS="200"), check=False)
    assert done.returncode == 1
    assert "trainguard[ray]" in done.stderr.decode() and "Traceback" not in done.stderr.decode()


def test_monitor_ray_refuses_a_pid_of_this_host(tmp_path):
    """--pid with --ray is a mistake the message explains (stops go through control files)."""
    done = run_cli("monitor", "--ray", str(tmp_path), "--pid", "1")
    assert done.returncode == 1 and "--stop" in done.stderr.decode()


def test_importing_the_ray_room_or_the_cli_does_not_import_ray():
    """Only starting a Ray session loads Ray: the room's public API is importable without it."""
    code = ("import sys, trainguard.cli, trainguard.monitor.ray as r; "
            "assert 'ray' not in sys.modules, 'ray imported'; print(sorted(r.__all__))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == str(["MISSING_RAY", "run_ray_monitor",
                                                "start_ray_monitor"])
