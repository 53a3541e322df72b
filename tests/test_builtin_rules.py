"""Every built-in rule: its unit-test cases pass, it has a firing and a quiet case, and it reads
only metric keys that a real trainer logs (TRL 1.16, verl, OpenRLHF tables) or a field map makes."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from trainguard.monitor.engine.ranks import SCORE_METRIC
from trainguard.monitor.engine.testing import run_rule_tests
from trainguard.monitor.ingest.gpu import GPU_METRICS
from trainguard.monitor.ingest.signals import builtin_signals
from trainguard.monitor.ingest.stdout import PROGRESS_METRICS
from trainguard.monitor.packs import CONFIG_FIELDS
from trainguard.rules.loader import builtin_pack_names, load_pack, load_yaml

TESTS_DIR = Path(str(resources.files("trainguard.rules") / "tests"))
TEST_FILES = sorted(TESTS_DIR.glob("*.yaml"))
FIELDS_DIR = Path(str(resources.files("trainguard.presets") / "fields"))

_COMMON = "loss grad_norm learning_rate epoch"
# Keys per trainer, as TRL 1.16 trainers log them (observed on CPU).
_TRL = """
entropy mean_token_accuracy num_tokens
logits/chosen logits/rejected logps/chosen logps/rejected rewards/accuracies rewards/chosen
rewards/margins rewards/rejected kl accuracy margin max_reward mean_reward min_reward
clip_ratio/high_max clip_ratio/high_mean clip_ratio/low_mean clip_ratio/low_min
clip_ratio/region_mean completions/clipped_ratio completions/max_length
completions/max_terminated_length completions/mean_length completions/mean_terminated_length
completions/min_length completions/min_terminated_length frac_reward_zero_std reward reward_std
step_time beta objective/entropy objective/kl objective/non_score_reward objective/rlhf_reward
objective/scores objective/scores_margin val/contain_eos_token log_odds_chosen log_odds_ratio
nll_loss
"""
# verl and OpenRLHF keys, as their trainers log them (from their source's metric names).
_VERL = """
actor/pg_loss actor/entropy_loss actor/kl_loss actor/kl_coef actor/pg_clipfrac actor/ppo_kl
actor/pg_clipfrac_lower actor/grad_norm actor/lr actor/entropy critic/vf_loss critic/vf_clipfrac
critic/vpred_mean critic/grad_norm critic/lr critic/score/mean critic/score/max critic/score/min
critic/rewards/mean critic/advantages/mean critic/returns/mean critic/values/mean
critic/vf_explained_var response_length/mean response_length/max response_length/clip_ratio
perf/time_per_step perf/throughput timing_s/step timing_s/gen
"""
_OPENRLHF = """
policy_loss entropy_loss actor_lr actor_grad_norm ppo_clip_ratio ppo_kl vllm_kl kl logprobs_diff
reward group_reward_std return response_clip_ratio score critic_loss values critic_lr
critic_grad_norm timing/make_experience timing/ppo_train timing/step_total rollout/reward_mean
rollout/reward_std rollout/response_length_mean rollout/truncated_rate
"""


def _field_map_targets() -> set[str]:
    targets: set[str] = set()
    for path in FIELDS_DIR.glob("*.yaml"):
        data = load_yaml(path.read_text(encoding="utf-8"), str(path)) or {}
        fields = data.get("fields", {}) if isinstance(data, dict) else {}
        targets.update(str(v) for v in fields.values())
    return targets


# Metrics the monitor derives from what every trainer logs (monitor/engine/ranks.py), and the GPU
# samples of ``monitor --gpu`` (monitor/ingest/gpu.py), and the printed lines read as signals
# (monitor/ingest/signals.py), and the recorded config's fields (monitor/packs.py), and the HF
# Trainer's step bar on a merged stderr (monitor/ingest/stdout.py).
_DERIVED = {SCORE_METRIC, *GPU_METRICS, *(s.metric for s in builtin_signals()), *PROGRESS_METRICS,
            *(f"config/{name}" for name in CONFIG_FIELDS)}
KNOWN_KEYS = (set((_COMMON + _TRL + _VERL + _OPENRLHF).split()) | _field_map_targets()
              | _DERIVED)


def _all_rules():  # type: ignore[no-untyped-def]
    return [r for name in builtin_pack_names() for r in load_pack(name)]


@pytest.mark.parametrize("path", TEST_FILES, ids=[p.stem for p in TEST_FILES])
def test_rule_test_file_passes(path: Path) -> None:
    """Every case of a built-in rule test file passes (or is skipped for a stated reason)."""
    failures = [f"{r.name}: {r.detail}" for r in run_rule_tests(path) if not r.passed]
    assert [] == failures


def test_every_builtin_rule_has_a_firing_and_a_quiet_case() -> None:
    """Each rule id appears in a case expecting it to fire and in a case expecting silence."""
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in TEST_FILES:
        data = load_yaml(path.read_text(encoding="utf-8"), str(path))
        for case in data["cases"]:
            expected = {e["rule"] for e in case.get("expect") or []}
            firing |= expected
            if not expected:
                quiet |= set(case.get("check") or [])
    ids = {r.rule.id for r in _all_rules()}
    assert (set(), set()) == (ids - firing, ids - quiet)


def test_builtin_rules_read_only_keys_real_trainers_log() -> None:
    """No rule reads a metric no trainer logs (a rule no trainer can feed is a defect)."""
    unknown = {r.rule.id: sorted((r.condition.metrics | {r.rule.metric}) - KNOWN_KEYS)
               for r in _all_rules()}
    assert {} == {k: v for k, v in unknown.items() if v}


def test_builtin_rules_are_documented() -> None:
    """Every rule has a message, a recommendation, a reference and explicit trainers."""
    lacking = [r.rule.id for r in _all_rules()
               if not (r.rule.recommendation.strip() and r.rule.reference.strip()
                       and "{" in r.rule.message and r.rule.trainers)]
    assert [] == lacking


def test_only_critical_rules_stop_the_run() -> None:
    """stop is reserved for what wastes the run: every stopping rule is critical."""
    assert [] == [r.rule.id for r in _all_rules()
                  if r.rule.action.value == "stop" and r.rule.severity.value != "critical"]


def test_builtin_rule_ids_are_unique_across_packs() -> None:
    """Loading several packs never silently replaces one built-in rule with another."""
    ids = [r.rule.id for r in _all_rules()]
    assert sorted(set(ids)) == sorted(ids)


def test_at_least_80_builtin_rules() -> None:
    """The packs ship at least 80 rules."""
    assert len(_all_rules()) >= 80


def test_every_rule_is_in_the_readme() -> None:
    """The README's table of built-in rules lists every rule id."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert [] == [r.rule.id for r in _all_rules() if f"`{r.rule.id}`" not in readme]


