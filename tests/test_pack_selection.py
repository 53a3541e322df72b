"""One way to pick packs: the recorded trainer kind wins over the keys, explicit --rules keep
per-trainer filtering, and `monitor` and `run` say which packs and why (real CLI)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.conftest import run_cli
from trainguard.rules.detect import choose_packs

GRPO_KEYS = ["loss", "grad_norm", "reward", "reward_std", "frac_reward_zero_std", "kl",
             "completions/clipped_ratio", "completions/mean_length", "entropy"]


def _grpo_rows(n: int, reward_std: float = 0.3) -> list[dict[str, float]]:
    return [{"loss": 0.001 * (-1) ** i * (1 + i % 3), "grad_norm": 0.5, "reward": 0.5,
             "reward_std": reward_std, "frac_reward_zero_std": 0.0 if reward_std else 1.0,
             "kl": 0.01, "completions/clipped_ratio": 0.1, "completions/mean_length": 30.0,
             "entropy": 1.5, "learning_rate": 1e-5} for i in range(n)]


def _write_events(run_dir: Path, rows: list[dict[str, float]]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "rank0.jsonl").write_text(
        "".join(json.dumps({"step": i, "metrics": m}) + "\n" for i, m in enumerate(rows, 1)))


def _alert_rules(run_dir: Path) -> set[str]:
    path = run_dir / "alerts.jsonl"
    if not path.exists():
        return set()
    return {json.loads(line)["rule"] for line in path.read_text().splitlines() if line}


def test_recorded_kind_wins_over_key_detection() -> None:
    """run_metadata.json saying rloo beats keys that look like GRPO."""
    choice = choose_packs([], "rloo", GRPO_KEYS)
    assert ("rloo", "run_metadata.json", ("rloo_basic",)) == (choice.trainer, choice.source,
                                                              choice.packs)
    assert "the keys alone would say grpo" in choice.reason


def test_keys_decide_when_nothing_is_recorded() -> None:
    """No metadata (or an unknown kind): the keys decide."""
    choice = choose_packs([], "unknown", GRPO_KEYS)
    assert ("grpo", "metric keys", ("grpo_safe",)) == (choice.trainer, choice.source,
                                                       choice.packs)


def test_explicit_rules_add_no_pack_but_keep_the_trainer() -> None:
    """--rules given: no pack is added, and the kind still filters rules of other trainers."""
    choice = choose_packs(["common"], None, GRPO_KEYS)
    assert ("grpo", ()) == (choice.trainer, choice.packs)
    assert "rules scoped to other trainers are skipped" in choice.reason


def test_no_recognisable_trainer_applies_every_rule() -> None:
    """Plain loss/grad_norm keys: no kind, no pack, nothing filtered."""
    assert (None, ()) == (choose_packs([], None, ["loss", "grad_norm"]).trainer,
                          choose_packs([], None, ["loss", "grad_norm"]).packs)


def test_monitor_applies_rloo_basic_when_the_callback_recorded_rloo(tmp_path: Path) -> None:
    """A run directory whose metadata says rloo gets rloo_basic, not grpo_safe, and says why."""
    run_dir = tmp_path / "run"
    _write_events(run_dir, _grpo_rows(12, reward_std=0.0))
    (run_dir / "run_metadata.json").write_text(json.dumps({"run_id": "r1", "trainer": "rloo"}))
    result = run_cli("monitor", str(run_dir), "--once")
    err = result.stderr.decode()
    assert "trainer rloo (recorded by the trainer's callback in run_metadata.json" in err, err
    assert "adds pack rloo_basic" in err
    rules = _alert_rules(run_dir)
    assert "rloo.reward_std_zero" in rules and not any(r.startswith("grpo.") for r in rules)


def test_explicit_rules_skip_rules_scoped_to_other_trainers(tmp_path: Path) -> None:
    """--rules common on a GRPO run: the SFT/DPO loss-spike rules do not judge GRPO's loss."""
    run_dir = tmp_path / "run"
    rows = _grpo_rows(30)
    for i in (10, 20):  # GRPO's loss swings around 0: 30x "the largest so far" is ordinary
        rows[i]["loss"] = 0.3
    _write_events(run_dir, rows)
    result = run_cli("monitor", str(run_dir), "--once", "--rules", "common")
    err = result.stderr.decode()
    assert "trainer grpo (detected from the metric keys)" in err, err
    assert "rules scoped to other trainers are skipped" in err
    rules = _alert_rules(run_dir)
    assert not rules & {"common.loss_spike_megatron", "common.loss_spike"}, rules
    assert 0 == result.returncode, err


def test_trainguard_run_chooses_packs_the_same_way(tmp_path: Path) -> None:
    """`trainguard run` reads the recorded kind too and applies that trainer's pack."""
    run_dir = tmp_path / "run"
    script = (
        "import json, os\n"
        "from trainguard import EventWriter\n"
        "with EventWriter() as w:\n"
        "    w.update_metadata({'trainer': 'rloo'})\n"
        f"    rows = {_grpo_rows(8, reward_std=0.0)!r}\n"
        "    for i, m in enumerate(rows, 1):\n"
        "        w.log_metrics(i, m)\n")
    result = run_cli("run", "--run-dir", str(run_dir), "--", sys.executable, "-c", script)
    err = result.stderr.decode()
    assert "adds pack rloo_basic" in err, err
    assert "rloo.reward_std_zero" in _alert_rules(run_dir)


def test_a_recorded_warmup_longer_than_the_run_is_high_at_the_first_step(tmp_path: Path) -> None:
    """The callback's config says warmup_steps 100000 for max_steps 20: the logged learning
    rate (1e-8 a step) cannot show it, the config can, at the first step, naming learning_rate."""
    run_dir = tmp_path / "run"
    rows = [{"loss": 2.0 - 0.01 * i, "grad_norm": 1.0, "learning_rate": 1e-8 * i,
             "mean_token_accuracy": 0.3, "entropy": 2.0} for i in range(20)]
    _write_events(run_dir, rows)
    (run_dir / "run_metadata.json").write_text(json.dumps({
        "run_id": "r1", "trainer": "sft",
        "config": {"max_steps": 20, "warmup_steps": 100000, "warmup_ratio": 0.0,
                   "learning_rate": 1e-3}}))
    result = run_cli("monitor", str(run_dir), "--once")
    alerts = [json.loads(x) for x in (run_dir / "alerts.jsonl").read_text().splitlines()]
    assert [("common.warmup_longer_than_run", "learning_rate", "high", 1)] == [
        (a["rule"], a["metric"], a["severity"], a["step"]) for a in alerts
        if a["rule"] == "common.warmup_longer_than_run"]
    assert 2 == result.returncode
