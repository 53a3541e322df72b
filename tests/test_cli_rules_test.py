"""`trainguard rules test`: promtool-style rule unit tests through the real CLI."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_cli

RULES = """\
rules:
  - id: my.loss_high
    metric: loss
    condition: "> 2"
    for: 2
    severity: high
"""


def _case_file(tmp_path: Path, expect_step: int) -> Path:
    (tmp_path / "my_rules.yaml").write_text(RULES)
    tests = tmp_path / "my_rules.tests.yaml"
    tests.write_text(f"""\
rules: [{tmp_path / 'my_rules.yaml'}]
cases:
  - name: loss above 2 for two steps fires
    series: {{loss: "1 1 3 3 3"}}
    expect: [{{rule: my.loss_high, step: {expect_step}}}]
  - name: one step above 2 is quiet
    series: {{loss: "1 3 1 3 1"}}
    expect: []
""")
    return tests


def test_passing_rule_tests_exit_zero_and_count(tmp_path: Path):
    """A file whose cases hold: exit 0 and a count of passed cases."""
    result = run_cli("rules", "test", str(_case_file(tmp_path, 4)))
    assert (0, "2 passed, 0 failed") == (result.returncode, result.stdout.decode().strip())


def test_failing_rule_test_names_the_case_and_exits_one(tmp_path: Path):
    """A wrong expectation: exit 1, and the case and the difference are printed."""
    result = run_cli("rules", "test", str(_case_file(tmp_path, 3)))
    out = result.stdout.decode()
    assert result.returncode == 1
    assert "FAIL" in out and "loss above 2 for two steps fires" in out and "1 passed, 1 failed" in out


def test_builtin_rule_tests_all_pass_through_the_cli():
    """Every built-in rule's firing and quiet cases pass (what CI checks)."""
    result = run_cli("rules", "test", timeout=300)
    last = result.stdout.decode().strip().splitlines()[-1]
    assert (0, True) == (result.returncode, last.endswith(" 0 failed") or ", 0 failed," in last)
