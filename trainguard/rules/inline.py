"""Inline rules from the command line: ``--alert "grpo: kl > 0.5 for 3 -> high/stop: KL blew up"``.

Grammar (a small parser of its own; the condition part goes to the condition language)::

    inline    := [TRAINER ':'] CONDITION ['for' N] '->' SEVERITY ['/' ACTION] ':' MESSAGE

TRAINER is a trainer kind (``grpo``, ``dpo``...; default ``any``), SEVERITY one of
info|low|medium|high|critical, ACTION ``warn`` (default) or ``stop``. The rule's ``metric`` (the
one its alert reports) is the first metric the condition names. The message may use the
placeholders of any rule message ({value} {step} {rank} {metric} {rule} {baseline}).
"""

from __future__ import annotations

import re

from pydantic import ValidationError

from trainguard.exceptions import ConfigError, RuleSyntaxError
from trainguard.rules.dsl import compile_condition
from trainguard.rules.loader import CompiledRule, compile_rule
from trainguard.rules.models import Action, Rule, Severity

__all__ = ["parse_inline_rule"]

_TRAINER = re.compile(r"^\s*([A-Za-z][\w]*)\s*:(?!=)")
_FOR = re.compile(r"\s+for\s+(\d+)\s*$")
_HEAD = re.compile(r"^\s*([A-Za-z]+)\s*(?:/\s*([A-Za-z]+)\s*)?:\s*(.*)$", re.DOTALL)
_NAME = re.compile(r"`([^`]+)`|[A-Za-z_][\w.]*(?:/[A-Za-z_][\w.]*)*")


def _fail(text: str, why: str) -> ConfigError:
    return ConfigError(f"--alert {text!r}: {why}; expected "
                       "'[TRAINER:] CONDITION [for N] -> SEVERITY[/stop]: MESSAGE', e.g. "
                       "'grpo: kl > 0.5 for 3 -> high: KL blew up'")


def parse_inline_rule(text: str, index: int = 1) -> CompiledRule:
    """Parse one ``--alert`` string into a compiled rule with id ``inline.INDEX``."""
    left, arrow, right = text.partition("->")
    if not arrow:
        raise _fail(text, "missing '->'")
    trainers = ["any"]
    match = _TRAINER.match(left)
    if match:
        trainers = [match.group(1).lower()]
        left = left[match.end():]
    for_ = 1
    match = _FOR.search(left)
    if match:
        for_ = int(match.group(1))
        left = left[:match.start()]
    condition = left.strip()
    if not condition:
        raise _fail(text, "no condition before '->'")
    head = _HEAD.match(right)
    if head is None:
        raise _fail(text, "after '->' give SEVERITY[/ACTION]: MESSAGE")
    severity, action, message = head.group(1).lower(), (head.group(2) or "warn").lower(), \
        head.group(3).strip()
    if severity not in Severity.__members__:
        raise _fail(text, f"unknown severity {severity!r} "
                    f"(one of {', '.join(Severity.__members__)})")
    if action not in Action.__members__:
        raise _fail(text, f"unknown action {action!r} (one of {', '.join(Action.__members__)})")
    rule_id = f"inline.{index}"
    try:
        compiled = compile_condition(condition, None, rule_id)
    except RuleSyntaxError as exc:
        raise RuleSyntaxError(exc.reason, text=exc.text, column=exc.column, rule=rule_id,
                              path="--alert") from exc
    metric = _first_metric(condition, compiled.metrics)
    if metric is None:
        raise _fail(text, "the condition names no metric")
    try:
        rule = Rule.model_validate({
            "id": rule_id, "metric": metric, "condition": condition, "severity": severity,
            "action": action, "trainers": trainers, "for": for_,
            "message": message or "{rule}: " + condition + " ({metric}={value} at step {step})",
            "reference": "command line",
        })
    except ValidationError as exc:
        raise _fail(text, str(exc.errors()[0]["msg"]).removeprefix("Value error, ")) from exc
    return compile_rule(rule, "--alert")


def _first_metric(condition: str, metrics: frozenset[str]) -> str | None:
    """The first name in the text that the compiled condition reads as a metric."""
    for match in _NAME.finditer(condition):
        name = match.group(1) or match.group(0)
        if name in metrics:
            return name
    return min(metrics) if metrics else None
