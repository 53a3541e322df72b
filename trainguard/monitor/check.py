"""``trainguard check``: the batch verdict over finished (or running) runs, with no state.

Each run is read once from its start by the same session ``monitor --once`` runs (the same
sources, parsers, rule selection and trainer detection, so the same alerts), except that it is
*stateless*: it neither resumes from nor writes the follow checkpoint, and writes no default
alerts file, so checking a run that a follower watches changes nothing for the follower. Over
past runs it is the backtest of a rule pack before it is deployed.

:func:`check_run` can also collect every evaluated step (normalized) into columns, which the
report and ``diff`` load into polars (:mod:`trainguard.monitor.runs`).
"""

from __future__ import annotations

import json
import math
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from trainguard.events import Record
from trainguard.monitor.daemon import EXIT_ALERT, EXIT_CLEAN, EXIT_DEGRADED, Monitor, Verdict
from trainguard.monitor.engine.alerts import AlertSink
from trainguard.monitor.session import MonitorOptions, run_monitor
from trainguard.monitor.sinks.observer import RunView, SessionObserver
from trainguard.rules.models import SEVERITY_ORDER

if TYPE_CHECKING:
    from trainguard.monitor.ingest.tail import TailStats

__all__ = ["CheckOptions", "Columns", "RunCheck", "check_run", "check_runs", "worst_exit_code"]

METADATA_FILENAME = "run_metadata.json"  # what emitters.writer writes (not imported: trainer side)
_NAN = math.nan


@dataclass(slots=True)
class CheckOptions:
    """What ``check`` (and ``report``, ``diff``) are told about how to read and judge runs."""

    rules: list[str] = field(default_factory=list)
    field_maps: list[str] = field(default_factory=list)
    set_rules: list[str] = field(default_factory=list)
    inline_alerts: list[str] = field(default_factory=list)
    regex: str | None = None
    logging_steps: int = 1
    #: Alert sinks every run's alerts also go to (notifications).
    sinks: list[AlertSink] = field(default_factory=list)
    #: Session observers (the notifier's queue).
    observers: list[SessionObserver] = field(default_factory=list)


class Columns:
    """Every evaluated step, normalized, flattened to one row per metric value: the form polars
    loads without a schema to guess (see :mod:`trainguard.monitor.runs`). Everything is kept in
    typed arrays, no Python object a row: steps, ranks, values and times 8 bytes each (a record
    without a time has NaN); names and kinds, which repeat, as 4-byte codes into
    :attr:`name_list` and :attr:`kind_list`. A million rows take ~40 MB."""

    __slots__ = ("steps", "ranks", "name_codes", "name_list", "_name_code", "values", "times",
                 "kind_codes", "kind_list", "_kind_code")

    def __init__(self) -> None:
        self.steps = array("q")
        self.ranks = array("q")
        self.name_codes = array("I")
        self.name_list: list[str] = []
        self._name_code: dict[str, int] = {}
        self.values = array("d")
        self.times = array("d")
        self.kind_codes = array("I")
        self.kind_list: list[str] = []
        self._kind_code: dict[str, int] = {}

    @property
    def names(self) -> list[str]:
        """Each row's metric name."""
        names = self.name_list
        return [names[c] for c in self.name_codes]

    @property
    def kinds(self) -> list[str]:
        """Each row's record kind."""
        kinds = self.kind_list
        return [kinds[c] for c in self.kind_codes]

    def _code(self, text: str, codes: dict[str, int], listed: list[str]) -> int:
        code = codes.get(text)
        if code is None:
            code = codes[text] = len(listed)
            listed.append(text)
        return code

    def write(self, record: Record) -> None:
        """Take one normalized record (the monitor calls this as it would a recorder)."""
        metrics = record.metrics
        n = len(metrics)
        t = record.time if record.time is not None else _NAN
        kind = self._kind_code.get(record.kind)
        if kind is None:
            kind = self._code(record.kind, self._kind_code, self.kind_list)
        if n == 1:
            self.steps.append(record.step)
            self.ranks.append(record.rank)
            self.times.append(t)
            self.kind_codes.append(kind)
        else:
            self.steps.extend([record.step] * n)
            self.ranks.extend([record.rank] * n)
            self.times.extend([t] * n)
            self.kind_codes.extend([kind] * n)
        codes, code = self._name_code, self._code
        for name in metrics:
            c = codes.get(name)
            self.name_codes.append(c if c is not None else code(name, codes, self.name_list))
        self.values.extend(metrics.values())

    def write_columns(self, rank: int, kind: str, steps: Any, names: str | list[str],
                      values: Any, times: Any) -> None:
        """Take steps of one metric each as columns (the monitor calls this for one-metric
        lines it read as columns): ``steps`` an int64 array, ``names`` one for all or each
        step's; ``values`` and ``times`` float arrays (NaN: no time)."""
        n = len(steps)
        self.steps.frombytes(steps.tobytes())
        self.ranks.extend(array("q", [rank]) * n)
        codes, listed = self._name_code, self.name_list
        if isinstance(names, str):
            self.name_codes.extend(array("I", [self._code(names, codes, listed)]) * n)
        else:
            self.name_codes.extend([self._code(name, codes, listed) for name in names])
        self.values.frombytes(values.tobytes())
        self.times.frombytes(times.tobytes())
        self.kind_codes.extend(array("I", [self._code(kind, self._kind_code, self.kind_list)])
                               * n)

    def __len__(self) -> int:
        return len(self.values)


