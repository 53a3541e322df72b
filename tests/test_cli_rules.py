"""`trainguard rules list|show|explain|validate`, `--set-rule`, `--alert` and trainer
auto-selection, end to end through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import ROOT, run_cli


def _events(path: Path, rows: list[dict[str, float]]) -> Path:
    path.write_text("".join(json.dumps({"step": i, "metrics": m}) + "\n"
                            for i, m in enumerate(rows, 1)))
    return path


def test_rules_list_names_every_builtin_rule():
    """rules list prints each rule with its severity, action and pack."""
    result = run_cli("rules", "list")
    out = result.stdout.decode()
    assert 0 == result.returncode, result.stderr
    assert "common.nonfinite_loss" in out and "critical" in out and "[common]" in out


def test_rules_show_prints_every_field():
    """rules show ID prints all fields, defaults included."""
    out = run_cli("rules", "show", "common.loss_spike").stdout.decode()
    assert "condition:" in out and "keep_firing_for:" in out and "for:" in out


def test_rules_explain_says_what_why_and_where_from():
    """rules explain ID gives what it watches, the timing, the recommendation and reference."""
    out = run_cli("rules", "explain", "common.loss_spike").stdout.decode()
    assert "watches:        loss" in out
    assert "fires after 3 consecutive true evaluations" in out
    assert "reference:      MosaicML llm-foundry" in out and "recommendation:" in out


def test_rules_explain_unknown_id_suggests_close_ones():
    """A typo'd id exits 1 with a suggestion and no traceback."""
    result = run_cli("rules", "explain", "common.loss_spke")
    err = result.stderr.decode()
    assert (1, True, False) == (result.returncode, "did you mean common.loss_spike" in err,
                                "Traceback" in err)


def test_rules_validate_accepts_the_example_file():
    """The repository's rules.yaml validates."""
    result = run_cli("rules", "validate", str(ROOT / "rules.yaml"))
    assert (0, True) == (result.returncode, "OK, 7 rules" in result.stdout.decode())


def test_rules_validate_locates_mistakes_and_exits_one(tmp_path: Path):
    """A bad file: exit 1, file:line, the field and the valid severities."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - id: a\n    metric: loss\n    condition: loss > 1\n"
                   "    severity: urgent\n")
    result = run_cli("rules", "validate", str(bad))
    err = result.stderr.decode()
    assert 1 == result.returncode
    assert f"{bad}:5: rules.0.severity" in err and "'critical'" in err


def test_inline_alert_fires_in_monitor(tmp_path: Path):
    """--alert adds a rule that fires with its message; high severity makes the exit 2."""
    events = _events(tmp_path / "e.jsonl", [{"kl": 0.1}, {"kl": 0.9}, {"kl": 0.9}, {"kl": 0.9}])
    alerts = tmp_path / "a.jsonl"
    result = run_cli("monitor", str(events), "--once", "--alerts", str(alerts),
                     "--alert", "kl > 0.5 for 3 -> high: KL {value} at step {step}")
    (alert,) = [json.loads(x) for x in alerts.read_text().splitlines()]
    assert (2, "inline.1", "KL 0.9 at step 4") == (result.returncode, alert["rule"],
                                                   alert["message"])


def test_bad_inline_alert_is_one_line_exit_one(tmp_path: Path):
    """A malformed --alert is refused before starting, with the expected form."""
    events = _events(tmp_path / "e.jsonl", [{"kl": 0.1}])
    result = run_cli("monitor", str(events), "--once", "--alert", "kl > 0.5 high")
    err = result.stderr.decode()
    assert (1, True, False) == (result.returncode, "missing '->'" in err, "Traceback" in err)


def test_set_rule_changes_a_rule_for_the_run(tmp_path: Path):
    """--set-rule common.nonfinite_loss.severity=low: a NaN no longer makes the exit 2."""
    events = _events(tmp_path / "e.jsonl", [{"loss": 1.0}, {"loss": float("nan")}])
    base = ("monitor", str(events), "--once", "--rules", "common")
    assert 2 == run_cli(*base).returncode
    assert 0 == run_cli(*base, "--set-rule", "common.nonfinite_loss.severity=low").returncode


def test_set_rule_mistake_lists_valid_fields(tmp_path: Path):
    """An unknown field in --set-rule names the valid fields."""
    events = _events(tmp_path / "e.jsonl", [{"loss": 1.0}])
    result = run_cli("monitor", str(events), "--once", "--set-rule",
                     "common.loss_spike.colour=red")
    err = result.stderr.decode()
    assert (1, True) == (result.returncode, "valid fields:" in err and "keep_firing_for" in err)


def test_without_rules_the_detected_trainer_is_announced(tmp_path: Path):
    """No --rules: common runs, and the trainer detected from the keys is said on the terminal."""
    events = _events(tmp_path / "e.jsonl", [{"loss": 0.69, "rewards/chosen": 0.1, "rewards/rejected": 0.05, "rewards/margins": 0.05,
         "rewards/accuracies": 0.5, "logps/chosen": -10.0, "logps/rejected": -10.0}] * 3)
    result = run_cli("monitor", str(events), "--once")
    err = result.stderr.decode()
    assert (0, True, True) == (result.returncode, "+ the trainer's pack" in err,
                               "trainer dpo (detected from the metric keys); adds pack "
                               "dpo_basic" in err)


def test_every_rules_command_has_help_with_an_example():
    """rules list/show/explain/validate each document themselves with an example."""
    for command in ("list", "show", "explain", "validate"):
        out = run_cli("rules", command, "--help").stdout.decode()
        assert (True, True) == ("Example" in out, f"trainguard rules {command}" in out), command


def test_rules_explain_prints_the_earliest_firing_step_and_the_budget():
    """rules explain says when the rule can fire at the earliest, and against which budget."""
    out = run_cli("rules", "explain", "common.grad_norm_zero").stdout.decode()
    assert ("earliest firing at logged step 3 of a run" in out
            and "within 3 logged step(s) of an onset" in out
            and "exact budget: 3 after an onset, first by step 3 (within budget)" in out), out
