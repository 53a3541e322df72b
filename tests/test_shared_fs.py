"""A run directory on a shared filesystem (NFS, Lustre, GPFS): rank files in per-node folders,
followed by polling, since inotify does not see other hosts' writes.

The smaller variant of ``benchmarks/bench_shared_fs.py`` (which times 1,024 and 4,096 files):
256 rank files in 32 node folders, through the real CLI with ``--poll``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import run_cli
from trainguard.emitters.writer import EventWriter

pytestmark = pytest.mark.slow

RANKS, PER_NODE = 256, 8


def _wait_for(path, proc, timeout=60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_polling_follows_rank_files_in_nested_node_folders_and_names_the_node(tmp_path):
    """``monitor RUN_DIR --poll --stop``: every one of 256 files in 32 node folders is read, a
    NaN appended later deep in the tree stops the run and its alert names the node."""
    run_dir, report = tmp_path / "run", tmp_path / "report.json"
    writers = [EventWriter(run_dir / f"node{r // PER_NODE}", rank=r, world_size=RANKS,
                           host=f"node{r // PER_NODE}", local_rank=r % PER_NODE)
               for r in range(RANKS)]
    for w in writers:
        w.log_metrics(1, {"loss": 1.0})
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200")
    proc = subprocess.Popen([sys.executable, "-m", "trainguard", "monitor", str(run_dir), "--poll",
                             "--poll-interval", "0.2", "--stop", "--report", str(report), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        _wait_for(run_dir / ".trainguard" / "state.json", proc)  # the first pass is done
        for w in writers:
            w.log_metrics(2, {"loss": math.nan if w.rank == 77 else 0.9})
        _wait_for(run_dir / "control.json", proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        proc.stderr.close()
        for w in writers:
            w.close()
    assert proc.returncode == 2
    streams = json.loads(report.read_text())["streams"]
    assert len(streams) == RANKS and {s["lines"] for s in streams.values()} == {2}
    alerts = [json.loads(x) for x in (run_dir / "alerts.jsonl").read_text().splitlines()]
    nan = [a for a in alerts if a["rule"] == "common.nonfinite_loss" and a["state"] == "firing"]
    assert [(a["rank"], a["host"], a["local_rank"], a["step"]) for a in nan] == [
        (77, "node9", 5, 2)]


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs util-linux prlimit")
def test_a_low_soft_open_files_limit_is_raised_so_every_rank_file_is_read(tmp_path):
    """Started with a soft limit of 256 open files (hard 4,096), the monitor still reads 400
    rank files: it raises its soft limit to the hard one."""
    for rank in range(400):
        folder = tmp_path / f"node{rank // 8}"
        folder.mkdir(exist_ok=True)
        (folder / f"events.rank{rank}.jsonl").write_text(
            json.dumps({"step": 1, "rank": rank, "metrics": {"loss": 1.0}}) + "\n")
    report = tmp_path / "report.json"
    done = run_cli("monitor", str(tmp_path), "--once", "-q", "--report", str(report),
                   "--alerts", str(tmp_path / "a.out"), prefix=["prlimit", "--nofile=256:4096"])
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    streams = json.loads(report.read_text())["streams"]
    assert len(streams) == 400 and {s["lines"] for s in streams.values()} == {1}
