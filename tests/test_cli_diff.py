"""`trainguard diff RUN_A RUN_B`: the first diverging step of each metric, config drift."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli
from tests.reach_runs import grpo_run


def test_diff_names_the_first_diverging_step_and_the_config_drift(tmp_path: Path):
    """Same run but KL blows up from step 180 in B, beta changed: kl diverges at 180 on both
    ranks, the rest stays within tolerance, and config.beta is reported."""
    a = grpo_run(tmp_path / "a", kl_from=None, nan_step=None)
    b = grpo_run(tmp_path / "b", kl_from=180, nan_step=None,
                 config={"learning_rate": 1e-6, "beta": 0.0})
    result = run_cli("diff", str(a), str(b), "--json")
    assert result.returncode == 2, result.stderr
    out = json.loads(result.stdout)
    assert [(d["metric"], d["rank"], d["step"]) for d in out["divergences"]] == [
        ("kl", 0, 180), ("kl", 1, 180)]
    assert "loss" in out["same"] and "reward" in out["same"]
    assert out["config"] == [{"key": "config.beta", "a": 0.04, "b": 0.0}]
    assert out["common_steps"] == 300
    text = run_cli("diff", str(a), str(b)).stdout.decode()
    assert "kl (rank 0): diverges at step 180" in text
    assert "config.beta: 0.04 -> 0.0" in text


def test_diff_of_a_run_with_itself_is_clean(tmp_path: Path):
    """Identical runs: exit 0, nothing diverges, config the same."""
    a = grpo_run(tmp_path / "a", steps=50)
    result = run_cli("diff", str(a), str(a))
    assert result.returncode == 0, result.stdout
    assert "config: the same" in result.stdout.decode()


def test_diff_tolerance_is_respected(tmp_path: Path):
    """A 1% difference diverges at the default tolerance and not with --rtol 0.05."""
    for name, scale in (("a", 1.0), ("b", 1.01)):
        lines = [json.dumps({"step": s, "metrics": {"loss": scale / s}}) for s in range(1, 20)]
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    strict = run_cli("diff", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"))
    loose = run_cli("diff", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--rtol", "0.05")
    assert (strict.returncode, loose.returncode) == (2, 0)
    assert "loss (rank 0): diverges at step 1" in strict.stdout.decode()
