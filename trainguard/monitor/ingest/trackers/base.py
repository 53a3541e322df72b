"""What every tracker-store source shares: key folding, canonical lines, counters, the extra.

A tracker source reads a store some other library wrote (TensorBoard event files, an MLflow
tracking store, a W&B offline run) through that library's own reader, and hands the monitor
canonical one-metric JSON lines (``{"step": 3, "name": "loss", "value": 0.5, "time": ...}``),
so everything after the source (gathering into steps, field maps, rules, the record, the
checkpoint) is the same as for trainguard's own events. A value the store holds as NaN stays
NaN: these stores keep non-finite floats as they are.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Final

import orjson

from trainguard.events import encode_value
from trainguard.exceptions import SourceError
from trainguard.monitor.ingest.tail import Line, TailStats

__all__ = ["MissingExtraError", "TrackerLines", "TrackerSource", "fold_tracker_key",
           "require_extra"]

#: End-of-run keys of the HF Trainer (its last log): a summary record, not a training step.
SUMMARY_KEYS: Final = frozenset({"train_runtime", "train_samples_per_second",
                                 "train_steps_per_second", "total_flos", "train_loss"})
#: Keys that describe a tracker's own bookkeeping, never the model's health.
_BOOKKEEPING: Final = frozenset({"global_step", "_step", "_runtime", "_timestamp"})


class MissingExtraError(SourceError):
    """A tracker store was named but the library that reads it is not installed."""


def require_extra(module: str, extra: str, what: str, spec: str) -> ModuleType:
    """Import ``module`` or say which extra installs it (exit 1 through the CLI)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{spec}: this is {what}; reading it needs the {extra} extra: "
            f"pip install 'trainguard[{extra}]'") from exc


def fold_tracker_key(key: str) -> tuple[str, str] | None:
    """``(name, kind)`` of a tracker's key as the rules read it, or None for bookkeeping.

    transformers' reporting callbacks (and OpenRLHF, and many hand-written loops) prefix every
    key: ``train/x`` for training logs, ``eval/x`` and ``test/x`` for evaluation. The prefix is
    folded back whatever the key, so ``train/rewards/chosen`` reads as ``rewards/chosen``;
    an eval key becomes ``eval_x``, as the HF Trainer names it before the callback renames it.
    """
    kind = "train"
    if key.startswith("train/"):
        key = key[6:]
    elif key.startswith(("eval/", "test/")):
        key, kind = "eval_" + key[5:], "eval"
    if not key or key in _BOOKKEEPING:
        return None
    if key in SUMMARY_KEYS:
        kind = "summary"
    return key, kind


class TrackerLines:
    """Builds the canonical lines of one store, one stream per record kind.

    A store holds train, eval and summary values at the same step; each kind gets its own
    stream (``NAME``, ``NAME#eval``, ``NAME#summary``) so the monitor never merges an eval
    value into the training step of the same number.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.stats: dict[str, TailStats] = {name: TailStats()}
        self._numbers: dict[str, int] = {}
        self.lines: list[Line] = []

    def stream(self, kind: str) -> str:
        """The stream name of a record kind."""
        return self.name if kind == "train" else f"{self.name}#{kind}"

    def add(self, key: str, value: float, step: int, time: float | None) -> None:
        """Queue one value under its folded name (bookkeeping keys are dropped)."""
        folded = fold_tracker_key(key)
        if folded is None:
            return
        name, kind = folded
        stream = self.stream(kind)
        obj: dict[str, object] = {"step": step, "name": name, "value": encode_value(value)}
        if time is not None:
            obj["time"] = time
        if kind != "train":
            obj["kind"] = kind
        number = self._numbers.get(stream, 0) + 1
        self._numbers[stream] = number
        stats = self.stats.get(stream)
        if stats is None:
            stats = self.stats[stream] = TailStats()
        stats.lines += 1
        self.lines.append(Line(stream, number, orjson.dumps(obj)))  # NaN is "NaN" already

    def skip(self, reason: str, detail: str = "") -> None:
        """Count a value the store holds that is not a metric (a string, an image)."""
        stats = self.stats[self.name]
        stats.skip(stats.lines, reason, detail)

    def take(self) -> list[Line]:
        """The lines queued since the last call."""
        lines, self.lines = self.lines, []
        return lines


class TrackerSource:
    """What every tracker-store source shares: its lines (``_out``), the one problem it has
    now (``_error``), and a store that can always grow. Subclasses poll their store."""

    _out: TrackerLines
    _error: str | None

    def problems(self) -> list[str]:
        """What keeps the store from being read now (it vanished, is corrupt, has no run)."""
        return [self._error] if self._error else []

    @property
    def exhausted(self) -> bool:
        """A tracker's store can always grow."""
        return False

    def stats(self) -> dict[str, TailStats]:
        """Counters per kind of record."""
        return self._out.stats
