"""Matchers of the stdout parser (:mod:`trainguard.monitor.ingest.stdout`): one compiled
preset or user pattern each, turning one visible piece of a console line into (printed step or
None, metrics, kind), a :class:`~trainguard.events.ParseSkip`, or nothing. Pure: the step a
counted log gets and everything else that needs a stream's history is the parser's.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from trainguard.events import ParseSkip, decode_value
from trainguard.exceptions import ConfigError
from trainguard.monitor.ingest.signals import compile_safe, quoted
from trainguard.monitor.ingest.stdout_text import decode_token, scan_log_dict

if TYPE_CHECKING:
    from trainguard.monitor.ingest.stdout import StdoutPreset

__all__ = ["Found", "Matcher", "PresetMatcher", "UserPattern"]

#: What a matcher found on one segment: (printed step or None, metrics, kind).
Found = tuple[int | None, dict[str, float], str]


def _kind(metrics: dict[str, float], text: str) -> str:
    """train, eval (``eval_*`` keys) or summary (``train_runtime``), as the callback says."""
    if "train_runtime" in metrics:
        return "summary"
    if "eval_" in text and any(key.startswith("eval_") for key in metrics):
        return "eval"
    return "train"


def _int_step(raw: str) -> int | None:
    try:
        return int(raw)
    except ValueError:
        value = decode_value(raw)
        return int(value) if value is not None and value.is_integer() else None


class PresetMatcher:
    """A compiled :class:`StdoutPreset`."""

    __slots__ = ("preset", "counted", "progress", "needle", "key_map", "_line", "_pair",
                 "_require")

    def __init__(self, preset: StdoutPreset) -> None:
        self.preset = preset
        self.counted = preset.step == "count"
        self.progress = preset.step == "progress"
        #: The preset's field map (``field_map:``), set by a parser that maps keys.
        self.key_map: Callable[[dict[str, float]], dict[str, float]] | None = None
        self.needle = preset.contains.encode()
        self._line = re.compile(preset.line) if preset.line else None
        self._pair = re.compile(preset.pair) if preset.pair else None
        self._require = frozenset(preset.require_any)

    def match(self, text: str) -> Found | ParseSkip | None:
        preset = self.preset
        if preset.contains not in text:
            return None
        step: int | None = None
        body_start, body = 0, text
        if self._line is not None:
            m = self._line.search(text)
            if m is None:
                return None
            body_start, body = m.start("body"), m.group("body")
            if preset.step in ("group", "progress"):
                step = _int_step(m.group("step"))
                if step is None:
                    return ParseSkip("bad_step", m.group("step")[:40])
                if self.progress:
                    if m.groupdict().get("total") == str(step):
                        # The bar's last redraw repeats the postfix drawn at total - 1 (the
                        # next epoch's bar starts at the same step number).
                        return None
                    step += _epoch_offset(m)
        if preset.format == "log_dict":
            scanned = scan_log_dict(text, body_start)
            if scanned is None:
                return ParseSkip("bad_log_dict", text[body_start:body_start + 60])
            metrics, keys = scanned
            if self._require and not (self._require & keys):
                return None  # some other dict the program printed
        else:
            assert self._pair is not None
            metrics = {}
            raw_step: str | None = None
            for item in self._pair.finditer(body):
                key, raw = item.group("key"), item.group("value")
                if key == preset.step_key and preset.step == "key":
                    raw_step = raw
                    continue
                value = decode_token(raw)
                if value is not None:
                    metrics[key] = value
            if preset.step == "key":
                if raw_step is None:
                    return None
                step = _int_step(raw_step)
                if step is None:
                    return ParseSkip("bad_step", raw_step[:40])
        if not metrics:
            return None
        return step, metrics, _kind(metrics, text)


class UserPattern:
    """A user's ``--regex`` pattern, compiled with re2 (linear time, no backtracking)."""

    __slots__ = ("counted", "progress", "needle", "key_map", "_regex", "_names")

    def __init__(self, pattern: str) -> None:
        shown = quoted(pattern)
        self._regex = compile_safe(pattern, "--regex")
        names = dict(self._regex.groupindex)
        if "step" not in names:
            from trainguard.monitor.ingest.stdout import builtin_stdout_presets  # its caller

            raise ConfigError(f"--regex {shown}: not a preset name ("
                              + ", ".join(sorted(builtin_stdout_presets()))
                              + ") and has no (?P<step>...) group; name the step group, and one "
                              "group per metric, e.g. 'step (?P<step>\\d+) loss (?P<loss>\\S+)'")
        self._names = [(n, n.replace("__", "/")) for n in names if n != "step"]
        if not self._names:
            raise ConfigError(f"--regex {shown}: no metric group; add a named group per "
                              "metric, e.g. (?P<loss>\\S+)")
        self.counted = False
        self.progress = False
        self.key_map = None
        self.needle = b""

    def match(self, text: str) -> Found | ParseSkip | None:
        m = self._regex.search(text)
        if m is None:
            return None
        raw_step = m.group("step")
        step = _int_step(raw_step) if raw_step is not None else None
        if step is None:
            return ParseSkip("bad_step", str(raw_step)[:40])
        metrics: dict[str, float] = {}
        for group, name in self._names:
            raw = m.group(group)
            if raw is None:
                continue
            value = decode_token(raw.strip())
            if value is None:
                return ParseSkip("bad_value", f"{name}={raw!r}"[:60])
            metrics[name] = value
        return (step, metrics, _kind(metrics, text)) if metrics else None


Matcher = PresetMatcher | UserPattern


def _epoch_offset(m: re.Match[str]) -> int:
    """``epoch x total`` of a progress bar that restarts each epoch, when the line shows both."""
    groups = m.groupdict()
    epoch, total = groups.get("epoch"), groups.get("total")
    if epoch is None or total is None or not epoch.isdigit() or not total.isdigit():
        return 0
    return int(epoch) * int(total)
