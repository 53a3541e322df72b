"""Plain trainer stdout -> events: the parser for trainers that know nothing of trainguard.

A trainer's console output is turned into :class:`~trainguard.events.Record` s, one physical
line at a time, by *presets*: YAML data in ``trainguard/presets/stdout/NAME.yaml``, validated
(pydantic) and compiled once at load.

* ``trl`` (alias ``transformers``): the HF Trainer's printed log dicts, inside tqdm output.
* ``verl``: ``step:N - key:value - key:value`` (verl's console logger).
* ``openrlhf``: ``Global step N: {dict}``.
* ``openrlhf_tqdm``: the tqdm postfix of OpenRLHF's SFT/RM/DPO/KTO step bar (the step is the
  bar's counter; a line of redraws gives one record per counter value).
* ``kv``: generic ``key=value`` / ``key: value`` lines with a ``step`` key.

A user's own pattern (``--regex 'PATTERN'``, named groups, a ``step`` group required) is compiled
with google-re2, which runs in time linear in the line whatever the pattern, so no pattern can
hang the monitor; a pattern re2 refuses is a :class:`~trainguard.exceptions.ConfigError` at start.
A named group is a metric; ``__`` in a group name stands for ``/`` (``rewards__chosen``).

**The step.** verl, OpenRLHF, ``kv`` and user patterns print it. The TRL dict does not; it is
derived, per stream: the n-th training log is step ``n * logging_steps`` (``--logging-steps``,
default 1), or, when the steps per epoch are known (``steps_per_epoch``), ``round(epoch *
steps_per_epoch)``. Eval dicts (``eval_*`` keys) are eval records, and the final summary
(``train_runtime``...) a summary record, both at the step of the last training log. A dict is a
Trainer log only if it has an ``epoch`` key (every Trainer log has one; a printed config does not).

**Auto-detection** (``auto=True``): a JSON line is parsed as canonical JSONL; other lines are
tried against every preset (OpenRLHF, OpenRLHF's tqdm bar, TRL, verl, then kv); lines that
match nothing are the trainer's prose and are ignored (``None``), not counted as skips.

One physical line gives one record: when a line holds several (a program redrawing a status line
with ``\\r``), the last is returned (the step count still counts each TRL log);
:meth:`StdoutParser.parse_all` returns all of them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from trainguard.events import ParseSkip, Record, parse_line
from trainguard.exceptions import ConfigError, UnknownPackError
from trainguard.monitor.ingest.gather import LineParser, json_line_parser
from trainguard.monitor.ingest.signals import SignalScanner, load_scanner
from trainguard.monitor.ingest.sources import Line
from trainguard.monitor.ingest.stdout_matchers import Matcher, PresetMatcher, UserPattern
from trainguard.monitor.ingest.stdout_text import segments, trainer_bar

__all__ = ["AUTO_ORDER", "PROGRESS_METRICS", "StdoutParser", "StdoutPreset",
           "builtin_stdout_presets", "load_stdout_preset", "make_line_parser",
           "preset_field_maps"]

#: The order in which auto-detection tries the presets (most specific first).
AUTO_ORDER: Final = ("openrlhf", "openrlhf_tqdm", "trl", "verl", "kv")
#: What the HF Trainer's step bar, drawn on the physical line of a training log, adds to that
#: log: the step (at most the bar's counter) and the bar's total, the run's length
#: (see StdoutParser._record).
PROGRESS_METRICS: Final = ("progress/step", "progress/total")


class StdoutPreset(BaseModel):
    """One stdout preset as written in ``presets/stdout/NAME.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    aliases: list[str] = []
    description: str
    #: ``log_dict``: a printed Python dict; ``pairs``: ``key<sep>value`` items on a line.
    format: Literal["log_dict", "pairs"]
    #: A substring every matching line holds: lines without it are not tried (cheap prose skip).
    contains: str
    #: Where the record is on a line (Python regex, searched): group ``body`` marks the dict's
    #: ``{`` (log_dict) or the text holding the pairs; group ``step`` the step if printed.
    line: str | None = None
    #: For ``pairs``: one item, groups ``key`` and ``value`` (searched in ``body``).
    pair: str | None = None
    #: ``group``: the ``step`` group of ``line``; ``key``: the pair named ``step_key``;
    #: ``count``: derived from the count of training logs (or the epoch), see the module doc;
    #: ``progress``: a progress bar's counter (group ``step``), plus ``epoch`` x ``total`` when
    #: the line has those groups (a bar that restarts every epoch); a line of many redraws
    #: gives one record per counter value (its last redraw).
    step: Literal["group", "key", "count", "progress"]
    step_key: str = "step"
    #: A log_dict needs one of these keys to count as a log (tells logs from other dicts).
    require_any: list[str] = []
    #: The field map (a preset in ``presets/fields/``) that goes with this trainer's names:
    #: ``--regex NAME`` applies it unless ``--field-map`` is given (see preset_field_maps),
    #: and a parser made with ``map_keys`` applies it to the lines this preset reads.
    field_map: str | None = None

    @field_validator("line", "pair")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regex: {exc}") from exc
        return pattern

    @model_validator(mode="after")
    def _consistent(self) -> StdoutPreset:
        if self.format == "pairs" and self.pair is None:
            raise ValueError("format 'pairs' needs a 'pair' pattern with groups key and value")
        if self.step in ("group", "progress") and (self.line is None
                                                   or "(?P<step>" not in self.line):
            raise ValueError(f"step {self.step!r} needs a 'line' pattern with a (?P<step>...) "
                             "group")
        if self.line is not None and "(?P<body>" not in self.line:
            raise ValueError("'line' needs a (?P<body>...) group")
        return self


