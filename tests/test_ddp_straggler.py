"""examples/ddp_straggler.py: a real 2-rank DDP loop (torchrun, gloo on CPU) with rank 1 made
slow; the monitor's common.straggler names rank 1 and no other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytest.importorskip("torch")
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "ddp_straggler.py"


@pytest.mark.slow
def test_a_rank_forwarding_four_times_is_named_as_the_straggler(tmp_path: Path):
    """torchrun --nproc-per-node 2, rank 1 slow: every straggler alert names rank 1."""
    run_dir = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    train = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(EXAMPLE), "--run-dir", str(run_dir), "--steps", "25", "--slow-rank", "1",
         "--slow-factor", "4"],
        capture_output=True, timeout=120, env=env, check=False)
    assert 0 == train.returncode, train.stderr.decode()[-2000:]
    result = run_cli("monitor", str(run_dir), "--once", "--rules", "common")
    fired = {(a["rule"], a["rank"]) for a in map(json.loads, (run_dir / "alerts.jsonl").open())
             if a["state"] == "firing"}
    assert (0, {("common.straggler", 1)}) == (result.returncode, fired)
