"""A fuzzer (hypothesis) over the trainer-side control-file reader: whatever bytes sit at
``control.json`` (written by anyone who can write the run directory), ``read_stop_request``
and ``EventWriter.should_stop`` return, never raise into the training loop, and a stop request
is only ever honoured when it is a well-formed request for this session.

Bounded for CI by ``TRAINGUARD_FUZZ_EXAMPLES`` (default 200 examples a property)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainguard.control import CONTROL_FILENAME, StopRequest, read_stop_request
from trainguard.emitters.writer import EventWriter

EXAMPLES = int(os.environ.get("TRAINGUARD_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_scalar = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
           | st.sampled_from([10 ** 400, -(10 ** 400), 1e308, float("inf")]))
_json = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(["version", "action", "rule", "reason", "step", "time", "severity",
                     "run_id", "session", "x"]), inner, max_size=8), max_leaves=24)
_request_like = st.fixed_dictionaries(
    {"action": st.sampled_from(["stop", "STOP", "", "pause"]), "rule": _scalar,
     "step": _scalar, "time": _scalar},
    optional={"version": _scalar, "reason": _scalar, "severity": _scalar, "run_id": _scalar,
              "session": _scalar})
_content = st.one_of(
    st.binary(max_size=200),
    _json.map(lambda o: json.dumps(o, allow_nan=True).encode()),
    _request_like.map(lambda o: json.dumps(o, allow_nan=True).encode()),
    st.integers(1, 70_000).map(lambda n: b"[" * n),
    st.integers(1, 5_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.sampled_from([b'{"action": "stop", "step": Infinity, "time": 1}',
                     b'{"action": "stop", "step": ' + b"9" * 400 + b', "time": 1}',
                     b'{"action": "stop", "time": NaN}', b"\x00" * 64, b"\xff\xfe{"]),
)


@FUZZ
@given(content=_content)
def test_read_stop_request_never_raises_and_returns_a_request_or_none(content: bytes) -> None:
    """Any bytes: a StopRequest (well formed) or None; never an exception."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / CONTROL_FILENAME
        path.write_bytes(content)
        result = read_stop_request(path)
        assert result is None or isinstance(result, StopRequest)


@FUZZ
@given(content=_content)
def test_should_stop_never_raises_and_never_obeys_a_request_of_another_session(
        content: bytes) -> None:
    """A writer session started before the file was written: should_stop returns a bool and
    says True only for a request that names this session or no session at all."""
    with tempfile.TemporaryDirectory() as tmp:
        writer = EventWriter(tmp, rank=0, world_size=1, stop_check_interval=0.0, sync_stop=False)
        try:
            time.sleep(0.002)  # the file is newer than the session's start
            (Path(tmp) / CONTROL_FILENAME).write_bytes(content)
            stop = writer.should_stop
            assert isinstance(stop, bool)
            request = read_stop_request(Path(tmp) / CONTROL_FILENAME)
            if stop:
                assert request is not None
                assert request.session in (None, writer.session_id)
        finally:
            writer.close()


def test_a_well_formed_request_for_this_session_is_obeyed() -> None:
    """The fuzzed property is not vacuous: a real request for this session stops it."""
    with tempfile.TemporaryDirectory() as tmp:
        writer = EventWriter(tmp, rank=0, world_size=1, stop_check_interval=0.0, sync_stop=False)
        try:
            request = StopRequest(rule="common.nonfinite_loss", reason="loss is NaN", step=3,
                                  time=time.time() + 1, severity="critical",
                                  run_id=writer.run_id, session=writer.session_id)
            (Path(tmp) / CONTROL_FILENAME).write_text(json.dumps(request.to_json()))
            writer.log_metrics(1, {"loss": 1.0})
            assert writer.should_stop is True
        finally:
            writer.close()
