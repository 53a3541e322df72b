"""Stream and batch give the same alerts, always: a run read whole (``monitor --once``) and the
same run followed while its rank files grow in random cuts raise identical alerts (rule, step,
rank, state, message), for every rule kind (thresholds with ``for``, spikes, window functions,
drops and rises, step staleness, non-finite checks; scopes rank, any, all and mean; the
cross-rank straggler score), in both line forms. Real files in a real run directory."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainguard.monitor.daemon import Monitor
from trainguard.monitor.ingest.sources import DirectorySource
from trainguard.rules.loader import load_rules

RULES = """
pack: kinds
rules:
  - {id: k.threshold_for, metric: loss, condition: "> 2", for: 3, severity: high}
  - {id: k.keep_firing, metric: loss, condition: "> 2.5", keep_firing_for: 4, cooldown: 5}
  - {id: k.repeat, metric: kl, condition: "> 0.5", repeat_interval: 7}
  - {id: k.spike, metric: grad_norm, condition: "spike(grad_norm, 3x, window=20, min_count=5)"}
  - {id: k.window, metric: kl, condition: "mean(kl, 10) > 0.3 and std(kl, 10) >= 0", for: 2}
  - {id: k.slope, metric: loss, condition: "slope(loss, 15) > 0.01 and zscore(loss, 20) > 1"}
  - {id: k.drop, metric: reward, condition: "drop(reward, 50%, baseline=10)", for: 3}
  - {id: k.rise, metric: entropy, condition: "rise(entropy, 100%, window=10)"}
  - {id: k.stale_steps, metric: reward, condition: "stale(reward, 15)"}
  - {id: k.nonfinite, metric: grad_norm, condition: "nonfinite", severity: critical}
  - {id: k.any, metric: loss, condition: "> 2.2", scope: any, for: 2}
  - {id: k.all, metric: kl, condition: "> 0.4", scope: all}
  - {id: k.mean, metric: loss, condition: "> 1.8", scope: mean, for: 2}
  - {id: k.straggler, metric: ranks/straggler_score, condition: "< 0.8", for: 3}
"""

STEPS = 160


def _rank_lines(rank: int, seed: int, one_metric: bool) -> list[str]:
    """A rank's run with faults every rule kind sees: a loss that rises and falls back, KL
    bursts, a grad-norm spike and a NaN, a reward that collapses then stops being logged, an
    entropy jump, and rank 1 slowing down."""
    rng = random.Random(seed * 10 + rank)
    lines = []
    for step in range(1, STEPS + 1):
        metrics: dict[str, float | str] = {
            "loss": 1.0 + 0.05 * rng.random() + (1.8 if 60 <= step < 80 + 5 * rank else 0.0),
            "kl": 0.1 + (0.6 if step % 37 < 4 + rank else 0.0),
            "grad_norm": 1.0 + 0.1 * rng.random() + (20.0 if step == 90 + rank else 0.0),
            "entropy": 1.0 + (2.5 if step > 120 else 0.0),
            "step_time": 1.0 + 0.05 * rng.random() + (1.0 if rank == 1 and step > 100 else 0.0),
        }
        if step < 130:
            metrics["reward"] = 1.0 if step < 50 + 10 * rank else 0.2
        if step == 140 and rank == 0:
            metrics["grad_norm"] = "NaN"
        if rng.random() < 0.05:
            del metrics["kl"]
        t = 1.7e9 + step
        if one_metric:
            lines += [json.dumps({"time": t, "step": step, "rank": rank, "name": k, "value": v})
                      + "\n" for k, v in metrics.items()]
        else:
            lines.append(json.dumps({"time": t, "step": step, "rank": rank, "metrics": metrics})
                         + "\n")
    return lines


def _alerts(run_dir: Path, rank_lines: dict[int, list[str]], cuts: list[tuple[int, int]] | None,
            rules: list) -> list[tuple]:
    """Alerts of a monitor over ``run_dir``: the files written whole before it reads (batch),
    or grown by ``cuts`` ((rank, lines)) with a poll after each (stream)."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    handles = {r: open(run_dir / f"events.rank{r}.jsonl", "w")  # noqa: SIM115 - closed below
               for r in rank_lines}
    try:
        monitor = Monitor(DirectorySource(run_dir), rules)
        if cuts is None:
            for rank, lines in rank_lines.items():
                handles[rank].writelines(lines)
                handles[rank].flush()
        else:
            done = dict.fromkeys(rank_lines, 0)
            for rank, n in cuts:
                lines = rank_lines[rank]
                handles[rank].writelines(lines[done[rank]:done[rank] + n])
                handles[rank].flush()
                done[rank] = min(len(lines), done[rank] + n)
                monitor.poll_once()
            for rank, lines in rank_lines.items():  # what the cuts left
                handles[rank].writelines(lines[done[rank]:])
                handles[rank].flush()
        verdict = monitor.run(once=True)
    finally:
        for handle in handles.values():
            handle.close()
        monitor.source.close()
    return [(a.rule, a.step, a.rank, a.state, a.message) for a in verdict.alerts]


def _rules(tmp_path: Path) -> list:
    path = tmp_path / "kinds.yaml"
    path.write_text(RULES)
    return load_rules(["common", str(path)])


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 1000), ranks=st.integers(1, 3), one_metric=st.booleans(),
       cuts=st.lists(st.tuples(st.integers(0, 2), st.integers(1, 60)), min_size=1,
                     max_size=40))
def test_random_cuts_of_a_growing_run_raise_the_alerts_of_the_whole_run(
        tmp_path: Path, seed: int, ranks: int, one_metric: bool,
        cuts: list[tuple[int, int]]) -> None:
    """Followed in random cuts or read whole: the same alerts, in the same order per rule."""
    rules = _rules(tmp_path)
    rank_lines = {r: _rank_lines(r, seed, one_metric) for r in range(ranks)}
    batch = _alerts(tmp_path / "batch", rank_lines, None, rules)
    stream = _alerts(tmp_path / "stream", rank_lines,
                     [(r % ranks, n) for r, n in cuts], rules)
    fired = {a[0] for a in batch}
    assert {"k.threshold_for", "k.spike", "k.nonfinite", "common.nonfinite_grad_norm"} <= fired
    assert sorted(batch) == sorted(stream)
    for rule in fired:
        assert [a for a in batch if a[0] == rule] == [a for a in stream if a[0] == rule]


def test_a_rank_far_ahead_in_one_read_still_gets_straggler_scores(tmp_path: Path) -> None:
    """A finished 2-rank run read whole, each rank file 40,000 steps: the straggler fires at
    the step it fires at when followed (rank 1 slows at step 30,000 and the score's median
    window is 10 steps), not thousands of steps later (pending steps were dropped at 256)."""
    lines = {}
    for rank in (0, 1):
        lines[rank] = [json.dumps({"step": s, "rank": rank, "metrics": {
            "loss": 1.0, "step_time": 2.0 if rank == 1 and s >= 30_000 else 1.0}}) + "\n"
            for s in range(1, 40_001)]
    alerts = _alerts(tmp_path / "run", lines, None, load_rules(["common"]))
    assert [("common.straggler", 30_006, 1, "firing")] == [a[:4] for a in alerts]
    assert not math.isnan(alerts[0][1])
