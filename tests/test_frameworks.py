"""verl and OpenRLHF output (reproduced from their source, see framework_formats.py), the field
maps that feed the common rules from their keys, and trainer detection of verl runs."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.framework_formats import (
    openrlhf_ppo_lines,
    openrlhf_tqdm,
    sft_logs,
    verl_console,
    verl_file_logger_line,
    verl_step_metrics,
)
from trainguard.monitor.ingest.normalize import load_field_map
from trainguard.rules.detect import detect_trainer


def _alerts(path: Path) -> list[tuple[str, int]]:
    """(rule, step) of the alerts raised in an alerts file (resolutions left out)."""
    out = []
    for line in path.read_text().splitlines():
        alert = json.loads(line)
        if not alert["message"].startswith("resolved"):
            out.append((alert["rule"], alert["step"]))
    return out


def _verl_file(path: Path, steps: int = 8, nan_at: int = 4, kl: float = 2.0) -> Path:
    """A GRPO run's file-logger output: pg_loss NaN at one step (written as null), and an
    in-reward KL penalty far above grpo_safe's bound."""
    with path.open("wb") as out:
        for step in range(1, steps + 1):
            metrics = verl_step_metrics(step, critic=False, reward_kl_penalty=kl,
                                        pg_loss=math.nan if step == nan_at else -0.01)
            out.write(verl_file_logger_line(metrics, step))
    return path


# -- verl ------------------------------------------------------------------------------------------

def test_verl_file_logger_writes_nan_as_null():
    """The fixture is verl's own: orjson writes a NaN as null."""
    line = verl_file_logger_line({"actor/pg_loss": math.nan, "x": 1.0}, 3)
    assert b'{"step":3,"data":{"actor/pg_loss":null,"x":1.0}}\n' == line


@pytest.mark.parametrize("given", ["file", "directory", "stdin"])
def test_verl_file_logger_output_is_read_as_a_grpo_run(given: str, tmp_path: Path):
    """verl's file logger JSONL as a file, a run directory or stdin: events read, the run is
    detected as GRPO, the in-reward KL penalty feeds kl, and the null pg_loss is reported as
    a possible NaN."""
    run = tmp_path / "run"
    run.mkdir()
    data = _verl_file(run / "exp.jsonl")
    alerts = tmp_path / "alerts.jsonl"
    source = {"file": str(data), "directory": str(run), "stdin": "-"}[given]
    result = run_cli("monitor", source, "--once", "--alerts", str(alerts),
                     input=data.read_bytes() if given == "stdin" else None)
    err = " ".join(result.stderr.decode().split())  # rich wraps long lines
    assert 2 == result.returncode, err
    assert "trainer grpo (detected" in err
    assert ("grpo.kl_blowup", 3) in _alerts(alerts)
    assert "actor/pg_loss at 1 step from step 4" in err
    assert "possibly NaN" in err


def test_verl_file_logger_nulls_make_a_quiet_run_degraded_not_clean(tmp_path: Path):
    """No rule fires, but verl wrote a null: the verdict cannot be clean (exit 1)."""
    data = _verl_file(tmp_path / "exp.jsonl", kl=0.01)
    result = run_cli("monitor", str(data), "--once")
    err = " ".join(result.stderr.decode().split())  # rich wraps long lines
    assert 1 == result.returncode, err
    assert "degraded" in err


def test_verl_console_after_a_tqdm_bar_with_regex_verl_feeds_the_loss_rules():
    """verl's console lines glued to tqdm's redraw (one stream); --regex verl brings the verl
    map, so a NaN actor/pg_loss (no actor/loss in verl's default workers) is a NaN loss."""
    steps = [verl_step_metrics(s, critic=True, pg_loss=math.nan if s == 3 else -0.01)
             for s in range(1, 6)]
    output = verl_console(steps, total=6)
    assert b"/s]step:2 - " in output  # the bar and the next step share a line
    result = run_cli("monitor", "-", "--once", "--regex", "verl", input=output)
    err = " ".join(result.stderr.decode().split())  # rich wraps long lines
    assert 2 == result.returncode, err
    assert "common.nonfinite_loss step 3" in err
    assert "trainer ppo (detected" in err


def test_verl_console_under_run_with_regex_verl_alerts(tmp_path: Path):
    """trainguard run --regex verl: the wrapped command's verl lines bring the verl map too."""
    steps = [verl_step_metrics(s, critic=False, pg_loss=math.nan if s == 2 else -0.01)
             for s in range(1, 5)]
    log = tmp_path / "console.txt"
    log.write_bytes(verl_console(steps, total=5))
    script = f"import sys; sys.stdout.buffer.write(open({str(log)!r}, 'rb').read())"
    result = run_cli("run", "--run-dir", str(tmp_path / "run"), "--regex", "verl", "--",
                     sys.executable, "-c", script, timeout=120)
    assert ("common.nonfinite_loss", 2) in _alerts(tmp_path / "run" / "alerts.jsonl"), \
        result.stderr.decode()


