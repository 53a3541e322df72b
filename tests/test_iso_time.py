"""ISO-8601 ``"time"`` strings (RLDK's form, many loggers'): read as epoch seconds on the block
fast path and on the per-line path alike, UTC when no offset is named."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from trainguard.events import iso_timestamp, parse_line
from trainguard.monitor.check import check_run
from trainguard.monitor.ingest import gather

BASE = dt.datetime(2024, 11, 23, 8, 0, 0, tzinfo=dt.UTC)


def _iso(seconds: float, style: str) -> str:
    moment = BASE + dt.timedelta(seconds=seconds)
    if style == "Z":
        return moment.isoformat().replace("+00:00", "Z")
    if style == "offset":
        return moment.astimezone(dt.timezone(dt.timedelta(hours=2))).isoformat()
    return moment.replace(tzinfo=None).isoformat()  # naive: read as UTC


@pytest.mark.parametrize("style", ["Z", "offset", "naive"])
@pytest.mark.parametrize("form", ["one_metric", "step"])
def test_iso_times_read_the_same_on_the_block_and_line_paths(tmp_path: Path, style: str,
                                                             form: str):
    """The file's records (read in blocks) carry the times the per-line parser gives."""
    lines = []
    for s in range(1, 301):
        t = _iso(s * 0.25, style)
        if form == "one_metric":
            lines += [json.dumps({"time": t, "step": s, "name": n, "value": s * 0.1})
                      for n in ("loss", "kl")]
        else:
            lines.append(json.dumps({"time": t, "step": s, "metrics": {"loss": 1.0 / s}}))
    path = tmp_path / "iso.jsonl"
    path.write_text("\n".join(lines) + "\n")
    columns = check_run(str(path), collect=True).columns
    assert columns is not None
    per_line = {}
    for line in lines:
        record = parse_line(line)
        per_line[record.step] = record.time  # type: ignore[union-attr]
    got = dict(zip(columns.steps, columns.times, strict=True))
    assert got == per_line
    assert got[4] == pytest.approx(BASE.timestamp() + 1.0)


def test_an_iso_block_decodes_in_one_call_not_line_by_line():
    """A block of ISO one-metric lines fails the plain decoder at its first line and is taken
    whole by the ISO decoder (not read line by line)."""
    raw = b"\n".join(json.dumps({"time": _iso(s, "Z"), "step": s, "name": "loss",
                                 "value": 1.0}).encode() for s in range(1, 4))
    decoded = gather._decode_metric_block_iso(raw)
    assert [d.step for d in decoded] == [1, 2, 3]


def test_text_that_is_no_time_is_no_clock_reading():
    """'yesterday' or a date with no time part the block decoder refuses: no crash, the per-line
    reading (None, or midnight UTC for a bare date)."""
    assert iso_timestamp("yesterday") is None
    assert parse_line('{"time": "yesterday", "step": 1, "name": "loss", "value": 1}').time is None  # type: ignore[union-attr]
    assert iso_timestamp("2024-11-23") == dt.datetime(2024, 11, 23, tzinfo=dt.UTC).timestamp()
