"""A file source hands the monitor blocks of raw lines; the monitor ends where Line objects
would have taken it: the same records, counts, skips, and skip examples with file and line."""

from __future__ import annotations

import gc
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_normalize_fast_path import _ListRecorder, _one_metric, _raw, _step
from trainguard.monitor.daemon import YOUNG_COLLECTION_THRESHOLD, Monitor
from trainguard.monitor.ingest.normalize import FieldMap
from trainguard.monitor.ingest.sources import DirectorySource, FileSource, Line
from trainguard.monitor.ingest.tail import FileTail
from trainguard.rules.loader import load_rules

_line = st.tuples(st.sampled_from(["a.jsonl", "b.jsonl"]),
                  st.one_of(_one_metric.map(lambda o: json.dumps(o).encode()),
                            _step.map(lambda o: json.dumps(o).encode()), _raw),
                  st.sampled_from([b"\n", b"\n", b"\r\n"]))


def _outcome(mon: Monitor, recorder: _ListRecorder) -> tuple[object, ...]:
    c = mon.counters
    return recorder.records, c.events, c.records, dict(c.skips), c.examples


def _monitor(source: object) -> tuple[Monitor, _ListRecorder]:
    recorder = _ListRecorder()
    fmap = FieldMap({"actor/kl_loss": "kl"}, {"actor/grad_norm": "grad_norm"})
    return Monitor(source, [], field_map=fmap, recorder=recorder), recorder  # type: ignore[arg-type]


def _drained(source: FileSource | DirectorySource) -> tuple[Monitor, _ListRecorder]:
    """A monitor that has read ``source`` to its end (then closed it)."""
    mon, recorder = _monitor(source)
    while mon.poll_once():
        pass
    mon.flush()
    source.close()
    return mon, recorder


@settings(max_examples=150, deadline=None)
@given(st.lists(_line, max_size=40))
def test_directory_blocks_evaluate_what_line_objects_do(raw: list[tuple[str, bytes, bytes]]):
    """Blocks from a run directory: same records, counts, skips and located skip examples as
    processing one Line per line of each file."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in ("a.jsonl", "b.jsonl"):
            (root / name).write_bytes(b"".join(d + end for s, d, end in raw if s == name))
        lines: list[Line] = []
        for name in ("a.jsonl", "b.jsonl"):  # the order a directory source reads them in
            tail = FileTail(str(root / name))
            lines += tail.read()
            tail.close()
        reference, ref_recorder = _monitor(None)
        reference.process(lines)
        reference.flush()
        source = DirectorySource(root)
        mon, recorder = _drained(source)
        assert _outcome(reference, ref_recorder) == _outcome(mon, recorder)


def test_skip_example_from_a_file_names_the_file_and_line(tmp_path: Path):
    """A garbage line on line 3 of a file is reported as that file's line 3."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"step": 1, "name": "loss", "value": 0.5}\r\n'
                     b'{"step": 1, "name": "kl", "value": 0.1}\n'
                     b'{oops\n'
                     b'{"step": 2, "name": "loss", "value": 0.4}\n')
    source = FileSource(path)
    mon, recorder = _drained(source)
    assert ([(str(path), 3, "malformed_json")], 3, [1, 2]) == (
        [(e.stream, e.line, e.reason) for e in mon.counters.examples], mon.counters.events,
        [r[1] for r in recorder.records])


def test_the_run_loop_defers_young_collections_and_puts_the_threshold_back(tmp_path: Path):
    """While the monitor runs, the young generation is collected every 50,000 allocations, not
    every 700 (its records hold no cycles); the process's threshold is back afterwards, even
    when the loop ends in an exception."""
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps({"step": i, "metrics": {"loss": 1.0}}) + "\n"
                            for i in range(100)))
    before = gc.get_threshold()
    seen: list[tuple[int, ...]] = []
    mon = Monitor(FileSource(path), load_rules(["common"]))
    mon.on_tick = lambda: seen.append(gc.get_threshold())
    assert mon.run(once=True).records == 100
    assert seen and all(t[0] == max(before[0], YOUNG_COLLECTION_THRESHOLD) for t in seen)
    assert gc.get_threshold() == before

    def fail() -> None:
        raise RuntimeError("a sink failed")

    mon = Monitor(FileSource(path), load_rules(["common"]))
    mon.on_tick = fail
    with pytest.raises(RuntimeError):
        mon.run(once=True)
    assert gc.get_threshold() == before
