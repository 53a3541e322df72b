"""Rule and rule-pack models: pydantic at the edge, validated once at load time."""

from __future__ import annotations

import string
from collections.abc import Mapping
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["Action", "Rule", "RulePack", "Severity", "SEVERITY_ORDER", "TEMPLATE_FIELDS",
           "SCOPES", "TIMINGS"]

#: The placeholders a rule's ``message`` and ``recommendation`` may use.
TEMPLATE_FIELDS = ("value", "step", "rank", "metric", "rule", "baseline")
SCOPES = ("rank", "any", "all", "mean")
#: How fast a rule must call what it watches (``trainguard.rules.timing`` holds the budgets).
TIMINGS = ("exact", "noisy", "slow")


class Severity(str, Enum):
    """How bad a finding is; ``high`` and above make ``trainguard monitor`` exit 2."""

    info = "info"
    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"


SEVERITY_ORDER: dict[str, int] = {s.value: i for i, s in enumerate(Severity)}


class Action(str, Enum):
    """What a firing rule asks for: a warning, or a stop of the trainer."""

    warn = "warn"
    stop = "stop"


class Rule(BaseModel):
    """One rule: what it watches, when it fires, and what it tells the user."""

    # defer_build: the validator is built on the first validation, not at import; a start that
    # takes its built-in packs from the cache (builtin_cache.py) never builds it (~40 ms).
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True,
                              defer_build=True)

    id: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$",
                    description="Unique id, e.g. common.nonfinite_loss")
    metric: str = Field(description="The metric the rule reports (after normalization)")
    condition: str = Field(description="An expression in the condition language")
    severity: Severity = Severity.medium
    action: Action = Action.warn
    trainers: list[str] = Field(default_factory=lambda: ["any"],
                                description="Trainer kinds the rule applies to, or 'any'")
    message: str = Field(default="{rule} fired: {metric}={value} at step {step}",
                         description="Template: {metric} {value} {step} {rank} {rule} {baseline}")
    recommendation: str = ""
    reference: str = "practitioner"
    warmup: int = Field(default=0, ge=0, description="Steps to ignore at the start of the run")
    for_: int = Field(default=1, ge=1, alias="for",
                      description="Consecutive true evaluations before firing")
    keep_firing_for: int = Field(default=0, ge=0,
                                 description="False evaluations tolerated before resolving")
    cooldown: int = Field(default=0, ge=0,
                          description="Steps after a resolve before the rule may fire again")
    repeat_interval: int = Field(default=0, ge=0,
                                 description="While firing, notify again every N steps (0: once)")
    scope: Literal["rank", "any", "all", "mean"] = Field(
        default="rank", description="rank: per rank; any: one alert when any rank fires; "
        "all: when every rank fires; mean: on the mean of the ranks' values")
    enabled: bool = True
    timing: Literal["exact", "noisy", "slow"] = Field(
        default="noisy", description="exact: a signature with no false reading (NaN, exactly "
        "zero), fires within 3 logged steps; noisy: fires within 5; slow: a trend, within 30")

    @field_validator("trainers")
    @classmethod
    def _lowercase(cls, value: list[str]) -> list[str]:
        return [t.lower() for t in value] or ["any"]

    @field_validator("message", "recommendation")
    @classmethod
    def _template(cls, value: str) -> str:
        """Refuse unknown placeholders at load time, not when the alert fires."""
        try:
            names = [name for _, name, _, _ in string.Formatter().parse(value) if name is not None]
        except ValueError as exc:
            raise ValueError(f"bad template ({exc}); write a literal brace as {{{{ or }}}}") \
                from None
        for name in names:
            if name not in TEMPLATE_FIELDS:
                raise ValueError(f"unknown placeholder {{{name}}}; valid: "
                                 + ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS))
        return value

    def validated_fields(self) -> dict[str, Any]:
        """The fields set on this (validated) rule, by field name, as JSON data."""
        return self.model_dump(mode="json", exclude_unset=True)

    @classmethod
    def from_validated(cls, fields: Mapping[str, Any]) -> Rule:
        """The rule whose :meth:`validated_fields` were ``fields``, without validating again.

        Only for data this process's code wrote from a validated rule (the built-in pack cache,
        keyed by this module's source): it is trusted, so the enums are all that is rebuilt.
        Raises ValueError for a field the model does not have.
        """
        values = dict(fields)
        unknown = values.keys() - cls.model_fields.keys()
        if unknown:
            raise ValueError(f"not fields of a rule: {', '.join(sorted(unknown))}")
        if "severity" in values:
            values["severity"] = Severity(values["severity"])
        if "action" in values:
            values["action"] = Action(values["action"])
        return cls.model_construct(**values)


class RulePack(BaseModel):
    """A named collection of rules, as shipped in ``trainguard/rules/packs/NAME.yaml``."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    pack: str
    description: str = ""
    rules: list[Rule] = Field(default_factory=list)
