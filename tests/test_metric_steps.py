"""Blocks of one-metric lines taken as columns (``ingest/metric_steps.py``,
``monitor/step_columns.py``) give what the record path gives: the same alerts (messages and
baselines included), counts, skips, last records and report columns."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainguard.monitor.check import check_run
from trainguard.monitor.daemon import Monitor
from trainguard.monitor.ingest.metric_steps import MIN_COLUMN_LINES
from trainguard.monitor.ingest.normalize import FieldMap
from trainguard.monitor.ingest.sources import FileSource
from trainguard.rules.loader import load_rules

RULES = load_rules(["common", "sft_basic"])


class _Spy:
    """Counts the blocks ``Monitor._evaluate_steps`` took as columns (so a test that compares
    the two paths knows the column path ran)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, off: bool = False) -> None:
        self.taken = 0
        original = Monitor._evaluate_steps

        def spy(monitor: Monitor, steps: Any, count: int) -> bool:
            if off:
                return False
            taken = original(monitor, steps, count)
            self.taken += taken
            return taken

        monkeypatch.setattr(Monitor, "_evaluate_steps", spy)


def _run_lines(steps: int, seed: int, *, names: tuple[str, ...] = ("loss",)) -> list[bytes]:
    """One metric a step of a run whose loss spikes (steps 600-650), goes NaN once (a
    ``"NaN"`` string, as the writer spells it), and whose grad norm explodes at the end."""
    rng = random.Random(seed)
    out = []
    for step in range(1, steps + 1):
        name = names[step % len(names)]
        value: float | str = {"loss": 2.0 * math.exp(-step / 2000) + 0.01 * rng.random(),
                              "grad_norm": 1.0 + 0.1 * rng.random()}.get(name, rng.random())
        if name == "loss" and 600 <= step < 650:
            value = float(value) * 5
        if name == "loss" and step == steps * 3 // 4:
            value = "NaN"
        if name == "grad_norm" and step > steps - 40:
            value = 1e6
        out.append(json.dumps({"time": 1.7e9 + step * 0.5, "step": step, "name": name,
                               "value": value}).encode())
    return out


def _verdict_key(path: Path) -> tuple[Any, ...]:
    result = check_run(str(path), collect=True)
    v = result.verdict
    cols = result.columns
    assert cols is not None
    return ([a.to_json() for a in v.alerts], v.events, v.records, dict(v.skips),
            v.skip_examples, v.notes, result.trainer,
            (list(cols.steps), cols.ranks, cols.names, [str(x) for x in cols.values],
             [str(x) for x in cols.times], cols.kinds))


@pytest.mark.parametrize("names", [("loss",), ("loss", "grad_norm", "learning_rate")])
def test_check_of_one_metric_steps_as_columns_equals_the_record_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, names: tuple[str, ...]) -> None:
    """check over 30,000 one-metric steps (two blocks of the file), taken as columns, gives the
    verdict, alerts and report columns the record path gives."""
    path = tmp_path / "run.jsonl"
    path.write_bytes(b"\n".join(_run_lines(30_000, 1, names=names)) + b"\n")
    with monkeypatch.context() as patch:
        reference = _Spy(patch, off=True)
        expected = _verdict_key(path)
    spy = _Spy(monkeypatch)
    got = _verdict_key(path)
    assert spy.taken >= 2 and reference.taken == 0
    assert expected[0], "the run raises alerts to compare"
    assert expected == got


def _outcome(monitor: Monitor) -> tuple[Any, ...]:
    c = monitor.counters
    last = {rank: (r.step, r.metrics, r.time, r.kind, r.host, r.local_rank)
            for rank, r in monitor.last_records.items()}
    return ([(a.rule, a.rank, a.step, a.state, a.message, a.time, a.host, a.local_rank)
             for a in monitor.alerts],
            c.events, c.records, dict(c.skips), c.examples, last)


def _follow(path: Path, pieces: list[bytes], *, columns: bool,
            field_map: FieldMap | None = None) -> tuple[Any, ...]:
    """Append ``pieces`` to ``path`` one at a time, the monitor reading after each."""
    path.write_bytes(b"")
    monitor = Monitor(FileSource(path), RULES, field_map=field_map)
    monitor.columns = columns
    for piece in pieces:
        with open(path, "ab") as handle:
            handle.write(piece)
        monitor.poll_once()
    monitor.flush()
    monitor._drain_queue(release_all=True)
    for alert in monitor.engine.finish():
        monitor.route(alert)
    monitor.source.close()
    return _outcome(monitor)


_kind = st.sampled_from([None, None, None, "eval"])
_odd = st.sampled_from(["same_step", "no_time", "rank1", "kind", "garbage", "nan", "host",
                        "iso", None, None, None, None, None, None, None, None])