def test_readme_rule_table_shows_each_rules_current_condition_and_severity() -> None:
    """Each README row carries the rule's metric, condition, `for`, severity and action as the
    pack says now, so the table cannot drift from the YAML."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    stale = []
    for compiled in _all_rules():
        rule = compiled.rule
        cond = f"`{rule.condition}`" + (f" for {rule.for_}" if rule.for_ > 1 else "")
        row = (f"| `{rule.id}` | `{rule.metric}` | {cond} | {rule.severity.value} | "
               f"{rule.action.value} |")
        if row not in readme:
            stale.append(rule.id)
    assert [] == stale


def test_every_builtin_rule_fires_within_the_budget_of_its_timing_kind() -> None:
    """Time to detect is a design target: exact signatures by the 3rd logged step (from the
    start or an onset), noisy ones within 5 of an onset, slow trends within 30."""
    over = [f"{r.rule.id}: {r.timing().describe()}" for r in _all_rules()
            if not r.timing().within_budget]
    assert [] == over


def test_exact_signatures_are_high_or_critical() -> None:
    """What an exact signature shows (NaN, exactly zero, all truncated) wastes the run."""
    assert [] == [r.rule.id for r in _all_rules() if r.rule.timing == "exact"
                  and r.rule.severity.value not in ("high", "critical")]


def test_timing_of_a_rule_counts_warmup_alongside_the_window_fill() -> None:
    """warmup and for do not stack on a window's fill: std(loss, 20, min_count=5) with warmup
    20 and for 10 fires at step 21 (warmup over, 10 true results since step 14) on a loss flat
    from step 1, as its computed timing says; per record and in one batch alike."""
    from trainguard.monitor.engine.engine import Engine
    from trainguard.rules.loader import compile_rule
    from trainguard.rules.models import Rule

    rule = compile_rule(Rule.model_validate({
        "id": "t.stuck", "metric": "loss", "warmup": 20, "for": 10,
        "condition": "std(loss, 20, min_count=5) < 0.001"}))
    records = [(0, step, {"loss": 0.5}, None) for step in range(1, 61)]
    engine = Engine([rule])
    one_by_one = [a.step for r in records for a in engine.evaluate(*r)]
    batched = [a.step for a in Engine([rule]).evaluate_many(records)]
    assert ([21], [21], 21) == (one_by_one, batched, rule.timing().first)