def test_verl_runs_without_a_critic_are_grpo_and_with_one_ppo():
    """critic/score/mean is logged by every verl run; only PPO logs the critic's values."""
    assert "grpo" == detect_trainer(verl_step_metrics(1, critic=False))
    assert "ppo" == detect_trainer(verl_step_metrics(1, critic=True))


def test_verl_map_feeds_loss_and_kl():
    """pg_loss stands for loss unless actor/loss is logged; the KL penalty for kl unless
    actor/kl_loss is."""
    verl = load_field_map(["verl"])
    mapped = verl.apply({"actor/pg_loss": 0.1, "actor/reward_kl_penalty": 0.2})
    assert (0.1, 0.2) == (mapped["loss"], mapped["kl"])
    both = verl.apply({"actor/pg_loss": 0.1, "actor/loss": 0.3, "actor/reward_kl_penalty": 0.2,
                       "actor/kl_loss": 0.4})
    assert (0.3, 0.4) == (both["loss"], both["kl"])
    assert 0.1 == both["actor/pg_loss"]  # kept for the PPO packs


# -- OpenRLHF --------------------------------------------------------------------------------------

def test_openrlhf_sft_tqdm_postfix_is_read_with_the_bar_counter_as_step(tmp_path: Path):
    """The SFT step bar over two epochs: one step per counter value, numbered on across the
    epochs; gpt_loss is loss, so the NaN of the third iteration (counter 2) alerts."""
    output = openrlhf_tqdm([sft_logs(4, nan_at=3), sft_logs(4)])
    record = tmp_path / "record.jsonl"
    alerts = tmp_path / "alerts.jsonl"
    result = run_cli("monitor", "-", "--once", "--regex", "openrlhf_tqdm", "--record",
                     str(record), "--alerts", str(alerts), input=output)
    assert 2 == result.returncode, result.stderr.decode()
    steps = [json.loads(line)["step"] for line in record.read_text().splitlines()]
    assert list(range(8)) == steps
    assert ("common.nonfinite_loss", 2) in _alerts(alerts)
    first = json.loads(record.read_text().splitlines()[0])["metrics"]
    assert {"loss": 1.49, "learning_rate": 1e-5, "grad_norm": 0.5} == first


def test_openrlhf_tqdm_is_auto_detected_on_stdin(tmp_path: Path):
    """Without --regex, stdin finds the bar too, and its preset's map is applied."""
    output = openrlhf_tqdm([sft_logs(3)])
    record = tmp_path / "record.jsonl"
    result = run_cli("monitor", "-", "--once", "--record", str(record), input=output)
    assert 0 == result.returncode, result.stderr.decode()
    events = [json.loads(line) for line in record.read_text().splitlines()]
    assert [0, 1, 2] == [e["step"] for e in events]
    assert {"loss", "learning_rate", "grad_norm"} == set(events[0]["metrics"])


def test_verl_console_under_run_without_regex_alerts(tmp_path: Path):
    """trainguard run -- a verl driver, no --regex: its lines are found by auto-detection and
    mapped by the verl map, so the NaN actor/pg_loss is an alert (it was exit 0, no alert)."""
    steps = [verl_step_metrics(s, critic=True, pg_loss=math.nan if s == 3 else -0.01)
             for s in range(1, 6)]
    log = tmp_path / "console.txt"
    log.write_bytes(verl_console(steps, total=6))
    script = f"import sys; sys.stdout.buffer.write(open({str(log)!r}, 'rb').read())"
    result = run_cli("run", "--run-dir", str(tmp_path / "run"), "--",
                     sys.executable, "-c", script, timeout=120)
    assert ("common.nonfinite_loss", 3) in _alerts(tmp_path / "run" / "alerts.jsonl"), \
        result.stderr.decode()


def test_convert_keeps_verl_keys_as_printed(tmp_path: Path):
    """convert writes what was printed: the verl map is for the monitor's rules."""
    log = tmp_path / "verl.log"
    log.write_bytes(verl_console([verl_step_metrics(1, critic=False)], total=2))
    out = tmp_path / "events.jsonl"
    result = run_cli("convert", str(log), "-o", str(out), "--regex", "verl")
    assert 0 == result.returncode, result.stderr.decode()
    metrics = json.loads(out.read_text().splitlines()[0])["metrics"]
    assert "actor/pg_loss" in metrics and "loss" not in metrics


