"""The detection evidence's fast subset: a handful of its real TRL runs, trained fresh and scored
through the real CLI from piped stdout and from the callback's run directory.

The whole generator (65 runs) is ``make bench`` (``benchmarks/bench_detection.py``); this pins
its plumbing and the verdict on cases the rules catch today: each broken one caught within 5
logged steps by a high/critical alert naming its metric, each healthy one without a false
high/critical alert.
"""

from __future__ import annotations

import io

import pytest

from benchmarks.detection_cases import case_by_name, find_onset
from benchmarks.detection_generate import generate
from benchmarks.detection_score import WITHIN, CaseScore, _rule_metrics, parse_console, score_case

pytestmark = pytest.mark.slow

BROKEN = ("sft-lr_zero-s3", "sft-nan-s38", "dpo-lr_far_too_high-s15", "dpo-identical_pairs-s21",
          "grpo-kl_blowup-s36", "grpo-truncation-s29")
HEALTHY = ("sft-healthy-s0", "dpo-healthy-s0", "grpo-healthy-s1")
#: Its only trace is the config: caught from 2>&1 (the step bar's total) and from a pipe whose
#: writer names the config on its command line; from stdout alone, medium only.
WARMUP = "sft-warmup_stuck-s11"


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], CaseScore]:
    """The subset trained into a fresh cache and scored in the stdout and rundir modes."""
    cache = tmp_path_factory.mktemp("detection")
    cases = [case_by_name(n) for n in (*BROKEN, *HEALTHY, WARMUP)]
    metas = {m["name"]: m for m in generate(cases, cache, log=io.StringIO())}
    metrics = _rule_metrics()
    return {(name, mode): score_case(metas[name], cache / name, mode, metrics)
            for name in metas for mode in ("stdout", "rundir")
            + (("merged", "flags") if name == WARMUP else ())}


@pytest.mark.parametrize("mode", ["stdout", "rundir"])
@pytest.mark.parametrize("name", BROKEN)
def test_broken_run_is_caught_within_five_steps(scored: dict[tuple[str, str], CaseScore],
                                                name: str, mode: str) -> None:
    """A broken subset run gets a high/critical alert naming its metric within 5 steps."""
    score = scored[(name, mode)]
    assert score.result.problem == ""
    assert score.onset is not None
    assert score.hit is not None, [a.short() for a in score.result.alerts]
    assert score.hit.metric in case_by_name(name).metrics
    assert score.delay is not None and score.delay <= WITHIN


@pytest.mark.parametrize("mode", ["stdout", "rundir"])
@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_run_raises_no_high_alert(scored: dict[tuple[str, str], CaseScore],
                                          name: str, mode: str) -> None:
    """A healthy subset run ends without any high or critical alert."""
    score = scored[(name, mode)]
    assert score.result.exit_code == 0
    assert [a.short() for a in score.false_alarms] == []


def test_stdout_and_rundir_agree_on_every_subset_run(
        scored: dict[tuple[str, str], CaseScore]) -> None:
    """Printed logs (4 significant digits) and callback events give the same verdict."""
    for name in (*BROKEN, *HEALTHY):  # not WARMUP: its printed logs lack the config
        verdicts = [(s.caught, bool(s.false_alarms))
                    for s in (scored[(name, "stdout")], scored[(name, "rundir")])]
        assert verdicts[0] == verdicts[1], name


@pytest.mark.parametrize("mode", ["merged", "flags", "rundir"])
def test_an_endless_warmup_is_called_high_wherever_the_runs_length_shows(
        scored: dict[tuple[str, str], CaseScore], mode: str) -> None:
    """warmup_steps 100000 in a 20-step run: the step bar's total (2>&1), the piped trainer's
    command line, or the recorded config gives it away within 5 steps."""
    score = scored[(WARMUP, mode)]
    assert score.hit is not None, [a.short() for a in score.result.alerts]
    assert score.delay is not None and score.delay <= WITHIN


def test_an_endless_warmup_from_stdout_alone_is_said_at_medium_only(
        scored: dict[tuple[str, str], CaseScore]) -> None:
    """Printed dicts alone read like the start of a small-peak warmup: said, never high."""
    score = scored[(WARMUP, "stdout")]
    assert score.hit is None
    assert ("medium", "common.learning_rate_tiny_in_warmup") in {
        (a.severity, a.rule) for a in score.result.alerts}


def test_onset_is_the_first_step_showing_the_failure() -> None:
    """The NaN case's onset is the first logged step with a non-finite loss or grad_norm."""
    records = [(1, {"loss": 3.0, "grad_norm": 1.0}), (2, {"loss": 0.0, "grad_norm": 2.0}),
               (3, {"loss": 0.0, "grad_norm": float("nan")}), (4, {"loss": float("inf")})]
    assert find_onset(case_by_name("sft-nan-s38"), records) == 3
    assert find_onset(case_by_name("sft-healthy-s0"), records) is None


def test_console_alert_lines_parse_to_rule_step_and_metric() -> None:
    """The console's alert block reads back as severity, rule, step and the rule's metric."""
    text = (" HIGH  common.grad_norm_zero step 12\n  what: grad_norm is 0 at step 12\n"
            "✓ resolved\n CRITICAL  common.nonfinite_loss step 4 rank 1\n  what: loss is nan\n")
    said = parse_console(text, {"common.nonfinite_loss": "loss"})
    assert [(a.severity, a.rule, a.step, a.metric) for a in said] == [
        ("high", "common.grad_norm_zero", 12, ""), ("critical", "common.nonfinite_loss", 4, "loss")]
    assert said[0].message == "grad_norm is 0 at step 12"