@cache
def builtin_stdout_presets() -> dict[str, StdoutPreset]:
    """Every shipped stdout preset by name and alias, validated."""
    from trainguard.rules.loader import load_yaml

    out: dict[str, StdoutPreset] = {}
    root = resources.files("trainguard.presets") / "stdout"
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if not entry.name.endswith(".yaml"):
            continue
        origin = f"<stdout preset {entry.name[:-5]}>"
        data = load_yaml(entry.read_text(encoding="utf-8"), origin)
        try:
            preset = StdoutPreset.model_validate(dict(data or {}))
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(p) for p in error["loc"]) or None
            line = None
            if field and hasattr(data, "lc") and field.split(".")[0] in data:
                line = data.lc.key(field.split(".")[0])[0] + 1
            raise ConfigError(str(error["msg"]).removeprefix("Value error, "), path=origin,
                              line=line, field=field) from exc
        for name in (preset.name, *preset.aliases):
            out[name] = preset
    return out


def preset_field_maps(regex: str | None, field_maps: list[str]) -> list[str]:
    """The field maps a session applies: the user's, or, when there are none and ``regex``
    names a preset that brings one (verl: ``actor/pg_loss`` stays and ``actor/grad_norm``
    also feeds ``grad_norm``...), that preset's map."""
    if field_maps or regex is None:
        return list(field_maps)
    preset = builtin_stdout_presets().get(regex)
    return [preset.field_map] if preset is not None and preset.field_map else []


def load_stdout_preset(name: str) -> StdoutPreset:
    """A built-in stdout preset by name or alias."""
    presets = builtin_stdout_presets()
    if name not in presets:
        raise UnknownPackError(f"unknown stdout preset {name!r}; built-in: "
                               + ", ".join(sorted(presets)))
    return presets[name]


@dataclass(slots=True)
class _Progress:
    """Per stream: how many training logs were counted and the current step."""

    train_logs: int = 0
    step: int = 0
    #: Signal metrics this stream has printed, and those printed since its last training log.
    signals_seen: set[str] | None = None
    signals_since: set[str] | None = None


