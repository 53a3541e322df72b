"""``trainguard convert SOURCE -o OUT.jsonl``: any source into canonical events, in one pass.

The source is read once, to its current end (a file, every ``*.jsonl`` of a run directory, or
stdin to its close), through the same parsers and the same step merging as the monitor: canonical
JSONL in any accepted form, and trainer stdout by preset, user pattern or auto-detection. Each
step is written as one step-per-line event (:func:`trainguard.events.encode_record`). Without a
field map the keys are kept as the source wrote them; the step is the trainer's step.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from trainguard.exceptions import ConfigError, SourceError
from trainguard.monitor.daemon import Monitor, SkipExample
from trainguard.monitor.ingest.formats import open_source_for
from trainguard.monitor.ingest.normalize import load_field_map
from trainguard.monitor.ingest.stdout import make_line_parser
from trainguard.monitor.sinks.record import Recorder

__all__ = ["ConvertResult", "convert"]


@dataclass(frozen=True, slots=True)
class ConvertResult:
    """What a conversion read and wrote."""

    lines: int
    records: int
    events: int
    skips: Counter[str]
    skip_examples: list[SkipExample]
    problems: list[str]


def convert(source: str, out: str | os.PathLike[str], *, regex: str | None = None,
            field_maps: Sequence[str] = (), logging_steps: int = 1,
            steps_per_epoch: int | None = None) -> ConvertResult:
    """Read ``source`` once and write its events to ``out`` as canonical JSONL (overwritten).

    ``regex``: a stdout preset or a re2 pattern (:mod:`~trainguard.monitor.ingest.stdout`); without
    it every line is auto-detected (canonical JSON, then the stdout presets). ``field_maps``:
    presets, files or ``a=b`` renames applied to the keys (none: keys as written).

    Raises :class:`~trainguard.exceptions.ConfigError` for a bad option or an unwritable
    ``out``, :class:`~trainguard.exceptions.SourceError` for a source that cannot be opened.
    """
    parser = make_line_parser(regex, auto=True, logging_steps=logging_steps,
                              steps_per_epoch=steps_per_epoch, step_bar=False)
    field_map = load_field_map(field_maps)
    out_path = os.fspath(out)
    if source != "-" and not os.path.exists(source):
        raise SourceError(f"{source}: no such file or directory")
    if source != "-" and os.path.abspath(source) == os.path.abspath(out_path):
        raise ConfigError("the output would overwrite the source; choose another -o path",
                          path=out_path)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        with open(out_path, "wb"):
            pass  # a conversion replaces what was there; the recorder appends
        recorder = Recorder(out_path)
    except OSError as exc:
        raise ConfigError(f"cannot write the output: {exc.strerror or exc}",
                          path=out_path) from exc
    # A tracker store or verl's file logger reads as what it is (ingest/formats.py).
    stream = open_source_for(source, exclude=[out_path], from_start=True, map_keys=False).source
    try:
        # The monitor with no rules is the conversion: same parsing, step merging and
        # normalization, each evaluated record written once by the recorder.
        monitor = Monitor(stream, [], field_map=field_map, parser=parser, recorder=recorder)
        monitor.judging = False  # no rules by design: nothing is judged, nothing is missed
        verdict = monitor.run(once=True, poll_interval=0.01)
        lines = sum(s.lines for s in stream.stats().values())
    finally:
        stream.close()
        recorder.close()
    return ConvertResult(lines, verdict.records, verdict.events, verdict.skips,
                         verdict.skip_examples, verdict.problems)
