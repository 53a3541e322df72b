"""Rule files: YAML attacks refused (T28), every mistake located with what would be valid,
--set-rule overrides validated through the model, and inline --alert rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainguard.exceptions import ConfigError, RuleSyntaxError
from trainguard.rules.inline import parse_inline_rule
from trainguard.rules.loader import MAX_YAML_BYTES, apply_overrides, load_pack, load_rules

GOOD = "rules:\n  - id: t.a\n    metric: loss\n    condition: loss > 1\n"


def _file(tmp_path: Path, text: str, name: str = "r.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _bomb(levels: int) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_by_the_node_cap(tmp_path: Path):
    """T28: a 30-level billion-laughs file (10^30 nodes expanded) is refused by the node cap;
    benchmarks/bench_engine.py times it (target < 100 ms)."""
    path = _file(tmp_path, _bomb(30))
    with pytest.raises(ConfigError, match="alias bomb"):
        load_pack(path)


@pytest.mark.parametrize("tag", [
    "!!python/object/apply:os.system ['echo pwned']",
    "!!python/object:os.system {}",
    "!!python/name:os.system",
    "!!python/module:os",
    "!custom {a: 1}",
])
def test_object_building_tags_are_refused_with_the_line(tmp_path: Path, tag: str):
    """T28: any tag beyond plain data is refused, naming the file and line."""
    path = _file(tmp_path, f"pack: t\nrules: {tag}\n")
    with pytest.raises(ConfigError) as info:
        load_pack(path)
    assert f"{path}:2: YAML tag" in str(info.value)


def test_oversize_file_is_refused(tmp_path: Path):
    """T28: a rule file over 1 MiB is refused before parsing."""
    path = _file(tmp_path, GOOD + "#" * MAX_YAML_BYTES)
    with pytest.raises(ConfigError, match="larger than"):
        load_pack(path)


def test_recursive_alias_is_refused(tmp_path: Path):
    """A self-referencing alias is an error, not an endless walk."""
    with pytest.raises(ConfigError, match="refers to itself"):
        load_pack(_file(tmp_path, "a: &a [1, *a]\n"))


def test_unknown_field_lists_the_valid_fields_with_line(tmp_path: Path):
    """A typo'd field names the file, line, field path and every valid field."""
    path = _file(tmp_path, GOOD + "    colour: red\n")
    with pytest.raises(ConfigError) as info:
        load_pack(path)
    text = str(info.value)
    assert f"{path}:5: rules.0.colour: rule t.a: unknown field 'colour'" in text
    assert "keep_firing_for" in text and "severity" in text


def test_bad_severity_lists_the_severities(tmp_path: Path):
    """A bad severity lists info, low, medium, high, critical and what was given."""
    path = _file(tmp_path, GOOD + "    severity: urgent\n")
    with pytest.raises(ConfigError) as info:
        load_pack(path)
    assert (f"{path}:5: rules.0.severity: rule t.a: must be one of 'info', 'low', 'medium', "
            "'high' or 'critical' (got 'urgent')") == str(info.value)