class StdoutParser:
    """Turns physical console lines into records; a :data:`~trainguard.monitor.daemon.LineParser`.

    Stateful per stream (the derived TRL step), otherwise pure: no files or threads; the one
    clock it reads (``clock``, the time a line was read, stamped on its record because a printed
    log has none) is injected.
    """

    def __init__(self, matchers: list[Matcher], *, json_lines: bool = True,
                 logging_steps: int = 1, steps_per_epoch: int | None = None,
                 signals: SignalScanner | None = None,
                 clock: Callable[[], float] = time.time, step_bar: bool = True) -> None:
        if logging_steps < 1:
            raise ConfigError(f"--logging-steps {logging_steps}: must be 1 or more (the "
                              "trainer's logging_steps)")
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ConfigError(f"--steps-per-epoch {steps_per_epoch}: must be 1 or more")
        self.matchers = matchers
        self.json_lines = json_lines
        #: Tells the monitor it may decode canonical JSON lines itself on its fast path and
        #: hand this parser only the lines that are not (see daemon.Monitor.process).
        self.json_first = json_lines
        self.logging_steps = logging_steps
        self.steps_per_epoch = steps_per_epoch
        #: Known warning/error lines (ingest/signals.py), tried on lines no matcher takes.
        self.signals = signals
        needles = [m.needle for m in matchers] + list(signals.needles if signals else ())
        #: Lines holding none of these are prose and skipped without decoding (b"" = try all).
        self._needles: tuple[bytes, ...] | None = None if b"" in needles else tuple(needles)
        self._progress: dict[str, _Progress] = {}
        #: Per stream, the last step a progress bar gave (see _bar_steps).
        self._last_bar_step: dict[str, int] = {}
        self._bar_hits = 0  # records of the last parse_all that a progress bar gave
        #: Whether training logs get progress/* from the Trainer's step bar (not convert,
        #: which keeps the keys as printed).
        self.step_bar = step_bar
        #: The run's length: the total of the Trainer's bar last drawn on a training log's
        #: own physical line (see _record).
        self._run_length: int | None = None
        #: A printed log carries no time: its record's time is when it was read (``clock``,
        #: injected so the parser stays a function of its input in tests).
        self._clock = clock

    def __call__(self, line: Line) -> Record | ParseSkip | list[Record | ParseSkip] | None:
        """The last record of the line, or a skip, or ``None`` for prose; with a progress-bar
        preset, every step the line's redraws show (the last redraw of each), in order."""
        data = line.data
        if self.json_lines and data[:1] == b"{" and data[1:2] != b"'":
            # Canonical JSON on stdin is the common case: no list, no second look.
            parsed = parse_line(data)
            if type(parsed) is Record:
                return parsed
        results = self.parse_all(line.stream, data)
        if not results:
            return None
        if self._bar_hits:
            return self._bar_steps(line.stream, results)
        if len(results) == 1:
            return results[0]
        records = [r for r in results if type(r) is Record]
        return records[-1] if records else results[-1]

    def _bar_steps(self, stream: str, results: list[Record | ParseSkip]
                   ) -> list[Record | ParseSkip] | None:
        """One record per step of a line of bar redraws; a step already given on an earlier
        line (tqdm redraws the same counter) is not given again."""
        by_step: dict[int, Record | ParseSkip] = {}
        skips: list[Record | ParseSkip] = []
        for result in results:
            if type(result) is Record:
                by_step.pop(result.step, None)  # the last redraw of a counter wins
                by_step[result.step] = result
            else:
                skips.append(result)
        last = self._last_bar_step.get(stream)
        out = skips + [r for step, r in by_step.items() if step != last]
        if by_step:
            self._last_bar_step[stream] = next(reversed(by_step))
        return out or None

    def parse_all(self, stream: str, data: bytes) -> list[Record | ParseSkip]:
        """Every record (and skip) on one physical line of ``stream``."""
        self._bar_hits = 0
        json_skip: ParseSkip | None = None
        if self.json_lines:
            head = data.lstrip()[:2]
            if head[:1] == b"{" and head != b"{'":
                parsed = parse_line(data)
                if type(parsed) is Record:
                    return [parsed]
                json_skip = parsed  # type: ignore[assignment]
        needles = self._needles
        if needles is not None and not any(n in data for n in needles):
            return [json_skip] if json_skip is not None else []
        out: list[Record | ParseSkip] = []
        bar: tuple[int, int] | None = None  # the Trainer's bar as last drawn on this line
        bars = self.step_bar and (b"it/s]" in data or b"s/it]" in data)
        for text in segments(data.decode("utf-8", "replace")):
            if bars:
                drawn = trainer_bar(text)
                if drawn is not None:
                    bar = drawn
                    continue
            for matcher in self.matchers:
                found = matcher.match(text)
                if found is None:
                    continue
                if type(found) is ParseSkip:
                    out.append(found)
                else:
                    step, metrics, kind = found  # type: ignore[misc]
                    if matcher.key_map is not None:
                        metrics = matcher.key_map(metrics)
                    out.append(self._record(stream, step, metrics, kind, matcher.counted,
                                            bar))
                    if matcher.progress:
                        self._bar_hits += 1
                break
            else:
                if self.signals is not None:
                    signal = self.signals.scan(text)
                    if signal is not None:
                        out.append(self._signal(stream, signal))
        if not out and json_skip is not None:
            return [json_skip]
        return out

    def _signal(self, stream: str, metrics: dict[str, float]) -> Record:
        """A printed warning/error line, at the step being computed: the one whose log comes
        next (a trainer prints a step's warnings before its log). Partial, so it joins that
        log's record, and several lines of one step count once; a run that crashes before
        that log still has it evaluated, at that step."""
        progress = self._progress.get(stream)
        if progress is None:
            progress = self._progress[stream] = _Progress()
        if progress.signals_seen is None or progress.signals_since is None:
            progress.signals_seen, progress.signals_since = set(), set()
        progress.signals_seen.update(metrics)
        progress.signals_since.update(metrics)
        return Record(progress.step + self.logging_steps, metrics, None, 0, "train", True)

    def _record(self, stream: str, step: int | None, metrics: dict[str, float], kind: str,
                counted: bool, bar: tuple[int, int] | None = None) -> Record:
        progress = self._progress.get(stream)
        if progress is None:
            progress = self._progress[stream] = _Progress()
        if step is None:
            epoch = metrics.get("epoch")
            if self.steps_per_epoch is not None and epoch is not None and epoch == epoch:
                step = round(epoch * self.steps_per_epoch)
            elif kind == "train" and counted:
                progress.train_logs += 1
                step = progress.train_logs * self.logging_steps
            else:
                step = progress.step
        progress.step = step
        if kind == "train" and progress.signals_seen:
            # A signal this stream printed before is 0 on a step that did not print it, so a
            # rule's `for` counts consecutive steps and its alert resolves.
            assert progress.signals_since is not None
            for name in progress.signals_seen - progress.signals_since:
                metrics.setdefault(name, 0.0)
            progress.signals_since.clear()
        if counted and kind == "train" and self.step_bar:
            self._progress_metrics(metrics, step, bar)
        return Record(step, metrics, round(self._clock(), 6), 0, kind)


    def _progress_metrics(self, metrics: dict[str, float], step: int,
                          bar: tuple[int, int] | None) -> None:
        """progress/step and progress/total on a training log, for rules that extrapolate a
        schedule to the last step (common.warmup_outlasts_run).

        Only a bar drawn on the log's own physical line is known to be the Trainer's
        (``tqdm.write`` clears it there to print the log): a bar on another line may be a
        data-preparation loop's, an evaluation's, or, when the trainer's stdout is buffered
        and its logs come late in a block, far ahead of them. Its total is kept as the run's
        length for later logs printed without a redraw (and replaced by the next one seen:
        a second ``train()`` in one process). The step given is the smaller of the derived
        step and the bar's counter (which lags by one when steps beat tqdm's redraws): both
        errors make the extrapolation larger, so a rule errs towards quiet."""
        if bar is not None:
            self._run_length = bar[1]
        if self._run_length is None:
            return
        shown = step if bar is None else min(step, bar[0])
        metrics[PROGRESS_METRICS[0]] = float(shown)
        metrics[PROGRESS_METRICS[1]] = float(self._run_length)


