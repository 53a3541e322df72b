"""The catalogue of rules: what ``trainguard rules list | show | explain`` print.

Pure functions of loaded rules (loading goes through the loader); the CLI only prints them.
"""

from __future__ import annotations

from collections.abc import Iterable

from trainguard.exceptions import ConfigError
from trainguard.rules.loader import CompiledRule, builtin_pack_names, load_pack, parse_pack
from trainguard.rules.models import Rule

__all__ = ["catalog", "explain_rule", "find_rule", "show_rule", "validate_file"]


def catalog(specs: Iterable[str] = ()) -> list[tuple[str, CompiledRule]]:
    """(pack, rule) for every rule of ``specs`` (packs or files), default every built-in pack."""
    out: list[tuple[str, CompiledRule]] = []
    for spec in list(specs) or builtin_pack_names():
        out.extend((spec, rule) for rule in load_pack(spec))
    return out


def find_rule(rule_id: str, specs: Iterable[str] = ()) -> tuple[str, CompiledRule]:
    """The rule with ``rule_id``; an unknown id names close matches."""
    rules = catalog(specs)
    for pack, compiled in rules:
        if compiled.rule.id == rule_id:
            return pack, compiled
    import difflib

    ids = [c.rule.id for _, c in rules]
    close = difflib.get_close_matches(rule_id, ids, n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(ids)}"
    raise ConfigError(f"no rule with id {rule_id!r}{hint}")


def show_rule(compiled: CompiledRule) -> str:
    """The rule as YAML-like text, every field with its value (defaults included)."""
    data = compiled.rule.model_dump(by_alias=True, mode="json")
    width = max(len(k) for k in data)
    lines = [f"# from {compiled.source}"]
    lines += [f"{k + ':':<{width + 1}} {v}" for k, v in data.items()]
    return "\n".join(lines)


def _timing(rule: Rule) -> str:
    parts = []
    if rule.warmup:
        parts.append(f"ignores its first {rule.warmup} evaluations (warm-up)")
    parts.append("fires on the first true evaluation" if rule.for_ == 1 else
                 f"fires after {rule.for_} consecutive true evaluations (one false one resets)")
    parts.append(f"resolves after {rule.keep_firing_for + 1} false evaluation"
                 + ("s in a row" if rule.keep_firing_for else ""))
    if rule.cooldown:
        parts.append(f"then stays quiet for {rule.cooldown} steps")
    if rule.repeat_interval:
        parts.append(f"re-notifies every {rule.repeat_interval} steps while firing")
    return "; ".join(parts)


_SCOPE = {"rank": "each rank on its own", "any": "one alert when any rank fires",
          "all": "one alert when every rank fires", "mean": "the mean of the ranks' values"}


def explain_rule(compiled: CompiledRule, pack: str = "") -> str:
    """What the rule watches, when it fires, why it matters, and where that comes from."""
    rule = compiled.rule
    watches = ", ".join(sorted(compiled.condition.metrics)) or rule.metric
    trainers = ", ".join(rule.trainers)
    lines = [
        f"{rule.id}" + (f"  (pack {pack})" if pack else ""),
        f"  watches:        {watches}  (reports {rule.metric})",
        f"  condition:      {rule.condition}",
        f"  applies to:     {trainers} trainers; {_SCOPE[rule.scope]}",
        f"  timing:         {_timing(rule)}",
        f"  time to detect: {compiled.timing().describe()}",
        f"  severity:       {rule.severity.value}; action: {rule.action.value}"
        + (" (stops the run when stopping is enabled)" if rule.action.value == "stop" else ""),
        f"  message:        {rule.message}",
        f"  recommendation: {rule.recommendation or '(none)'}",
        f"  reference:      {rule.reference}",
    ]
    return "\n".join(lines)


def validate_file(path: str) -> list[CompiledRule]:
    """Load, validate and compile a rule file; raises ConfigError on the first bad document."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError as exc:
        raise ConfigError("rule file not found", path=path) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read rule file: {exc}", path=path) from exc
    return parse_pack(text, path)