@st.composite
def _lines(draw: st.DrawFn) -> list[bytes]:
    """Mostly one metric a step; now and then a line that the columns must refuse or carry:
    a second metric of a step, no time, another rank or kind, garbage, a NaN, a host."""
    n = draw(st.integers(MIN_COLUMN_LINES, 700))
    seed = draw(st.integers(0, 10_000))
    rng = random.Random(seed)
    odd_rate = draw(st.sampled_from([0.0, 0.002, 0.02, 0.2]))
    names = draw(st.sampled_from([("loss",), ("loss", "grad_norm"), ("loss", "eval_loss")]))
    where = draw(st.sampled_from([{}, {"rank": 0, "host": "node-1", "local_rank": 0},
                                  {"rank": 3, "kind": "train"}]))
    out: list[bytes] = []
    step = draw(st.integers(0, 5))
    for i in range(n):
        odd = draw(_odd) if rng.random() < odd_rate else None
        step += 0 if odd == "same_step" else 1
        name = names[i % len(names)]
        value: Any = 1.0 + 0.01 * rng.random() + (4.0 if 300 <= i < 340 else 0.0)
        line: dict[str, Any] = {"time": 1.7e9 + i, "step": step, "name": name,
                                "value": value, **where}
        if odd == "no_time":
            del line["time"]
        elif odd == "rank1":
            line["rank"] = 1
        elif odd == "kind":
            line["kind"] = "eval"
        elif odd == "nan":
            line["value"] = "NaN"
        elif odd == "host":
            line["host"] = "node-2"
            line["local_rank"] = 0
        elif odd == "iso":
            line["time"] = "2024-11-23T08:00:00.500Z"
        out.append(b"{oops" if odd == "garbage" else json.dumps(
            line, separators=(",", ":")).encode())
    return out


@settings(max_examples=60, deadline=None)
@given(_lines(), st.lists(st.integers(0, 10_000), max_size=4), st.booleans())
def test_followed_one_metric_lines_give_the_same_outcome_as_columns_or_records(
        lines: list[bytes], cuts: list[int], renamed: bool) -> None:
    """A file of one-metric lines appended in pieces cut anywhere (mid-line too), with the odd
    line of another form, rank, kind or time: the columns path raises the alerts, counts and
    skips, and keeps the last records, that the record path does."""
    import tempfile

    data = b"\n".join(lines) + b"\n"
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    pieces = [data[a:b] for a, b in zip(points, points[1:], strict=False)]
    field_map = FieldMap({"eval_loss": "loss_eval"}) if renamed else None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.jsonl"
        expected = _follow(path, pieces, columns=False, field_map=field_map)
        got = _follow(path, pieces, columns=True, field_map=field_map)
    assert expected == got


def test_steps_of_several_metrics_are_not_taken_as_columns(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """Ten one-metric lines a step stay on the record path: each step is one record of ten
    metrics, as before."""
    spy = _Spy(monkeypatch)
    path = tmp_path / "run.jsonl"
    path.write_bytes(b"".join(json.dumps({"step": s, "name": f"m{i}", "value": 1.0}).encode()
                              + b"\n" for s in range(1, 201) for i in range(10)))
    result = check_run(str(path))
    assert (2000, 200, 0) == (result.verdict.events, result.verdict.records, spy.taken)


def test_a_step_begun_in_one_block_and_ended_in_the_next_is_one_record(tmp_path: Path) -> None:
    """The last line of a block taken as columns waits for more of its step: a second metric
    of that step in the next block joins it in one record."""
    path = tmp_path / "events.jsonl"
    first = b"".join(json.dumps({"step": s, "name": "loss", "value": 1.0}).encode() + b"\n"
                     for s in range(1, 101))
    second = b"".join(json.dumps({"step": s, "name": n, "value": 2.0}).encode() + b"\n"
                      for s, n in [(100, "grad_norm")] + [(s, "loss") for s in range(101, 201)])
    path.write_bytes(first)
    monitor = Monitor(FileSource(path), RULES)
    monitor.poll_once()
    assert monitor._pending[(str(path), 0)].metrics == {"loss": 1.0}
    with open(path, "ab") as handle:
        handle.write(second)
    monitor.poll_once()
    monitor.flush()
    monitor.source.close()
    assert (201, 200) == (monitor.counters.events, monitor.counters.records)
    assert {"loss": 2.0} == monitor.last_records[0].metrics


def test_a_block_of_another_metric_fails_the_named_decode_and_is_read_as_plain_lines(
        tmp_path: Path) -> None:
    """After a block of ``loss`` lines the next is decoded first as ``loss`` lines; a block
    of ``kl`` lines fails that, is read as plain lines, and the stream then expects ``kl``."""
    path = tmp_path / "events.jsonl"

    def lines(name: str, steps: range) -> bytes:
        return b"".join(json.dumps({"step": s, "name": name, "value": 0.5}).encode() + b"\n"
                        for s in steps)

    path.write_bytes(lines("loss", range(1, 201)))
    monitor = Monitor(FileSource(path), RULES)
    monitor.poll_once()
    assert {str(path): "loss"} == monitor._block_names
    with open(path, "ab") as handle:
        handle.write(lines("kl", range(201, 401)))
    monitor.poll_once()
    monitor.flush()
    monitor.source.close()
    assert {str(path): "kl"} == monitor._block_names
    assert (400, 400, {"kl": 0.5}) == (monitor.counters.events, monitor.counters.records,
                                       monitor.last_records[0].metrics)