def test_openrlhf_ppo_policy_loss_feeds_the_loss_rules():
    """Global step N: {...} lines; --regex openrlhf brings its map, so a NaN policy_loss is a
    NaN loss."""
    statuses = [{"policy_loss": math.nan if s == 2 else 0.1, "critic_loss": 0.2, "kl": 0.01,
                 "reward": 0.5, "actor_lr": 1e-6, "ppo_clip_ratio": 0.01}
                for s in range(1, 5)]
    output = openrlhf_ppo_lines(statuses)
    assert "✨ Global step 2: {'policy_loss': nan" in output.decode()
    result = run_cli("monitor", "-", "--once", "--regex", "openrlhf", input=output)
    err = " ".join(result.stderr.decode().split())  # rich wraps long lines
    assert 2 == result.returncode, err
    assert "common.nonfinite_loss step 2" in err


def test_openrlhf_map_folds_train_prefix_and_policy_loss():
    """Its W&B/TensorBoard keys (train/x) and the PPO/KTO losses reach the common names."""
    openrlhf = load_field_map(["openrlhf"])
    assert {"policy_loss": 0.1, "loss": 0.1, "grad_norm": 2.0, "actor_grad_norm": 2.0} == \
        openrlhf.apply({"train/policy_loss": 0.1, "train/actor_grad_norm": 2.0})
    assert {"loss": 0.3, "kl": 0.1} == openrlhf.apply({"kto_loss": 0.3, "kl": 0.1})


# -- prefixes and older TRL names ------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["trl", "grpo", "accelerate", "openrlhf"])
def test_train_prefix_is_folded_for_every_key(preset: str):
    """train/x reads as x for any key, not a list of four; a key logged bare wins."""
    mapped = load_field_map([preset]).apply({"train/rewards/chosen": 0.1,
                                             "train/frac_reward_zero_std": 0.5,
                                             "train/loss": 9.0, "loss": 1.0})
    assert 0.1 == mapped["rewards/chosen"]
    assert 0.5 == mapped["frac_reward_zero_std"]
    assert 1.0 == mapped["loss"]
    assert not any(k.startswith("train/") for k in mapped)


def test_grpo_map_reads_older_trl_names():
    """TRL 0.14-0.18 GRPO keys reach the names grpo_safe reads."""
    mapped = load_field_map(["grpo"]).apply({"completion_length": 40.0, "clip_ratio": 0.2,
                                             "train/completion_length": 41.0})
    assert {"completions/mean_length": 40.0, "clip_ratio/region_mean": 0.2} == mapped


def test_strip_prefixes_in_a_user_field_map_file(tmp_path: Path):
    """A user's field map may fold a prefix of its own."""
    spec = tmp_path / "map.yaml"
    spec.write_text("strip_prefixes: [my/]\nfields:\n  l: loss\n")
    assert {"loss": 1.0, "x": 2.0} == load_field_map([str(spec)]).apply({"my/l": 1.0, "my/x": 2.0})


def test_convert_reads_verl_file_logger_output_keeping_its_keys(tmp_path: Path):
    """convert on verl's file logger JSONL: canonical steps, verl's keys as written, the null
    left out."""
    data = _verl_file(tmp_path / "exp.jsonl", steps=4, nan_at=2)
    out = tmp_path / "events.jsonl"
    result = run_cli("convert", str(data), "-o", str(out))
    assert 1 == result.returncode  # degraded: a value may have been NaN
    assert "actor/pg_loss at 1 step from step 2" in " ".join(result.stderr.decode().split())
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert [1, 2, 3, 4] == [e["step"] for e in events]
    assert "actor/pg_loss" not in events[1]["metrics"]
    assert -0.01 == events[0]["metrics"]["actor/pg_loss"]
    assert "loss" not in events[0]["metrics"]


def test_openrlhf_bar_is_read_live_before_any_newline(tmp_path: Path):
    """A trainer whose only output is the tqdm bar writes no newline until the epoch ends; the
    monitor reads its redraws as they come: the NaN alert is raised while the pipe is open."""
    import subprocess
    import time

    logs = sft_logs(60, nan_at=40)
    output = openrlhf_tqdm([logs]).split(b"\n")[0]  # the epoch is not over: no newline yet
    assert b"\n" not in output and len(output) > 8192
    alerts = tmp_path / "alerts.jsonl"
    monitor = subprocess.Popen([sys.executable, "-m", "trainguard", "monitor", "-", "--alerts",
                                str(alerts), "--regex", "openrlhf_tqdm"],
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    assert monitor.stdin is not None
    try:
        monitor.stdin.write(output)
        monitor.stdin.flush()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (alerts.exists() and alerts.read_text()):
            time.sleep(0.1)
        seen_live = alerts.exists() and bool(alerts.read_text())
    finally:
        monitor.stdin.close()
        monitor.wait(timeout=30)
    assert seen_live, monitor.stderr.read().decode() if monitor.stderr else ""
    assert ("common.nonfinite_loss", 39) in _alerts(alerts)
