"""Straggler scores across ranks (monitor/engine/ranks.py), reliability matrix T23."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.conftest import run_cli
from trainguard.monitor.engine.ranks import SCORE_METRIC, StragglerScores


def _feed(scores: StragglerScores, steps: int, slow: dict[int, float], jitter: float,
          ranks: int = 8, seed: int = 0) -> list[tuple[int, int, float]]:
    rng = random.Random(seed)
    out = []
    for step in range(1, steps + 1):
        for rank in range(ranks):
            t = 1.0 * slow.get(rank, 1.0) * (1 + rng.uniform(-jitter, jitter))
            scores.observe(rank, step, {"step_time": t, "loss": 1.0})
        out += [(r, s, m[SCORE_METRIC]) for r, s, m, _ in scores.scores()]
    return out


def test_a_rank_one_and_a_half_times_slower_scores_below_the_threshold():
    """One rank of eight 1.5x slower: its score is about 0.67, the others about 1."""
    out = _feed(StragglerScores(), steps=20, slow={5: 1.5}, jitter=0.05)
    last = {rank: score for rank, step, score in out if step == 20}
    assert 8 == len(last)
    assert 0.6 < last[5] < 0.75
    assert all(score > 0.9 for rank, score in last.items() if rank != 5)


def test_five_percent_jitter_never_scores_below_the_threshold():
    """Healthy ranks with 5% jitter: no score under 0.75 in 1,000 steps."""
    out = _feed(StragglerScores(), steps=1000, slow={}, jitter=0.05, seed=1)
    assert 8000 == len(out)
    assert [] == [(r, s, v) for r, s, v in out if v < 0.75]


def test_a_batch_holding_each_rank_file_in_turn_pairs_up_by_step():
    """Rank 0's whole file then rank 1's, in one batch: every step is scored on both ranks."""
    scores = StragglerScores()
    for rank, value in ((0, 1.0), (1, 2.0)):
        for step in range(1, 51):
            scores.observe(rank, step, {"step_time": value}, float(step))
    out = scores.scores()
    assert 100 == len(out)
    assert (1, 50, {SCORE_METRIC: 0.5}, 50.0) == out[-1]
    assert [] == scores.scores()


def test_a_single_rank_or_a_record_without_step_time_gives_nothing():
    """One rank has no one to be compared with; a record without a step time is not gathered."""
    scores = StragglerScores()
    scores.observe(0, 1, {"step_time": 1.0})
    assert [] == scores.scores()
    scores.observe(1, 1, {"loss": 1.0})
    scores.observe(1, 2, {"step_time": float("nan")})
    scores.observe(0, 2, {"step_time": 1.0})
    assert [] == scores.scores()


def test_pending_steps_are_bounded_when_a_rank_never_reports():
    """A rank that went quiet cannot make the gathered steps grow without bound."""
    scores = StragglerScores(max_pending=16)
    scores.observe(1, 1, {"step_time": 1.0})
    for step in range(1, 1001):
        scores.observe(0, step, {"step_time": 1.0})
        scores.scores()
    assert 16 >= len(scores._pending)
    assert 999 - 16 == scores.dropped_steps  # step 1 completed on both ranks


def _write_ranks(run_dir: Path, slow: dict[int, float], steps: int = 40) -> None:
    rng = random.Random(3)
    for rank in range(8):
        with open(run_dir / f"events.rank{rank}.jsonl", "w") as fh:
            for step in range(1, steps + 1):
                t = slow.get(rank, 1.0) * (1 + rng.uniform(-0.05, 0.05))
                fh.write(json.dumps({"step": step, "rank": rank, "time": 1000.0 + step,
                                     "metrics": {"loss": 1.0, "step_time": t}}) + "\n")


@pytest.mark.parametrize(("slow", "expected"), [({5: 1.5}, [5]), ({}, [])],
                         ids=["rank-5-slow", "healthy"])
def test_monitor_names_the_straggling_rank_of_eight(run_dir: Path, slow: dict[int, float],
                                                     expected: list[int]):
    """Eight rank files, one 1.5x slower: `trainguard monitor --once` flags that rank only."""
    _write_ranks(run_dir, slow)
    result = run_cli("monitor", str(run_dir), "--once", "--rules", "common", "-q")
    alerts = [json.loads(line) for line in (run_dir / "alerts.jsonl").read_text().splitlines()]
    flagged = sorted({a["rank"] for a in alerts
                      if a["rule"] == "common.straggler" and a["state"] == "firing"})
    assert expected == flagged
    assert 0 == result.returncode  # a straggler is a medium warning, not a failed run
