"""The alert of a life-cycle transition: its message filled from the rule's templates.

Built only when a rule fires, re-notifies or resolves, from what :class:`~trainguard.monitor.
engine.rulestate.Entry` took of the rule once (id, metric, the enums' values), so a storm of
alerts does not pay for the pydantic model's and the enums' attribute look-ups each time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from trainguard.monitor.engine.alerts import Alert
from trainguard.monitor.engine.lifecycle import REPEAT, RESOLVED
from trainguard.monitor.engine.rulestate import Entry, RuleState

__all__ = ["build_alert", "format_value"]


def format_value(value: float | None) -> str:
    """A metric value as a person reads it: 4 significant digits, NaN/inf spelled out."""
    if value is None:
        return "n/a"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4g}"


def build_alert(entry: Entry, state: RuleState, rank: int | None, step: int,
                metrics: Mapping[str, float], time: float | None, change: int,
                baseline: float | None) -> Alert:
    """The alert of ``change`` (a transition of :mod:`~trainguard.monitor.engine.lifecycle`)
    of ``entry`` on ``rank`` (``None``: a group's) at a record of ``step``."""
    rule = entry.compiled.rule
    value = metrics.get(entry.metric)
    message, recommendation = rule.message, rule.recommendation
    shown = format_value(value)
    if entry.message_templated or entry.recommendation_templated:
        fields = {
            "rule": entry.rule_id, "metric": entry.metric, "value": shown,
            "step": step, "rank": "all" if rank is None else rank,
            # unused by most templates: not formatted for them (a storm of alerts pays it)
            "baseline": format_value(baseline) if entry.shows_baseline else "",
        }
        try:  # format_map: str.format(**fields) without copying the fields into keywords
            if entry.message_templated:
                message = message.format_map(fields)
            if entry.recommendation_templated:
                recommendation = recommendation.format_map(fields)
        except (KeyError, IndexError, ValueError, AttributeError):
            message, recommendation = rule.message, rule.recommendation
    if change == RESOLVED:
        message = f"resolved: {entry.rule_id} ({entry.metric}={shown} at step {step})"
    elif change == REPEAT:
        message = f"still firing since step {state.fired_at_step}: {message}"
    # Positional, in Alert's field order: a third cheaper than keywords.
    return Alert(time, entry.rule_id, entry.severity, entry.action, entry.metric, value, step,
                 rank, message, recommendation, rule.reference,
                 "resolved" if change == RESOLVED else "firing")
