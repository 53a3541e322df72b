"""A fuzzer (hypothesis) over what an attacker controls: the line decoders (per line, in blocks,
through the stdout parser), the checkpoint reader and the alert journal. Each must never raise
on any input; the block path must agree with the line path on hostile lines too.

CI runs it for a bounded time: ``TRAINGUARD_FUZZ_EXAMPLES`` examples per property (default
200, a few seconds each); raise it for a long fuzzing session. The trainer-side control-file
reader (``trainguard.control``) gets its own fuzzer with that module's hardening.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainguard.monitor.checkpoint import AlertLedger, journal_path, load_state, replay_journal
from trainguard.monitor.daemon import Monitor, json_line_parser
from trainguard.monitor.ingest.sources import DirectorySource, FileSource
from trainguard.monitor.ingest.stdout import make_line_parser
from trainguard.monitor.ingest.tail import Block, Line

EXAMPLES = int(os.environ.get("TRAINGUARD_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["step", "rank", "name", "value", "metrics", "time", "kind", "loss",
                         "offset", "ino", "dev", "fp_len", "fp_hash", "positions", "alerts",
                         "version", "raised", "firing", "stops", "record_length", "run_id"]),
        inner, max_size=6),
    max_leaves=20)
_deep = st.integers(100, 4000).flatmap(lambda n: st.sampled_from([
    b'{"a":' * n + b"1" + b"}" * n, b"[" * n, b'{"step":1,"metrics":' * n,
    b'{"step": 1, "rank": ' + b"[" * n + b"]" * n + b', "name": "loss", "value": 1}']))
_envelope = st.fixed_dictionaries(
    {"step": st.one_of(st.integers(-3, 3), st.integers(), st.floats(), st.none(), st.text(max_size=3)),
     "name": st.sampled_from(["loss", "kl", ""])},
    optional={"rank": st.one_of(st.integers(-2, 3), st.integers(), st.floats(), st.none(),
                                st.just("1"), st.booleans()),
              "value": _json, "metrics": _json, "time": _json, "kind": _json})
_line_bytes = st.one_of(
    st.binary(max_size=60),
    _json.map(lambda o: json.dumps(o).encode()),
    _envelope.map(lambda o: json.dumps(o).encode()),
    _deep,
    st.sampled_from([b"NaN", b'{"step": 1, "value": NaN, "name": "loss"}', b"\xff\xfe",
                     b'{"step": 1e999, "name": "loss", "value": 1}',
                     b'{"step": 1, "rank": 1e400, "metrics": {"loss": 1}}',
                     b'{"step": 1, "metrics": {"loss": 1' + b"0" * 400 + b"}}"]),
)


def _monitor(parser: object = json_line_parser) -> Monitor:
    return Monitor(None, [], parser=parser)  # type: ignore[arg-type]


def _counts(mon: Monitor) -> tuple[int, int, dict[str, int]]:
    mon.flush()
    c = mon.counters
    return c.events, c.records, dict(c.skips)


@FUZZ
@given(st.lists(_line_bytes, max_size=30))
def test_no_line_crashes_the_decoders_and_blocks_agree_with_lines(lines: list[bytes]) -> None:
    """Any bytes, any JSON, 4,000-deep nesting, absurd numbers: never an exception, and the
    block decoder reads what the line path reads (newlines inside a line are not lines)."""
    lines = [x.replace(b"\n", b" ") for x in lines]
    by_line = _monitor()
    by_line.process([Line("f", n, x) for n, x in enumerate(lines, 1)])
    by_block = _monitor()
    if lines:
        by_block.process_blocks([Block.of_raw("f", 1, b"".join(x + b"\n" for x in lines),
                                              len(lines))])
    assert _counts(by_line) == _counts(by_block)


@FUZZ
@given(st.lists(_line_bytes, max_size=20))
def test_no_line_crashes_the_stdout_parser(lines: list[bytes]) -> None:
    """The auto-detecting stdout parser (stdin's default) on the same hostile lines."""
    mon = _monitor(make_line_parser(None, auto=True))
    mon.process([Line("<stdin>", n, x.replace(b"\n", b" ")) for n, x in enumerate(lines, 1)])
    mon.flush()


@FUZZ
@given(st.one_of(_json.map(lambda o: json.dumps({"version": 1, **o}) if isinstance(o, dict)
                           else json.dumps(o)),
                 st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_no_state_file_crashes_the_checkpoint_reader_or_the_sources(tmp_path: Path,
                                                                     text: str) -> None:
    """Any state file: ``load_state`` returns data or a warning, and whatever it returns the
    sources and the ledger take without raising."""
    events = tmp_path / "events.jsonl"
    events.write_text('{"step": 1, "metrics": {"loss": 1.0}}\n')
    state = tmp_path / "state.json"
    state.write_text(text.replace("P", str(events)), encoding="utf-8", errors="replace")
    data, warning = load_state(state)
    assert data == {} or warning is None
    positions = data.get("positions") or None
    FileSource(events, positions=positions).close()
    DirectorySource(tmp_path, positions=positions).close()
    AlertLedger(data.get("alerts"))


@FUZZ
@given(st.lists(st.one_of(_json.map(lambda o: json.dumps({"intent": o}).encode()),
                          _json.map(lambda o: json.dumps({"done": o}).encode()),
                          st.binary(max_size=40)), max_size=12))
def test_no_alert_journal_crashes_its_replay(tmp_path: Path, entries: list[bytes]) -> None:
    """Any journal left by a killed session replays without raising."""
    state = tmp_path / "state.json"
    Path(journal_path(str(state))).write_bytes(b"\n".join(entries))
    alerts, _ = replay_journal(str(state), AlertLedger())
    assert all(a.rule is not None for a in alerts)