@dataclass(slots=True)
class RunCheck:
    """One run's verdict and what the report shows of it."""

    run: str
    verdict: Verdict
    streams: dict[str, TailStats]
    #: The metrics the rules in force watch (their ``metric``), in rule order, no repeats.
    watched: list[str]
    trainer: str | None
    #: ``run_metadata.json`` of a run directory (what the trainer's writer recorded), or {}.
    metadata: dict[str, Any]
    columns: Columns | None = None
    #: Alerts that a restart would have suppressed (none: check is stateless); for reports.
    suppressed: int = 0

    @property
    def worst_severity(self) -> str | None:
        """The most severe firing alert's severity, or None."""
        firing = [a.severity for a in self.verdict.alerts if a.state == "firing"]
        return max(firing, key=lambda s: SEVERITY_ORDER.get(s, -1), default=None)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary (``check --json``)."""
        v = self.verdict
        return {"run": self.run, "status": v.status, "exit_code": v.exit_code,
                "events": v.events, "records": v.records, "trainer": self.trainer,
                "skips": dict(v.skips), "problems": list(v.problems),
                "worst_severity": self.worst_severity,
                "alerts": [a.to_json() for a in v.alerts]}


class _Capture:
    """Keeps the monitor of a session, and (optionally) feeds a :class:`Columns` from it."""

    def __init__(self, columns: Columns | None) -> None:
        self.columns = columns
        self.monitor: Monitor | None = None

    def start(self, monitor: RunView) -> None:
        self.monitor = cast(Monitor, monitor)
        if self.columns is not None:
            # The monitor writes every normalized record to its recorder: the columns are one.
            self.monitor.recorder = cast(Any, self.columns)

    def tick(self, monitor: RunView) -> None:
        """Nothing per turn."""

    def close(self) -> None:
        """Nothing to release."""


def read_metadata(run: str | Path) -> dict[str, Any]:
    """``RUN/run_metadata.json`` as a dict; {} when the run is a file or has none."""
    path = Path(run)
    if not path.is_dir():
        return {}
    try:
        data = json.loads((path / METADATA_FILENAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def check_run(run: str, options: CheckOptions | None = None, *,
              collect: bool = False) -> RunCheck:
    """Read ``run`` (a JSONL file or a run directory) from its start, evaluate the rules, and
    return its verdict; with ``collect``, also every evaluated step as :class:`Columns`.

    Raises :class:`~trainguard.exceptions.ConfigError` or
    :class:`~trainguard.exceptions.SourceError` as ``monitor`` does.
    """
    options = options or CheckOptions()
    capture = _Capture(Columns() if collect else None)
    session = MonitorOptions(source=run, rules=list(options.rules), once=True,
                             field_maps=list(options.field_maps), quiet=True, tee=False,
                             poll=True, set_rules=list(options.set_rules),
                             inline_alerts=list(options.inline_alerts), regex=options.regex,
                             logging_steps=options.logging_steps, sinks=list(options.sinks),
                             observers=[capture, *options.observers], stateless=True)
    verdict = run_monitor(session)
    monitor = capture.monitor
    assert monitor is not None  # started before anything was read
    watched = list(dict.fromkeys(c.rule.metric for c in monitor.engine.rules if c.rule.metric))
    return RunCheck(run=run, verdict=verdict, streams=monitor.source.stats(), watched=watched,
                    trainer=monitor.engine.trainer, metadata=read_metadata(run),
                    columns=capture.columns)


def check_runs(runs: list[str], options: CheckOptions | None = None, *,
               collect: bool = False) -> list[RunCheck]:
    """:func:`check_run` for each run, in order."""
    return [check_run(run, options, collect=collect) for run in runs]


def worst_exit_code(codes: list[int]) -> int:
    """The exit code of several verdicts: an alert beats a blind run, which beats clean."""
    for code in (EXIT_ALERT, EXIT_DEGRADED):
        if code in codes:
            return code
    return EXIT_CLEAN
