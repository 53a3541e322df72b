"""The batch form of every condition gives what the per-record closures give, record by record.

Each built-in rule's condition is run over random series (finite values, NaN, inf, exact
zeros, missing metrics, repeated steps, records without a time) both ways: one record at a
time through the closure, and in batches cut at random points through its ``.many`` entry point
(:mod:`trainguard.rules.vector`), with single records through the closure in between, on one
shared state. Known/unknown must match exactly, values to rounding (batches sum with prefix
sums).
"""

from __future__ import annotations

import math
import random

import pytest

from trainguard.rules import vector
from trainguard.rules.dsl import compile_condition, many_of
from trainguard.rules.loader import builtin_pack_names, load_rules
from trainguard.rules.vector import Batch


def _series(names: list[str], n: int, rng: random.Random) -> list[tuple[int, float | None,
                                                                      dict[str, float]]]:
    out = []
    level = {name: rng.uniform(-2, 5) for name in names}
    t = 1.7e9
    step = 0
    for _ in range(n):
        step += rng.choice((0, 1, 1, 1, 2))  # 0: a second record of a step
        t += rng.choice((0.0, 0.5, 30.0, 400.0))
        metrics: dict[str, float] = {}
        for name in names:
            r = rng.random()
            if r < 0.08:
                continue  # not logged this step
            if r < 0.10:
                metrics[name] = rng.choice((math.nan, math.inf, -math.inf))
            elif r < 0.14:
                metrics[name] = 0.0
            else:
                level[name] += rng.gauss(0, 0.3)
                metrics[name] = level[name] * rng.uniform(0.5, 1.5) if r < 0.2 else level[name]
        out.append((step, None if rng.random() < 0.05 else t, metrics))
    return out


def _close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def _check(text: str, metric: str | None, seed: int, n: int = 400) -> None:
    cond = compile_condition(text, metric)
    assert cond.batched, text
    rng = random.Random(seed)
    series = _series(sorted(cond.metrics), n, rng)
    evaluator, ctx = cond.instantiate(0)
    expected = []
    for step, t, metrics in series:
        ctx.step, ctx.time, ctx.baseline = step, t, None
        expected.append((evaluator(metrics), ctx.baseline))
    # A second evaluator fed in batches of random sizes, and between them single records
    # through its closure: both entry points share one state.
    evaluator, ctx = cond.instantiate(0)
    many = many_of(evaluator)
    got: list[tuple[float | None, float | None]] = []
    i = 0
    while i < n:
        size = rng.choice((1, 1, 2, 3, 5, 17, 64, 200))
        part = series[i:i + size]
        if size == 1 and rng.random() < 0.5:
            step, t, metrics = part[0]
            ctx.step, ctx.time, ctx.baseline = step, t, None
            got.append((evaluator(metrics), ctx.baseline))
            i += 1
            continue
        batch = Batch([s for s, _, _ in part], [t for _, t, _ in part], [m for _, _, m in part])
        values, known = many(batch)
        base = batch.baseline
        for j in range(len(part)):
            b = None if base is None or math.isnan(base[j]) else float(base[j])
            got.append((float(values[j]) if known[j] else None, b))
        i += size
    for index, ((want, want_base), (have, have_base)) in enumerate(zip(expected, got)):
        where = f"{text!r} record {index} {series[index]}"
        assert (want is None) == (have is None), where
        if want is not None and have is not None:
            assert _close(float(want), have), f"{where}: {want} != {have}"
        if want is not None:
            assert (want_base is None) == (have_base is None), where
            if want_base is not None and have_base is not None:
                assert _close(want_base, have_base), where


_BUILTIN = sorted({(r.rule.condition, r.rule.metric)
                   for r in load_rules(builtin_pack_names())}, key=str)


@pytest.mark.parametrize(("text", "metric"), _BUILTIN, ids=[c for c, _ in _BUILTIN])
def test_builtin_condition_batch_form_matches_per_record(text: str, metric: str) -> None:
    """Every built-in rule's condition: batches cut anywhere give the closure's results."""
    for seed in range(4):
        _check(text, metric, seed)


@pytest.mark.parametrize("text", [
    "a / b > 1", "-(a - b) < 0 or not a > 1", "(a > 1) and (b < 2)", "a / b",
    "frac_true(a > 1, 10, min_count=3) > 0.5", "min(a, 5, previous=1)", "max(a, 7)",
    "mean(a, 5, previous=1, min_count=2)", "std(b, 4, previous=1)", "stale(a, 3)",
    "stale(a, 100s)", "zscore(a, 5, min_count=2)", "slope(a, 3)", "drop(a, 30%, window=4)",
    "rise(a, 20%, baseline=3)", "range(a, -1, 1)", "spike(a, 1.5x, window=5, min_count=2)",
    "a * 2 + b - 1 >= 0.5 * mean(b, 3)", "nonfinite(a) or nonfinite(b)",
])
def test_language_construct_batch_form_matches_per_record(text: str) -> None:
    """Each construct of the language, outside the built-in packs too."""
    for seed in range(12):
        _check(text, "a", seed)


@pytest.mark.parametrize("smallest", [True, False], ids=["min", "max"])
def test_extremes_with_and_without_bottleneck_agree(smallest: bool,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The min/max kernel: bottleneck's moving window and numpy's sparse table give the same
    counts and extremes, on histories with the neutral infinity and windows of any length."""
    pytest.importorskip("bottleneck")
    rng = random.Random(3)
    fill = math.inf if smallest else -math.inf
    for _ in range(300):
        window, n = rng.randint(1, 40), rng.randint(1, 60)
        history = [rng.choice([fill, rng.random()]) for _ in range(rng.randint(0, window))]
        x = vector.np.array([rng.random() * 4 - 2 for _ in range(n)])
        previous = rng.random() < 0.5
        monkeypatch.setattr(vector, "_BOTTLENECK", [])
        fast = vector.extremes(history, x, window, previous, smallest)
        monkeypatch.setattr(vector, "_BOTTLENECK", [None])
        slow = vector.extremes(history, x, window, previous, smallest)
        assert all(vector.np.array_equal(a, b) for a, b in zip(fast, slow, strict=True))