def make_line_parser(regex: str | None, *, auto: bool = True, logging_steps: int = 1,
                     steps_per_epoch: int | None = None,
                     signals: list[str] | tuple[str, ...] | None = (),
                     map_keys: bool = False, step_bar: bool = True) -> LineParser:
    """The parser for a source: a stdout preset, a user's pattern, or auto-detection.

    * ``regex`` a preset name (``trl``, ``transformers``, ``verl``, ``openrlhf``, ``kv``) or a
      pattern with named groups (``step`` required), compiled with re2.
    * ``auto``: canonical JSON lines still parse; with ``regex=None`` every preset is tried.
      ``regex=None, auto=False`` is the plain canonical JSONL parser.
    * ``logging_steps`` / ``steps_per_epoch``: how the TRL step is derived (module doc).
    * ``signals``: the user's ``NAME=PATTERN`` signals, read with the built-in ones
      (ingest/signals.py) from lines no preset takes; ``None``: read no signals.
    * ``map_keys``: a line a preset with a ``field_map:`` read (verl, OpenRLHF) has its keys
      mapped by that map, whether the preset was named or found by auto-detection, so verl's
      ``actor/pg_loss`` feeds the loss rules. The monitor and ``run`` map; ``convert`` keeps
      the keys as printed.
    * ``step_bar``: training logs get ``progress/step`` and ``progress/total`` from the HF
      Trainer's step bar on their line (off for ``convert``: keys as printed).

    Raises :class:`~trainguard.exceptions.ConfigError` for a bad pattern or option.
    """
    if regex is None and not auto:
        return json_line_parser
    matchers: list[Matcher]
    if regex is None:
        matchers = [PresetMatcher(load_stdout_preset(name)) for name in AUTO_ORDER]
    elif regex in builtin_stdout_presets():
        matchers = [PresetMatcher(load_stdout_preset(regex))]
    else:
        matchers = [UserPattern(regex)]
    if map_keys:
        from trainguard.monitor.ingest.normalize import load_field_map

        for matcher in matchers:
            name = matcher.preset.field_map if isinstance(matcher, PresetMatcher) else None
            if name:
                matcher.key_map = load_field_map([name]).apply
    return StdoutParser(matchers, json_lines=auto, logging_steps=logging_steps,
                        steps_per_epoch=steps_per_epoch,
                        signals=None if signals is None else load_scanner(signals),
                        step_bar=step_bar)

