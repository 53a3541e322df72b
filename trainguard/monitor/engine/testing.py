"""Unit tests for rules, in the style of ``promtool test rules``; and ``replay`` for rule authors.

A test file (see ``trainguard/rules/tests/*.yaml``)::

    rules: [common, dpo_basic]     # packs or rule files (default: common + the file's stem)
    trainer: dpo                   # optional: only rules whose `trainers` include it (or any)
    cases:
      - name: loss stuck at ln 2 fires
        series: {loss: "0.6931x60"}     # one value per step from step 1; "VxN" repeats;
                                        # nan/inf/-inf; "_" = metric absent that step
        check: [dpo.loss_stuck_ln2]     # compare only these rules' alerts (default: all)
        expect: [{rule: dpo.loss_stuck_ln2, step: 45}]   # exactly the FIRING alerts
      - name: ...
        ranks: {0: {loss: "..."}, 1: {loss: "..."}}   # instead of series: per rank
        step_seconds: 1.0                              # time between steps
        requires: [stale]                              # skip unless these functions exist
                                                       # (also at file level)

Everything here is pure apart from reading the test file: the same file gives the same result.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from trainguard.exceptions import ConfigError
from trainguard.monitor.engine.alerts import Alert
from trainguard.monitor.engine.engine import Engine
from trainguard.monitor.engine.ranks import StragglerScores
from trainguard.rules.dsl import FUNCTIONS
from trainguard.rules.loader import CompiledRule, builtin_pack_names, load_rules, load_yaml

__all__ = ["CaseResult", "parse_series", "replay", "run_rule_tests", "select_rules"]


@dataclass(frozen=True, slots=True)
class CaseResult:
    """The outcome of one test case; ``detail`` says what differed (or why it was skipped)."""

    name: str
    passed: bool
    detail: str = ""
    skipped: bool = False


_SPECIAL = {"nan": math.nan, "inf": math.inf, "+inf": math.inf, "-inf": -math.inf}


def parse_series(spec: Any) -> list[float | None]:
    """``"1 2 0.5x3 nan _"`` (or a list of numbers) -> values per step; ``None`` = absent."""
    items: list[Any] = list(spec) if isinstance(spec, list) else str(spec).split()
    out: list[float | None] = []
    for item in items:
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            out.append(float(item))
            continue
        text = str(item).strip().lower()
        count = 1
        if "x" in text:
            text, _, times = text.rpartition("x")
            try:
                count = int(times)
            except ValueError as exc:
                raise ConfigError(f"bad repeat count in series item {item!r}") from exc
        if text in ("_", "null", "none"):
            value: float | None = None
        elif text in _SPECIAL:
            value = _SPECIAL[text]
        else:
            try:
                value = float(text)
            except ValueError as exc:
                raise ConfigError(f"bad series item {item!r} (a number, nan, inf, -inf, _, "
                                  "or VxN)") from exc
        out.extend([value] * count)
    return out


def select_rules(rules: Iterable[CompiledRule], trainer: str | None) -> list[CompiledRule]:
    """The rules that apply to ``trainer`` (all of them when it is ``None``)."""
    if trainer is None:
        return list(rules)
    kind = trainer.lower()
    return [r for r in rules if "any" in r.rule.trainers or kind in r.rule.trainers]


def _steps(per_rank: Mapping[int, Mapping[str, list[float | None]]]
           ) -> Iterable[tuple[int, int, dict[str, float]]]:
    length = max((len(v) for series in per_rank.values() for v in series.values()), default=0)
    for i in range(length):
        for rank in sorted(per_rank):
            metrics = {name: vals[i] for name, vals in per_rank[rank].items()
                       if i < len(vals) and vals[i] is not None}
            yield i + 1, rank, metrics  # type: ignore[misc]


def replay(records_or_path: str | os.PathLike[str] | Iterable[Mapping[str, Any]],
           rules: Sequence[CompiledRule] | Sequence[str], *, trainer: str | None = None,
           resolved: bool = False) -> list[Alert]:
    """Feed step records through a fresh engine; return the alerts (firing only by default).

    ``records_or_path`` is a canonical JSONL file (parsed with :mod:`trainguard.events`) or an
    iterable of ``{"step": int, "rank": int, "time": float, "metrics": {...}}`` dicts.
    ``rules`` is compiled rules, or pack names / rule-file paths.
    """
    compiled = (load_rules(rules) if rules and isinstance(rules[0], str)  # type: ignore[arg-type]
                else list(rules))
    engine = Engine(select_rules(compiled, trainer))  # type: ignore[arg-type]
    stragglers = StragglerScores()  # as the monitor does: cross-rank scores per complete step
    out: list[Alert] = []
    for rank, step, metrics, time in _records(records_or_path):
        stragglers.observe(rank, step, metrics, time)
        for r, s, m, t in [(rank, step, metrics, time), *stragglers.scores()]:
            for alert in engine.evaluate(r, s, m, t):
                if resolved or alert.state == "firing":
                    out.append(alert)
    return out


def _records(source: str | os.PathLike[str] | Iterable[Mapping[str, Any]]
             ) -> Iterable[tuple[int, int, dict[str, float], float | None]]:
    if isinstance(source, (str, os.PathLike)):
        from trainguard.events import Record, parse_line
        # One-metric events of the same rank and step are merged into one step record, as the
        # monitor does; eval and summary records are not training steps.
        pending: dict[int, tuple[int, dict[str, float], float | None]] = {}
        with open(source, "rb") as fh:
            for raw in fh:
                rec = parse_line(raw)
                if not isinstance(rec, Record) or rec.kind != "train":
                    continue
                held = pending.get(rec.rank)
                if held is not None and held[0] != rec.step:
                    yield rec.rank, held[0], held[1], held[2]
                    held = None
                if held is None:
                    held = pending[rec.rank] = (rec.step, {}, rec.time)
                held[1].update(rec.metrics)
                if not rec.partial:
                    yield rec.rank, held[0], held[1], held[2]
                    del pending[rec.rank]
        for rank, (step, metrics, time) in sorted(pending.items()):
            yield rank, step, metrics, time
        return
    for obj in source:
        metrics = {k: float(v) for k, v in obj.get("metrics", {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        yield int(obj.get("rank", 0)), int(obj["step"]), metrics, obj.get("time")


def _rule_specs(data: Mapping[str, Any], path: Path) -> list[str]:
    specs = data.get("rules")
    if specs is None:
        names = builtin_pack_names()
        specs = ["common"] + ([path.stem] if path.stem in names and path.stem != "common" else [])
    if isinstance(specs, str):
        specs = [specs]
    resolved = []
    for spec in specs:
        candidate = path.parent / str(spec)
        resolved.append(str(candidate) if candidate.suffix in (".yaml", ".yml") else str(spec))
    return resolved


def _run_case(case: Mapping[str, Any], rules: list[CompiledRule]) -> CaseResult:
    name = str(case.get("name", "unnamed case"))
    missing = [f for f in case.get("requires", []) or [] if f not in FUNCTIONS]
    if missing:
        return CaseResult(name, True, f"skipped: needs function(s) {', '.join(missing)}",
                          skipped=True)
    if "ranks" in case:
        per_rank = {int(r): {m: parse_series(s) for m, s in series.items()}
                    for r, series in case["ranks"].items()}
    else:
        per_rank = {0: {m: parse_series(s) for m, s in (case.get("series") or {}).items()}}
    seconds = case.get("step_seconds")
    check = case.get("check")
    engine = Engine(rules)
    actual: list[tuple[str, int, int | None]] = []
    for step, rank, metrics in _steps(per_rank):
        time = step * float(seconds) if seconds is not None else None
        for alert in engine.evaluate(rank, step, metrics, time):
            if alert.state == "firing" and (check is None or alert.rule in check):
                actual.append((alert.rule, alert.step, alert.rank))
    expected = [(str(e["rule"]), int(e["step"]), e.get("rank")) for e in case.get("expect") or []]
    remaining = list(actual)
    unmatched = []
    for rule, step, rank in expected:
        hit = next((a for a in remaining if a[0] == rule and a[1] == step
                    and (rank is None or a[2] == int(rank))), None)
        if hit is None:
            unmatched.append((rule, step, rank))
        else:
            remaining.remove(hit)
    if not unmatched and not remaining:
        return CaseResult(name, True)
    fmt = ", ".join
    detail = (f"expected {fmt(f'{r}@{s}' for r, s, _ in expected) or 'no alerts'}; "
              f"got {fmt(f'{r}@{s}(rank {k})' for r, s, k in actual) or 'no alerts'}")
    return CaseResult(name, False, detail)


def run_rule_tests(path: str | os.PathLike[str]) -> list[CaseResult]:
    """Run every case of one rule test file; a broken file raises :class:`ConfigError`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read rule test file: {exc}", path=str(p)) from exc
    data = load_yaml(text, str(p))
    if not isinstance(data, Mapping) or not isinstance(data.get("cases"), list):
        raise ConfigError("expected a mapping with 'cases:' (a list)", path=str(p))
    missing = [f for f in data.get("requires", []) or [] if f not in FUNCTIONS]
    if missing:  # the rules themselves would not compile: skip every case
        reason = f"skipped: needs function(s) {', '.join(missing)}"
        return [CaseResult(str(c.get("name", "?")), True, reason, skipped=True)
                for c in data["cases"]]
    rules = select_rules(load_rules(_rule_specs(data, p)), data.get("trainer"))
    results = []
    for case in data["cases"]:
        try:
            results.append(_run_case(case, rules))
        except (ConfigError, KeyError, TypeError, ValueError) as exc:
            results.append(CaseResult(str(case.get("name", "?")), False, f"bad case: {exc}"))
    return results


def builtin_test_files() -> list[Path]:
    """The rule test files shipped for the built-in packs (``trainguard/rules/tests/*.yaml``)."""
    # The test files are data of the rules package, next to the packs they test.
    root = Path(str(resources.files("trainguard.rules") / "tests"))
    return sorted(root.glob("*.yaml"))
