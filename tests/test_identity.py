"""Identity across nodes: events carry host and local rank; alerts and the postmortem name them."""

from __future__ import annotations

import json
import math

from tests.conftest import run_cli
from tests.test_gpu import _FakeNvml
from trainguard.emitters.writer import EventWriter
from trainguard.events import Record, encode_record, parse_line
from trainguard.monitor.act.postmortem import write_postmortem
from trainguard.monitor.daemon import Monitor
from trainguard.monitor.ingest.gpu import NvmlSource
from trainguard.monitor.ingest.sources import DirectorySource
from trainguard.rules.loader import load_rules


def test_a_rank_of_a_multi_rank_world_writes_its_host_and_local_rank(tmp_path, monkeypatch):
    """LOCAL_RANK and TRAINGUARD_HOST (or the host name) go with rank into every line."""
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("TRAINGUARD_HOST", "gpu-node-7")
    with EventWriter(tmp_path, rank=59, world_size=64) as writer:
        writer.log_metrics(1, {"loss": 0.5})
    line = json.loads((tmp_path / "events.rank59.jsonl").read_text())
    assert (line["rank"], line["host"], line["local_rank"]) == (59, "gpu-node-7", 3)


def test_a_single_process_run_writes_no_identity_fields(tmp_path, monkeypatch):
    """One rank: the line stays as short as before (no rank, host or local rank)."""
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with EventWriter(tmp_path, rank=0, world_size=1) as writer:
        writer.log_metrics(1, {"loss": 0.5})
    line = json.loads((tmp_path / "events.rank0.jsonl").read_text())
    assert set(line) == {"time", "step", "metrics"}


def test_identity_round_trips_and_is_never_a_metric():
    """host and local_rank parse into the record, in every form, never as metrics."""
    record = Record(3, {"loss": math.inf}, 1.0, 9, host="n1", local_rank=1)
    assert parse_line(encode_record(record)) == record
    flat = parse_line(b'{"step": 3, "loss": 1.0, "host": "n1", "local_rank": 1}')
    assert isinstance(flat, Record) and flat.metrics == {"loss": 1.0}
    assert (flat.host, flat.local_rank) == ("n1", 1)
    one = parse_line(b'{"step": 3, "name": "loss", "value": 1, "host": "n1", "local_rank": 2}')
    assert isinstance(one, Record) and (one.host, one.local_rank) == ("n1", 2)


def _alerts_of(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "alerts.jsonl").read_text().splitlines()]


def test_an_alert_names_the_node_and_local_rank_of_its_rank(tmp_path):
    """``trainguard monitor RUN_DIR --once``: the NaN alert of rank 13 says node-b, local 5."""
    for rank, host in ((4, "node-a"), (13, "node-b")):
        with EventWriter(tmp_path / host, rank=rank, world_size=16, host=host,
                         local_rank=rank % 8) as writer:
            for step in range(1, 4):
                writer.log_metrics(step, {"loss": math.nan if rank == 13 and step == 3 else 1.0})
    done = run_cli("monitor", str(tmp_path), "--once", "-q")
    assert done.returncode == 2
    nan = [a for a in _alerts_of(tmp_path) if a["rule"] == "common.nonfinite_loss"]
    assert [(a["rank"], a["host"], a["local_rank"]) for a in nan] == [(13, "node-b", 5)]


def test_the_block_and_the_line_paths_both_keep_the_host(tmp_path):
    """A file read as blocks and stdin read as lines give records with the same identity."""
    with EventWriter(tmp_path, rank=2, world_size=4, host="h2", local_rank=0) as writer:
        for step in range(1, 4):
            writer.log_metrics(step, {"loss": 1.0})
    monitor = Monitor(DirectorySource(tmp_path), load_rules(["common"]))
    monitor.run(once=True)
    assert (monitor.last_records[2].host, monitor.last_records[2].local_rank) == ("h2", 0)
    text = (tmp_path / "events.rank2.jsonl").read_bytes()
    done = run_cli("monitor", "-", "--once", "--record", str(tmp_path / "rec.jsonl"), "-q",
                   input=text)
    assert done.returncode == 0
    recorded = [json.loads(x) for x in (tmp_path / "rec.jsonl").read_text().splitlines()]
    assert {(r["host"], r["local_rank"]) for r in recorded} == {("h2", 0)}


def test_gpu_samples_are_labelled_with_host_local_index_and_a_global_rank():
    """Node 2 of 8-GPU nodes: its GPUs are ranks 16.., local 0.., host named."""
    source = NvmlSource(nvml=_FakeNvml(gpus=2), host="node2", rank_base=16)
    records = [parse_line(line.data) for line in source.sample()]
    source.close()
    assert [(r.rank, r.local_rank, r.host) for r in records] == [(16, 0, "node2"),
                                                                 (17, 1, "node2")]


def test_the_postmortem_names_the_node_of_every_rank(tmp_path):
    """postmortem.json maps each rank to its host and local rank."""
    last = {0: Record(7, {"loss": 1.0}, host="a", local_rank=0),
            9: Record(7, {"loss": math.nan}, host="b", local_rank=1)}
    path = write_postmortem(tmp_path, status="stopped", returncode=None, last_records=last,
                            alerts=[])
    assert json.loads(path.read_text())["nodes"] == {"0": {"host": "a", "local_rank": 0},
                                                     "9": {"host": "b", "local_rank": 1}}
