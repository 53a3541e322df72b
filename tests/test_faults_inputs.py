"""Fault injection, inputs: what someone who can write the run directory (or the pipe) can
put there. Each through the real CLI with real files, FIFOs and signals; the monitor must
count and locate what it skips, never crash, never hang, never call a blind run clean."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import DROP_ROOT_READ, run_cli

NAN_LINE = json.dumps({"step": 9, "metrics": {"loss": "NaN"}}) + "\n"


def _step(step: int, **extra: object) -> str:
    return json.dumps({"step": step, "metrics": {"loss": 1.0}, **extra}) + "\n"


def test_a_1000_deep_nested_json_line_is_a_located_skip_and_the_nan_after_it_fires(
        tmp_path: Path) -> None:
    """``{"a":`` 1,000 and 5,000 deep (msgspec raised RecursionError and the monitor died on
    every restart): counted skips with their line numbers, and the NaN after them fires."""
    events = tmp_path / "events.jsonl"
    events.write_text(_step(1) + '{"a":' * 1000 + "1" + "}" * 1000 + "\n"
                      + '{"a":' * 5000 + "1" + "}" * 5000 + "\n" + "[" * 65536 + "\n"
                      + NAN_LINE)
    report = tmp_path / "report.json"
    result = run_cli("monitor", str(events), "--once", "-r", "common", "--report", str(report))
    assert 2 == result.returncode, result.stderr.decode()
    data = json.loads(report.read_text())
    assert 3 == sum(data["parse_skips"].values())
    assert [2, 3, 4] == [ex["line"] for ex in data["parse_skip_examples"]]


def test_a_nested_line_inside_a_block_of_canonical_lines_is_skipped_alone(
        tmp_path: Path) -> None:
    """The block decoder meets the deep line among canonical ones: only that line is lost."""
    events = tmp_path / "events.jsonl"
    lines = [json.dumps({"step": s, "name": "loss", "value": 1.0}) + "\n" for s in range(500)]
    lines.insert(250, '{"a":' * 3000 + "}" * 3000 + "\n")
    events.write_text("".join(lines) + json.dumps({"step": 600, "name": "loss",
                                                   "value": "NaN"}) + "\n")
    report = tmp_path / "report.json"
    result = run_cli("monitor", str(events), "--once", "-r", "common", "--report", str(report))
    assert 2 == result.returncode
    data = json.loads(report.read_text())
    assert (501, 1) == (data["events"], sum(data["parse_skips"].values()))


@pytest.mark.parametrize("rank", ['"1"', "1.5", "null", "-1", "true", "99999999"])
def test_a_bad_rank_is_a_counted_skip_not_rank_zero(tmp_path: Path, rank: str) -> None:
    """A string, float, null, negative, boolean or absurd rank is refused (bad_rank), in
    either line form; it never lands on rank 0."""
    events = tmp_path / "events.jsonl"
    events.write_text(_step(1) + f'{{"step": 2, "rank": {rank}, "metrics": {{"loss": "NaN"}}}}\n'
                      f'{{"step": 3, "rank": {rank}, "name": "loss", "value": "NaN"}}\n')
    report = tmp_path / "report.json"
    result = run_cli("monitor", str(events), "--once", "-r", "common", "--report", str(report))
    data = json.loads(report.read_text())
    assert (0, {"bad_rank": 2}) == (result.returncode, data["parse_skips"])
    assert [2, 3] == [ex["line"] for ex in data["parse_skip_examples"]]


def test_max_ranks_caps_how_many_ranks_a_file_can_make(tmp_path: Path) -> None:
    """100,000 distinct ranks with ``--max-ranks 1000``: 1,000 ranks read, 99,000 skipped."""
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps({"step": 1, "rank": r, "name": "loss", "value": 1.0})
                              + "\n" for r in range(100_000)))
    report = tmp_path / "report.json"
    result = run_cli("monitor", str(events), "--once", "-r", "common", "--max-ranks", "1000",
                     "--report", str(report), timeout=120)
    data = json.loads(report.read_text())
    assert (0, 1000, {"bad_rank": 99_000}) == (result.returncode, data["events"],
                                               data["parse_skips"])


def _follow(source: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "trainguard", "monitor", str(source),
                             "-r", "common", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("poll", [False, True], ids=["inotify", "poll"])
def test_a_fifo_moved_over_a_rank_file_is_refused_and_sigterm_still_ends_the_monitor(
        tmp_path: Path, poll: bool) -> None:
    """``mkfifo f; mv f events.rank0.jsonl`` while following: the monitor says it cannot read
    it (degraded), keeps reading the other rank, and SIGTERM ends it at once."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "events.rank0.jsonl").write_text(_step(1, rank=0))
    (run / "events.rank1.jsonl").write_text(_step(1, rank=1))
    proc = _follow(run, *(["--poll"] if poll else []))
    try:
        time.sleep(1.5)
        os.mkfifo(tmp_path / "f")
        os.rename(tmp_path / "f", run / "events.rank0.jsonl")
        time.sleep(1.5)
        with open(run / "events.rank1.jsonl", "a") as handle:
            handle.write(json.dumps({"step": 2, "rank": 1, "metrics": {"loss": "NaN"}}) + "\n")
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    text = "".join((out + err).decode().split())  # rich wraps lines anywhere
    assert 2 == proc.returncode, text
    assert "events.rank0.jsonl:aFIFO" in text
    assert "nonfinite" in text


def test_a_fifo_given_as_the_event_file_is_degraded_not_a_hang(tmp_path: Path) -> None:
    """``monitor FIFO --once`` returns at once, degraded, saying why."""
    fifo = tmp_path / "events.jsonl"
    os.mkfifo(fifo)
    result = run_cli("monitor", str(fifo), "--once", "-r", "common", timeout=30)
    assert 1 == result.returncode
    assert "a FIFO" in result.stderr.decode()


def test_an_unreadable_rank_folder_makes_the_verdict_degraded_not_clean(tmp_path: Path) -> None:
    """A rank folder the monitor cannot list (mode 000), holding a NaN, next to a healthy
    rank: exit 1 and the folder named, never a clean exit 0."""
    run = tmp_path / "run"
    (run / "node1").mkdir(parents=True)
    (run / "events.rank0.jsonl").write_text(_step(1))
    (run / "node1" / "events.rank1.jsonl").write_text(NAN_LINE)
    os.chmod(run / "node1", 0)
    try:
        result = run_cli("monitor", str(run), "--once", "-r", "common", "--state",
                         str(tmp_path / "state.json"), "--alerts", str(tmp_path / "a.jsonl"),
                         prefix=DROP_ROOT_READ)
    finally:
        os.chmod(run / "node1", 0o755)
    err = " ".join(result.stderr.decode().split())
    assert 1 == result.returncode, err
    assert "node1: Permission denied" in err


def test_on_stdin_the_pieces_of_an_over_long_line_are_not_parsed_as_lines() -> None:
    """3 MiB of junk and then a NaN step on the same line: one line_too_long skip, no alert
    (the NaN is inside the junk's line); the step on the next line is read."""
    data = b"x" * 3_000_000 + NAN_LINE.encode() + _step(10).encode()
    result = run_cli("monitor", "-", "-r", "common", "--once", input=data, timeout=60)
    out = " ".join(result.stderr.decode().split())
    assert 0 == result.returncode, out
    assert "line_too_long" in out and "1 events in 1 steps" in out


@pytest.mark.parametrize("condition", [
    " and ".join(["loss > 1"] * 1000),
    "(" * 10_000 + "loss > 1" + ")" * 10_000,
    "not " * 5000 + "loss > 1",
])
def test_rules_validate_refuses_conditions_too_large_to_evaluate_with_a_located_error(
        tmp_path: Path, condition: str) -> None:
    """A 1,000-clause chain (which crashed the monitor at its first evaluation) and 10,000
    nested parentheses (a bare RecursionError): exit 1, the rule, the column, the limit."""
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - id: big\n    metric: loss\n    severity: high\n"
                     f"    condition: '{condition}'\n")
    result = run_cli("rules", "validate", str(rules))
    err = " ".join(result.stderr.decode().split())
    assert 1 == result.returncode, err
    assert "Traceback" not in err and "rule big" in err and "at column" in err
    assert len(err) < 1000  # the condition is shown around the column, not whole
    assert ("more than 128 operators" in err) or ("more than 32 levels" in err)