def test_every_mistake_is_reported_not_only_the_first(tmp_path: Path):
    """Two mistakes in two rules: both appear, each with its own line."""
    text = (GOOD + "    scope: world\n"
            "  - id: t.b\n    metric: loss\n    condition: loss\n    for: 0\n")
    path = _file(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_pack(path)
    message = str(info.value)
    assert "rules.0.scope" in message and f"{path}:9: rules.1.for" in message


def test_unknown_placeholder_in_message_is_refused(tmp_path: Path):
    """A message template with {vlaue} is refused at load, listing the placeholders."""
    path = _file(tmp_path, GOOD + "    message: 'loss {vlaue}'\n")
    with pytest.raises(ConfigError, match=r"unknown placeholder \{vlaue\}.*\{baseline\}"):
        load_pack(path)


def test_condition_error_points_at_file_line_and_column(tmp_path: Path):
    """A condition syntax error carries path, the condition's line and the column."""
    path = _file(tmp_path, GOOD.replace("loss > 1", "loss > > 1"))
    with pytest.raises(RuleSyntaxError) as info:
        load_pack(path)
    assert (4, 8) == (info.value.line, info.value.column)
    assert str(info.value).startswith(f"{path}:4: condition: rule t.a:")


def test_duplicate_rule_ids_in_one_file_are_refused(tmp_path: Path):
    """Two rules with one id in a file is a mistake, located at the second."""
    path = _file(tmp_path, GOOD + GOOD.removeprefix("rules:\n"))
    with pytest.raises(ConfigError, match="duplicate rule id 't.a'"):
        load_pack(path)


def test_repository_example_rules_file_loads():
    """rules.yaml at the repository root is valid and shows every timing field."""
    rules = load_pack(str(Path(__file__).resolve().parent.parent / "rules.yaml"))
    used = {f for r in rules for f in r.rule.model_fields_set}
    assert {"warmup", "for_", "keep_firing_for", "cooldown", "repeat_interval", "scope",
            "trainers"} <= used


def test_set_rule_changes_a_field_through_the_model():
    """--set-rule common.loss_spike.for=10 changes that rule's for."""
    (rule,) = [r for r in apply_overrides(load_rules(["common"]), ["common.loss_spike.for=10"])
               if r.rule.id == "common.loss_spike"]
    assert 10 == rule.rule.for_


@pytest.mark.parametrize(("spec", "fragment"), [
    ("common.loss_spike.for=0", "greater than or equal to 1"),
    ("common.loss_spike.severity=urgent", "must be one of 'info'"),
    ("common.loss_spike.colour=red", "unknown field 'colour'; valid fields:"),
    ("common.no_such.for=3", "no loaded rule has id 'common.no_such'"),
    ("common.loss_spike.condition=spike(>", "unexpected"),
    ("nonsense", "expected ID.FIELD=VALUE"),
])
def test_set_rule_mistakes_say_what_is_valid(spec: str, fragment: str):
    """Bad --set-rule values are refused with what would be valid."""
    with pytest.raises(ConfigError, match=None) as info:
        apply_overrides(load_rules(["common"]), [spec])
    assert fragment in str(info.value)


def test_set_rule_enabled_false_removes_the_rule():
    """enabled=false turns a rule off."""
    rules = apply_overrides(load_rules(["common"]), ["common.loss_spike.enabled=false"])
    assert "common.loss_spike" not in {r.rule.id for r in rules}


def test_inline_rule_parses_trainer_condition_for_severity_and_message():
    """The documented example becomes the rule it says."""
    rule = parse_inline_rule("grpo: importance_sampling_ratio < 0.5 for 3 -> high: IS ratio "
                             "collapsed").rule
    assert (["grpo"], "importance_sampling_ratio", "importance_sampling_ratio < 0.5", 3, "high",
            "warn", "IS ratio collapsed") == (rule.trainers, rule.metric, rule.condition,
                                              rule.for_, rule.severity.value, rule.action.value,
                                              rule.message)


def test_inline_rule_with_stop_and_no_trainer():
    """'-> critical/stop:' sets the action; no trainer prefix means any."""
    rule = parse_inline_rule("`rewards/margins` < 0 and loss > 1 -> critical/stop: bad", 2).rule
    assert ("inline.2", ["any"], "rewards/margins", "stop") == (
        rule.id, rule.trainers, rule.metric, rule.action.value)


@pytest.mark.parametrize(("text", "fragment"), [
    ("loss > 1", "missing '->'"),
    ("loss > 1 -> urgent: x", "unknown severity 'urgent'"),
    ("loss > 1 -> high/kill: x", "unknown action 'kill'"),
    (" -> high: x", "no condition"),
    ("loss >> 1 -> high: x", "column 7"),
    ("1 > 0 -> high: x", "names no metric"),
    ("__class__ > 0 -> high: x", "not allowed"),
])
def test_inline_rule_mistakes_are_explained(text: str, fragment: str):
    """A malformed --alert names the problem and the expected form."""
    with pytest.raises(ConfigError) as info:
        parse_inline_rule(text)
    assert fragment in str(info.value)
