"""The canonical event format: every accepted form parses, non-finite values round-trip."""

from __future__ import annotations

import json
import math

from hypothesis import given
from hypothesis import strategies as st

from trainguard.events import ParseSkip, Record, encode_record, parse_line, record_from_object

metric_values = st.floats(allow_nan=True, allow_infinity=True, width=64)


@given(st.dictionaries(st.text(min_size=1, max_size=20), metric_values, max_size=10),
       st.integers(0, 10**9), st.integers(0, 1024))
def test_step_record_round_trips_exactly_including_nan_and_infinities(metrics, step, rank):
    """A record written by encode_record parses back to equal values, NaN and +-inf included."""
    parsed = parse_line(encode_record(Record(step, metrics, 1.5, rank)))
    assert isinstance(parsed, Record)
    assert (parsed.step, parsed.rank, parsed.time) == (step, rank, 1.5)
    assert parsed.metrics.keys() == metrics.keys()
    for key, value in metrics.items():
        got = parsed.metrics[key]
        assert (math.isnan(got) and math.isnan(value)) or got == value


def test_one_metric_per_line_form_is_accepted_and_marked_partial():
    """{"step","name","value"} lines parse to a one-metric record that more may join."""
    parsed = parse_line(b'{"time": 1.0, "step": 3, "name": "loss", "value": 0.5}')
    assert parsed == Record(3, {"loss": 0.5}, 1.0, 0, "train", True)


def test_bare_nan_and_infinity_tokens_from_python_json_are_accepted():
    """Python's json writes bare NaN/Infinity; they read as non-finite values."""
    line = json.dumps({"step": 1, "metrics": {"a": float("nan"), "b": float("-inf")}})
    parsed = parse_line(line)
    assert isinstance(parsed, Record)
    assert math.isnan(parsed.metrics["a"]) and parsed.metrics["b"] == -math.inf


def test_null_metric_reads_as_nan_never_as_fine():
    """A null metric (orjson writes NaN as null) must not look healthy."""
    parsed = parse_line(b'{"step": 1, "metrics": {"loss": null}}')
    assert isinstance(parsed, Record) and math.isnan(parsed.metrics["loss"])


def test_trl_log_dict_form_with_string_floats_is_accepted():
    """A flat HF log dict with TRL's quoted 4-digit floats parses, eval logs are told apart."""
    parsed = parse_line(b'{"loss": "0.6931", "grad_norm": "nan", "epoch": 0.5, "step": 7}')
    assert isinstance(parsed, Record)
    assert parsed.metrics["loss"] == 0.6931 and math.isnan(parsed.metrics["grad_norm"])
    evaluated = parse_line(b'{"eval_loss": 0.7, "epoch": 1.0, "step": 8}')
    assert isinstance(evaluated, Record) and evaluated.kind == "eval"


def test_malformed_lines_are_skips_with_reasons_not_exceptions():
    """Garbage gives a ParseSkip naming the reason."""
    cases = {b"{not json": "malformed_json", b"[1, 2]": "not_an_object",
             b'{"metrics": {"a": 1}}': "missing_step", b'{"step": "x", "metrics": {}}': "bad_step",
             b"\xff\xfe": "malformed_json"}
    for line, reason in cases.items():
        result = parse_line(line)
        assert isinstance(result, ParseSkip) and result.reason == reason, line


def test_numbers_past_float_range_are_counted_never_a_crash(tmp_path):
    """An integer metric past 1.8e308 reads as infinite (as its decimal form does); a step or
    a time past 2**53 is no step or time: the line is skipped as bad_step, the time dropped.
    Through the monitor's real fast paths, from a file (CLI, real process)."""
    from tests.conftest import run_cli

    huge = "9" * 400
    lines = [
        '{"step": 1, "metrics": {"loss": 0.5}}',
        '{"step": 2, "metrics": {"loss": HUGE}}',
        '{"step": HUGE, "name": "loss", "value": 0.5}',
        '{"step": 3, "time": HUGE, "name": "loss", "value": 0.5}',
        '{"step": 4, "time": -HUGE, "metrics": {"loss": 0.5}}',
    ]
    lines = [line.replace("HUGE", huge) for line in lines]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    report, alerts = tmp_path / "report.json", tmp_path / "alerts.jsonl"
    result = run_cli("monitor", str(path), "--once", "--quiet", "--rules", "common",
                     "--report", str(report), "--alerts", str(alerts))
    assert result.returncode == 2, result.stderr.decode()  # loss=inf at step 2: critical
    fired = [json.loads(line) for line in alerts.read_text().splitlines()]
    assert [(a["rule"], a["step"]) for a in fired if a["state"] == "firing"] == [
        ("common.nonfinite_loss", 2)]
    data = json.loads(report.read_text())
    assert (data["records"], data["parse_skips"]) == (4, {"bad_step": 1})
    assert data["parse_skip_examples"][0]["line"] == 3
    assert record_from_object({"step": 3, "time": int(huge), "name": "x", "value": 1.0}).time is None
