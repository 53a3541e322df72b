"""The EventWriter's line (orjson on the common path, a general loop otherwise) says exactly
what the canonical format says: NaN and the infinities as strings, ints and floats as numbers,
bools as 1.0/0.0, non-numbers dropped, int keys as strings."""

from __future__ import annotations

import json
import math
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from trainguard import EventWriter
from trainguard.events import encode_value, parse_line

_VALUES = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                    st.integers(min_value=-(2**70), max_value=2**70), st.booleans(),
                    st.text(max_size=3))


def _expected(metrics: dict) -> dict:
    out = {}
    for key, value in metrics.items():
        try:
            out[str(key)] = encode_value(float(value))
        except (TypeError, ValueError, OverflowError):
            continue
    return out


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


@settings(max_examples=200, deadline=None)
@given(metrics=st.dictionaries(st.text(min_size=1, max_size=8), _VALUES, max_size=8))
def test_a_written_line_carries_what_the_canonical_encoder_says(tmp_path_factory, metrics):
    """Any mix of values: the line's metrics equal the reference encoding, key by key."""
    run = Path(tmp_path_factory.mktemp("w"))
    with EventWriter(run, rank=0, world_size=1) as writer:
        writer.log_metrics(3, metrics)
    text = (run / "events.rank0.jsonl").read_text()
    expected = _expected(metrics)
    if not expected and not metrics:
        assert json.loads(text)["metrics"] == {}
        return
    line = json.loads(text)
    assert line["step"] == 3
    assert set(line["metrics"]) == set(expected)
    for key, value in expected.items():
        assert _same(float(line["metrics"][key]) if not isinstance(value, str) else
                     line["metrics"][key], float(value) if not isinstance(value, str) else value)
    record = parse_line(text)
    assert set(record.metrics) == set(expected)  # type: ignore[union-attr]


def test_nonfinite_values_are_strings_and_int_keys_are_names(tmp_path: Path):
    """NaN, inf and -inf are written as the format's strings; an int key becomes its text."""
    with EventWriter(tmp_path, rank=0, world_size=1) as writer:
        writer.log_metrics(1, {"loss": math.nan, "kl": math.inf, "x": -math.inf})
        writer.log_metrics(2, {7: 1.5, "ok": 2})
    first, second = (json.loads(ln) for ln in (tmp_path / "events.rank0.jsonl").read_text()
                     .splitlines())
    assert first["metrics"] == {"loss": "NaN", "kl": "Infinity", "x": "-Infinity"}
    assert second["metrics"] == {"7": 1.5, "ok": 2}
    assert writer.events_written == 5
