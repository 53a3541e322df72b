"""``trainguard run`` reads a trainer's config from its command line (TrainingArguments flags,
a TRL ``--config`` YAML) where the trainer records none: a warmup longer than the run is
called at step 1 from printed logs, as it is from the callback's run directory."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.conftest import run_cli
from trainguard.monitor.packs import command_config, command_trainer

# Prints TRL-style log dicts of an endless warmup (1e-8 a step from 0), as a trainer that knows
# nothing of trainguard does; its own flags are for the config reader, not for it.
WARMUP_PRINTER = r"""
import sys, time
for i in range(1, 9):
    print({"loss": "%.4g" % (2.0 - 0.001 * i), "grad_norm": "1.5",
           "learning_rate": "%.4g" % (1e-8 * (i - 1)), "epoch": "%.4g" % (i / 20)}, flush=True)
    time.sleep(0.05)
"""


def test_flags_in_every_spelling_hf_argument_parser_takes() -> None:
    """``--name value``, ``--name=value`` and ``--name-with-dashes value``; other flags,
    values that are no numbers and fields no rule reads are left out."""
    argv = ["train.py", "--warmup_steps", "100000", "--max-steps=20", "--learning-rate",
            "1e-3", "--output_dir", "out", "--temperature", "hot", "--seed", "3", "--bf16"]
    assert command_config(argv) == {"config/warmup_steps": 100000.0, "config/max_steps": 20.0,
                                    "config/learning_rate": 1e-3}


def test_a_trl_config_file_is_read_and_flags_win_over_it(tmp_path: Path) -> None:
    """TrlParser's ``--config FILE``: its top-level fields, overridden by flags given too."""
    config = tmp_path / "sft.yaml"
    config.write_text("model_name_or_path: tiny\nwarmup_ratio: 1.0\nmax_steps: 50\n"
                      "learning_rate: 2.0e-5\n")
    argv = ["trl", "sft", "--config", str(config), "--max_steps", "10"]
    assert command_config(argv) == {"config/warmup_ratio": 1.0, "config/max_steps": 10.0,
                                    "config/learning_rate": 2e-5}


def test_an_unreadable_config_file_gives_only_the_flags(tmp_path: Path) -> None:
    """A missing or broken file is no evidence; the flags still are."""
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [unclosed\n")
    assert command_config(["--config", str(tmp_path / "absent.yaml"), "--max_steps", "5"]) == {
        "config/max_steps": 5.0}
    assert command_config(["--config", str(broken)]) == {}


def test_run_calls_a_warmup_longer_than_the_run_from_the_command_line(tmp_path: Path) -> None:
    """A trainer that prints only its logs, launched with --warmup_steps 100000 --max_steps 20:
    common.warmup_longer_than_run fires high at the first step, and the zero exit becomes 2."""
    run_dir = tmp_path / "run"
    result = run_cli("run", "-q", "--run-dir", str(run_dir), "--", sys.executable, "-c",
                     WARMUP_PRINTER, "--warmup_steps", "100000", "--max_steps", "20")
    alerts = [json.loads(x) for x in (run_dir / "alerts.jsonl").read_text().splitlines()]
    fired = [(a["rule"], a["step"], a["severity"]) for a in alerts if a["state"] == "firing"]
    assert ("common.warmup_longer_than_run", 1, "high") in fired, fired
    assert result.returncode == 2, result.stderr.decode()


def test_run_without_config_flags_says_nothing_of_the_warmup(tmp_path: Path) -> None:
    """The same printed logs with no config on the command line: the warmup rule stays quiet
    (the tiny climbing rate is only medium), so the command's zero exit stays 0."""
    run_dir = tmp_path / "run"
    result = run_cli("run", "-q", "--run-dir", str(run_dir), "--", sys.executable, "-c",
                     WARMUP_PRINTER)
    alerts = [json.loads(x) for x in (run_dir / "alerts.jsonl").read_text().splitlines()]
    assert "common.warmup_longer_than_run" not in {a["rule"] for a in alerts}
    assert result.returncode == 0, result.stderr.decode()


def test_the_trl_cli_names_the_trainer_kind() -> None:
    """``trl rloo``, ``python -m trl dpo``, ``-m trl.cli grpo`` name their trainer; a plain
    script or another trl subcommand names none."""
    assert ["rloo", "dpo", "grpo", None, None, None] == [command_trainer(argv) for argv in (
        ["trl", "rloo", "--temperature", "0.7"], ["python", "-m", "trl", "DPO"],
        ["accelerate", "launch", "-m", "trl.cli", "grpo"], ["python", "train.py", "rloo"],
        ["trl", "env"], ["trl"])]
    assert None is command_trainer(["python", "train.py", "--output_dir", "out/trl", "dpo"])
    assert "kto" == command_trainer(["python3.11", "/usr/local/bin/trl", "kto"])


# GRPO/RLOO logs at a near-greedy temperature; RLOO and GRPO print the same keys, so only the
# command line (or the callback's record) says it is RLOO.
RL_PRINTER = r"""
import sys, time
for i in range(1, 7):
    print({"loss": "0.01", "grad_norm": "0.5", "learning_rate": "1e-05", "reward": "0.5",
           "reward_std": "0.3", "frac_reward_zero_std": "0", "kl": "0.01", "entropy": "0.6",
           "completions/clipped_ratio": "0.1", "epoch": "%.4g" % (i / 20)}, flush=True)
    time.sleep(0.05)
"""


def test_run_of_trl_rloo_applies_the_rloo_pack_and_its_temperature_rule(tmp_path: Path) -> None:
    """``trainguard run -- trl rloo --temperature 0.1``: the trainer is RLOO (not the grpo the
    keys say), its pack is added and rloo.temperature_too_low fires at step 1."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    trl = bin_dir / "trl"  # a stand-in for TRL's CLI: the real one needs a model hub
    trl.write_text(f"#!{sys.executable}\n{RL_PRINTER}")
    trl.chmod(0o755)
    run_dir = tmp_path / "run"
    result = run_cli("run", "--run-dir", str(run_dir), "--", str(trl), "rloo",
                     "--temperature", "0.1")
    said = (result.stdout + result.stderr).decode()
    assert "trainer rloo (named by the trainer's command line: trl rloo" in said, said
    alerts = [json.loads(x) for x in (run_dir / "alerts.jsonl").read_text().splitlines()]
    assert ("rloo.temperature_too_low", 1) in {(a["rule"], a["step"]) for a in alerts}, said
