"""Printed lines as signals: known warning and error lines become metrics rules read, from a
preset that is data; the user's own lines go through the same re2 compile (real CLI too)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli
from trainguard.exceptions import ConfigError
from trainguard.monitor.ingest.signals import builtin_signals, load_scanner

#: Lines as the libraries print them (TRL 1.x GRPOTrainer, PyTorch 2.x, ProcessGroupNCCL,
#: apex / DeepSpeed loss scalers, CPython).
SAMPLES = {
    "stdout/reward_functions_none": [
        "/usr/lib/python3/site-packages/trl/trainer/grpo_trainer.py:1130: UserWarning: All reward "
        "functions returned None for the following kwargs: {'prompt': 'x'}. Please ensure that "
        "at least one reward function returns a valid reward."],
    "stdout/cuda_oom": [
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a "
        "total capacity of 79.19 GiB of which 3.06 MiB is free.",
        "RuntimeError: CUDA error: out of memory"],
    "stdout/nccl_timeout": [
        "[rank1]:[E1201 10:00:00.000 ProcessGroupNCCL.cpp:616] [Rank 1] Watchdog caught "
        "collective operation timeout: WorkNCCL(SeqNum=5, OpType=ALLREDUCE, NumelIn=1, "
        "NumelOut=1, Timeout(ms)=600000) ran for 600081 milliseconds before timing out.",
        "[E ProcessGroupNCCL.cpp:475] Some NCCL operations have failed or timed out. Due to the "
        "asynchronous nature of CUDA kernels, subsequent GPU operations might run on corrupted"],
    "stdout/fp16_skipped_step": [
        "Gradient overflow.  Skipping step, loss scaler 0 reducing loss scale to 32768.0",
        "[deepspeed] OVERFLOW! Rank 0 Skipping step. Attempted loss scale: 65536, reducing to "
        "32768"],
    "stdout/loss_scale_at_minimum": [
        "Current loss scale already at minimum - cannot decrease scale anymore. Exiting run."],
    "stdout/traceback": ["Traceback (most recent call last):"],
}
PROSE = ["{'loss': '0.6931', 'grad_norm': '1.25', 'learning_rate': '1e-05', 'epoch': '0.5'}",
         "Loading checkpoint shards: 100%|##########| 2/2", "NCCL INFO Bootstrap : Using eth0",
         "memory: 12.3 GiB used", "  File \"train.py\", line 3, in <module>"]


def test_every_builtin_signal_has_a_sample_line() -> None:
    """The preset and the samples name the same metrics (a new signal needs a sample)."""
    assert sorted(SAMPLES) == sorted(s.metric for s in builtin_signals())


@pytest.mark.parametrize("metric", sorted(SAMPLES))
def test_each_known_line_sets_its_metric(metric: str) -> None:
    """Every sample line sets its signal's metric, and only that one."""
    scanner = load_scanner()
    assert [{metric: 1.0}] * len(SAMPLES[metric]) == [scanner.scan(x) for x in SAMPLES[metric]]


def test_prose_and_log_dicts_set_no_signal() -> None:
    """Ordinary output (log dicts, progress bars, NCCL info lines) is not a signal."""
    scanner = load_scanner()
    assert [None] * len(PROSE) == [scanner.scan(x) for x in PROSE]


def test_a_user_signal_is_read_with_the_builtin_ones() -> None:
    """NAME=PATTERN sets stdout/NAME; the built-in signals still work beside it."""
    scanner = load_scanner(["dataloader_died=DataLoader worker \\(pid \\d+\\) is killed"])
    assert ({"stdout/dataloader_died": 1.0}, {"stdout/traceback": 1.0}) == (
        scanner.scan("RuntimeError: DataLoader worker (pid 4242) is killed by signal: Killed."),
        scanner.scan("Traceback (most recent call last):"))


def test_a_user_signal_re2_cannot_compile_is_refused_with_the_reason() -> None:
    """A lookaround (exponential-time in backtracking engines) is refused at start."""
    with pytest.raises(ConfigError, match="re2 cannot compile it"):
        load_scanner(["bad=(?<=x)y"])
    with pytest.raises(ConfigError, match="NAME=PATTERN"):
        load_scanner(["no pattern"])


def _grpo_dict(loss: str = "0") -> str:
    return ("{'loss': '" + loss + "', 'grad_norm': '0', 'learning_rate': '1e-06', "
            "'reward': '1', 'reward_std': '0', 'frac_reward_zero_std': '1', "
            "'completions/mean_length': '12', 'completions/clipped_ratio': '0', "
            "'entropy': '2.1', 'epoch': '0.1'}")


