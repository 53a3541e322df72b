"""Evaluating records in large batches raises exactly the alerts record-by-record evaluation
raises: same rules, steps, ranks, states, messages (baselines included), in the same order."""

from __future__ import annotations

import math
import random

from trainguard.monitor.engine.engine import BATCH_MIN, Engine
from trainguard.rules.loader import builtin_pack_names, load_rules

#: Keys TRL trainers log, at healthy levels; faults are injected below.
_LEVELS = {"loss": 0.6, "grad_norm": 1.0, "learning_rate": 1e-5, "entropy": 1.2, "kl": 0.05,
           "reward": 0.5, "reward_std": 0.3, "frac_reward_zero_std": 0.1,
           "completions/clipped_ratio": 0.1, "completions/mean_length": 200.0,
           "rewards/margins": 0.5, "rewards/accuracies": 0.7, "logps/chosen": -50.0,
           "logps/rejected": -60.0, "step_time": 1.0, "num_tokens": 1e6}


def _stream(seed: int, steps: int = 600, ranks: int = 2) -> list[tuple[int, int, dict[str, float],
                                                                       float | None]]:
    rng = random.Random(seed)
    out = []
    for step in range(1, steps + 1):
        for rank in range(ranks):
            metrics = {}
            for key, level in _LEVELS.items():
                if rng.random() < 0.05:
                    continue
                value = level * (1 + 0.05 * rng.gauss(0, 1))
                if step > 300 and key == "loss":
                    value *= 3  # a loss that triples
                if 200 < step < 260 and key == "kl":
                    value = 5.0  # a KL blow-up that resolves
                if step == 400 + rank and key == "grad_norm":
                    value = math.nan
                if step > 450 and key == "learning_rate":
                    value = 0.0
                if step > 500 and key == "entropy":
                    value = 0.01
                metrics[key] = value
            out.append((rank, step, metrics, 1.7e9 + step * (700 if step == 350 else 10)))
    return out


def _alerts(engine: Engine, records: list, sizes: list[int] | None) -> list[tuple]:
    got = []
    if sizes is None:
        for record in records:
            got.extend(engine.evaluate(*record))
    else:
        i = 0
        for size in sizes:
            got.extend(engine.evaluate_many(records[i:i + size]))
            i += size
        got.extend(engine.evaluate_many(records[i:]))
    return [(a.rule, a.step, a.rank, a.state, a.message, a.recommendation) for a in got]


def test_large_batches_raise_the_alerts_of_record_by_record_evaluation() -> None:
    """Every built-in rule, two ranks, faults that fire and resolve: identical alert lists."""
    rules = load_rules(builtin_pack_names())
    for seed in range(3):
        records = _stream(seed)
        expected = _alerts(Engine(rules), records, None)
        assert len({a[0] for a in expected}) >= 5, expected  # the faults do fire rules
        assert any(a[3] == "resolved" for a in expected)
        rng = random.Random(seed)
        sizes = [rng.choice((1, 5, BATCH_MIN, 2 * BATCH_MIN + 3, 250, 700)) for _ in range(40)]
        assert _alerts(Engine(rules), records, sizes) == expected


def test_one_batch_of_a_whole_run_raises_the_same_alerts() -> None:
    """A finished run read in one go (``monitor --once``) is judged as if followed live."""
    rules = load_rules(["common", "grpo_safe"])
    records = _stream(7, ranks=1)
    expected = _alerts(Engine(rules, "grpo"), records, None)
    assert expected
    assert _alerts(Engine(rules, "grpo"), records, [len(records)]) == expected


def test_a_poll_of_many_files_is_evaluated_in_bounded_batches(tmp_path, monkeypatch) -> None:
    """A poll reads a chunk of every rank file; records are evaluated every MAX_HELD_RECORDS,
    not all at the end of the poll, and the alerts are the same as in one batch."""
    import json

    from trainguard.monitor import daemon
    from trainguard.monitor.ingest import gather
    from trainguard.monitor.ingest.sources import DirectorySource

    for rank in range(3):
        with open(tmp_path / f"rank{rank}.jsonl", "w") as handle:
            for step in range(200):
                loss = math.nan if step == 150 + rank else 0.5
                handle.write(json.dumps({"step": step, "rank": rank, "metrics": {"loss": loss}},
                                        allow_nan=True) + "\n")

    def alerts_and_batches(bound: int) -> tuple[list[tuple], int]:
        monkeypatch.setattr(gather, "MAX_HELD_RECORDS", bound)
        monitor = daemon.Monitor(DirectorySource(tmp_path), load_rules(["common"]))
        calls = []
        take = monitor._take_done
        monkeypatch.setattr(monitor, "_take_done", lambda: (calls.append(len(monitor._done)),
                                                              take()))
        monitor.run(once=True)
        return [(a.rule, a.rank, a.step, a.state) for a in monitor.alerts], max(calls)

    whole, held_whole = alerts_and_batches(10**9)
    bounded, held_bounded = alerts_and_batches(50)
    assert [a[:3] for a in whole if a[3] == "firing"] == [
        ("common.nonfinite_loss", 0, 150), ("common.nonfinite_loss", 1, 151),
        ("common.nonfinite_loss", 2, 152)]
    assert bounded == whole
    assert (held_whole, held_bounded) == (600, 200)  # one file's block at most, not all three