def test_trl_reward_functions_none_warning_fires_high_within_two_steps() -> None:
    """GRPO stdout piped in with no flags: TRL's 'All reward functions returned None' warning
    before each step's log fires grpo.reward_functions_none, high, at the second logged step
    (the first warning comes before any log says the trainer is GRPO)."""
    warning = SAMPLES["stdout/reward_functions_none"][0]
    text = "".join(f"{warning}\n  warnings.warn(\n{_grpo_dict()}\n" for _ in range(4))
    result = run_cli("monitor", "-", "--once", "--alerts", "/dev/stdout", input=text.encode())
    alerts = [json.loads(x) for x in result.stdout.decode().splitlines() if x.startswith("{")]
    fired = {(a["rule"], a["severity"], a["step"]) for a in alerts if a["state"] == "firing"}
    assert ("grpo.reward_functions_none", "high", 2) in fired, fired
    assert 2 == result.returncode


def test_cuda_oom_in_printed_output_is_critical(tmp_path: Path) -> None:
    """A CUDA OOM printed after a few logs is a critical alert naming stdout/cuda_oom."""
    text = ("{'loss': '2.1', 'grad_norm': '1', 'learning_rate': '1e-05', 'epoch': '0.1'}\n"
            "Traceback (most recent call last):\n"
            + SAMPLES["stdout/cuda_oom"][0] + "\n")
    alerts = tmp_path / "alerts.jsonl"
    result = run_cli("monitor", "-", "--once", "--alerts", str(alerts), input=text.encode())
    fired = {(a["rule"], a["metric"], a["severity"]) for a in map(json.loads, alerts.open())}
    assert {("common.cuda_oom", "stdout/cuda_oom", "critical"),
            ("common.traceback", "stdout/traceback", "high")} <= fired
    assert 2 == result.returncode


def test_line_signal_option_feeds_a_rule(tmp_path: Path) -> None:
    """--line-signal NAME=PATTERN and an inline rule on stdout/NAME: the user's own signal."""
    text = "{'loss': '2.1', 'epoch': '0.1'}\nreward server timeout after 30s\n"
    alerts = tmp_path / "alerts.jsonl"
    result = run_cli("monitor", "-", "--once", "--alerts", str(alerts),
                     "--line-signal", "reward_timeout=reward server timeout",
                     "--alert", "stdout/reward_timeout > 0 -> high: reward server timed out",
                     input=text.encode())
    assert ["inline.1"] == [a["rule"] for a in map(json.loads, alerts.open())], \
        result.stderr.decode()


def test_trainguard_run_reads_signals_while_the_trainer_writes_its_own_events(
        tmp_path: Path) -> None:
    """With the callback's events the printed logs are not read again, but a traceback the
    trainer prints still is: at the latest step the monitor has seen."""
    run_dir = tmp_path / "run"
    script = ("import sys\n"
              "from trainguard import EventWriter\n"
              "with EventWriter() as w:\n"
              "    for i in range(1, 4):\n"
              "        w.log_metrics(i, {'loss': 1.0})\n"
              "    import time; time.sleep(0.3)\n"
              "    print('Traceback (most recent call last):', flush=True)\n"
              "    print('ValueError: boom', flush=True)\n")
    result = run_cli("run", "-q", "--run-dir", str(run_dir), "--", sys.executable, "-c", script)
    alerts = [json.loads(x) for x in (run_dir / "alerts.jsonl").read_text().splitlines()]
    assert [("common.traceback", 3)] == [(a["rule"], a["step"]) for a in alerts], \
        result.stdout.decode()


def test_a_signal_belongs_to_the_step_whose_log_follows_and_is_0_after(tmp_path: Path) -> None:
    """A step's warnings print before its log: the line joins that log's record; later logs
    carry 0 for it (so `for` counts consecutive steps), and a line after the last log (a
    crash) is still a record, at the step being computed."""
    text = ("{'loss': '1.5', 'epoch': '0.1'}\n"
            + SAMPLES["stdout/fp16_skipped_step"][0] + "\n"
            + SAMPLES["stdout/fp16_skipped_step"][0] + "\n"
            "{'loss': '1.4', 'epoch': '0.2'}\n{'loss': '1.3', 'epoch': '0.3'}\n"
            "Traceback (most recent call last):\n")
    out = tmp_path / "out.jsonl"
    result = run_cli("convert", "-", "-o", str(out), input=text.encode())
    records = [(r["step"], r["metrics"]) for r in map(json.loads, out.open())]
    assert [(1, {"loss": 1.5, "epoch": 0.1}),
            (2, {"stdout/fp16_skipped_step": 1.0, "loss": 1.4, "epoch": 0.2}),
            (3, {"loss": 1.3, "epoch": 0.3, "stdout/fp16_skipped_step": 0.0}),
            (4, {"stdout/traceback": 1.0})] == records, result.stderr.decode()
