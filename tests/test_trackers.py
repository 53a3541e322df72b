"""Tracker stores as sources: TensorBoard, MLflow (SQLite and file stores) and W&B offline runs,
each written by the real library and read through the real CLI or the source itself."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from tests.conftest import run_cli
from trainguard.events import parse_line
from trainguard.monitor.ingest.formats import detect_format, open_source_for
from trainguard.monitor.ingest.trackers.base import fold_tracker_key

LOSSES = [0.9, 0.8, math.nan, 0.7, 0.6]


def _alerts(path: Path) -> list[dict]:  # type: ignore[type-arg]
    """The alerts raised (not their resolutions) in an alerts file."""
    alerts = [json.loads(line) for line in path.read_text().splitlines() if line]
    return [a for a in alerts if not a["message"].startswith("resolved")]


def _write_tensorboard(log_dir: Path, losses: list[float], start: int = 1) -> None:
    """What transformers' TensorBoardCallback writes: every key under train/ (rewrite_logs)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(log_dir))
    for step, loss in enumerate(losses, start):
        writer.add_scalar("train/loss", loss, step)
        writer.add_scalar("train/grad_norm", 1.0, step)
        writer.add_scalar("train/learning_rate", 1e-5, step)
    writer.add_scalar("eval/loss", 0.5, start + len(losses) - 1)
    writer.close()


def _records(lines: list) -> list:  # type: ignore[type-arg]
    return [parse_line(line.data) for line in lines]


def test_fold_tracker_key_drops_prefixes_and_bookkeeping():
    """train/x reads as x for any x, eval/x as an eval_x eval value, global_step is dropped."""
    assert ("rewards/chosen", "train") == fold_tracker_key("train/rewards/chosen")
    assert ("eval_loss", "eval") == fold_tracker_key("eval/loss")
    assert ("train_runtime", "summary") == fold_tracker_key("train/train_runtime")
    assert None is fold_tracker_key("train/global_step")
    assert ("actor/pg_loss", "train") == fold_tracker_key("actor/pg_loss")


def test_tensorboard_run_with_a_nan_loss_alerts_through_the_cli(tmp_path: Path):
    """SummaryWriter's event files under runs/NAME: the NaN loss at step 3 is a critical alert."""
    _write_tensorboard(tmp_path / "runs" / "Dec01_host", LOSSES)
    alerts = tmp_path / "alerts.jsonl"
    result = run_cli("monitor", str(tmp_path / "runs"), "--once", "--alerts", str(alerts))
    assert 2 == result.returncode, result.stderr.decode()
    fired = _alerts(alerts)
    assert [("common.nonfinite_loss", 3)] == [(a["rule"], a["step"]) for a in fired
                                               if a["rule"] == "common.nonfinite_loss"]
    assert "16 events in 6 steps" in result.stderr.decode()  # the eval record is a step too


def test_tensorboard_source_reads_on_as_the_file_grows(tmp_path: Path):
    """A live writer: each poll hands over only what was written since, folded to rule names."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "run"))
    writer.add_scalar("train/loss", 1.0, 1)
    writer.flush()
    opened = open_source_for(str(tmp_path / "run"))
    assert "tensorboard" == opened.format
    first = _records(opened.source.poll())
    assert [(1, {"loss": 1.0})] == [(r.step, r.metrics) for r in first]
    writer.add_scalar("train/loss", 2.0, 2)
    writer.add_scalar("train/loss", math.inf, 3)
    writer.flush()
    second = _records(opened.source.poll())
    assert [(2, 2.0), (3, math.inf)] == [(r.step, r.metrics["loss"]) for r in second]
    assert [] == opened.source.poll()
    positions = opened.source.positions()
    writer.close()
    opened.source.close()
    # A restart from the checkpointed positions reads nothing twice.
    again = open_source_for(str(tmp_path / "run"), positions=positions)
    assert [] == again.source.poll()
    again.source.close()


def test_monitor_follows_a_growing_tensorboard_run_live(tmp_path: Path):
    """trainguard monitor on a TensorBoard run being written: a NaN logged after it started is
    an alert while it follows (no --once); SIGTERM ends it with its verdict."""
    import signal
    import subprocess
    import sys
    import time

    from torch.utils.tensorboard import SummaryWriter

    log_dir = tmp_path / "runs" / "live"
    writer = SummaryWriter(str(log_dir))
    writer.add_scalar("train/loss", 0.5, 1)
    writer.flush()
    alerts = tmp_path / "alerts.jsonl"
    monitor = subprocess.Popen([sys.executable, "-m", "trainguard", "monitor", str(tmp_path / "runs"),
                                "--alerts", str(alerts)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        time.sleep(2.0)  # the monitor is following before the bad step is written
        for step in (2, 3, 4):
            writer.add_scalar("train/loss", math.nan if step == 3 else 0.4, step)
            writer.flush()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (alerts.exists() and alerts.read_text()):
            time.sleep(0.1)
        monitor.send_signal(signal.SIGTERM)
        _, err = monitor.communicate(timeout=30)
    finally:
        if monitor.poll() is None:
            monitor.kill()
            monitor.wait()
        writer.close()
    assert [("common.nonfinite_loss", 3)] == [(a["rule"], a["step"]) for a in _alerts(alerts)], \
        err.decode()
    assert "following" in err.decode()


def test_tensorboard_store_of_several_runs_reads_the_newest(tmp_path: Path):
    """Two runs under runs/: the later one is read, so two runs' steps never mix."""
    import time

    _write_tensorboard(tmp_path / "runs" / "old", [5.0, 5.0])
    time.sleep(1.1)  # the event file's name holds its start time in seconds
    _write_tensorboard(tmp_path / "runs" / "new", [0.1, 0.2, 0.3])
    opened = open_source_for(str(tmp_path / "runs"))
    losses = [r.metrics["loss"] for r in _records(opened.source.poll())
              if "loss" in r.metrics and r.kind == "train"]
    opened.source.close()
    assert [0.1, 0.2, 0.3] == pytest.approx(losses)


def _mlflow_run(uri: str, losses: list[float]) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("tiny")
    run = client.create_run(experiment)
    for step, loss in enumerate(losses, 1):
        client.log_metric(run.info.run_id, "train/loss", loss, step=step)
        client.log_metric(run.info.run_id, "train/grad_norm", 1.0, step=step)


def test_mlflow_sqlite_store_alerts_through_the_cli(tmp_path: Path):
    """An MLflow SQLite store, given as sqlite:/// or as the .db file: the NaN loss alerts."""
    db = tmp_path / "mlflow.db"
    _mlflow_run(f"sqlite:///{db}", LOSSES)
    for spec in (f"sqlite:///{db}", str(db)):
        alerts = tmp_path / f"alerts{len(spec)}.jsonl"
        result = run_cli("monitor", spec, "--once", "--alerts", str(alerts), timeout=120)
        assert 2 == result.returncode, result.stderr.decode()
        assert 3 == next(a["step"] for a in _alerts(alerts)
                         if a["rule"] == "common.nonfinite_loss")
        assert "10 events in 5 steps" in result.stderr.decode()


def test_mlflow_file_store_is_recognised_and_followed(tmp_path: Path, monkeypatch):
    """An mlruns/ file store: recognised by its layout, new points read on the next poll."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store = tmp_path / "mlruns"
    uri = store.as_uri()
    _mlflow_run(uri, [0.5, 0.4])
    assert "mlflow" == detect_format(str(tmp_path))
    opened = open_source_for(str(store))
    first = _records(opened.source.poll())
    assert [1, 1, 2, 2] == [r.step for r in first]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run_id = client.search_runs([e.experiment_id for e in client.search_experiments()])[0].info.run_id
    client.log_metric(run_id, "train/loss", 0.3, step=3)
    opened.source._next_read = 0.0  # the next read is due (it waits a second otherwise)
    second = _records(opened.source.poll())
    assert [(3, {"loss": 0.3})] == [(r.step, r.metrics) for r in second]
    opened.source.close()


def _wandb_offline_run(root: Path, losses: list[float]) -> None:
    """What transformers' WandbCallback logs: train/* keys and train/global_step."""
    import time

    import wandb

    run = wandb.init(project="tiny", dir=str(root), mode="offline",
                     settings=wandb.Settings(silent=True))
    for step, loss in enumerate(losses, 1):
        run.log({"train/loss": loss, "train/grad_norm": 1.0, "train/global_step": step})
    run.log({"eval/loss": 0.5, "train/global_step": len(losses)})
    run.finish()
    # wandb-core, a separate process, may still be writing the run file: wait until it settles.
    files = list(root.glob("wandb/offline-run-*/run-*.wandb"))
    size, deadline = -1, time.monotonic() + 30
    while files and time.monotonic() < deadline and size != files[0].stat().st_size:
        size = files[0].stat().st_size
        time.sleep(0.5)


@pytest.mark.slow
def test_wandb_offline_run_alerts_through_the_cli(tmp_path: Path):
    """wandb in offline mode: the wandb/ folder is recognised, the step is train/global_step."""
    _wandb_offline_run(tmp_path, LOSSES)
    alerts = tmp_path / "alerts.jsonl"
    result = run_cli("monitor", str(tmp_path / "wandb"), "--once", "--alerts", str(alerts))
    assert 2 == result.returncode, result.stderr.decode()
    assert 3 == next(a["step"] for a in _alerts(alerts) if a["rule"] == "common.nonfinite_loss")
    assert "11 events in 6 steps" in result.stderr.decode()


@pytest.mark.slow
def test_wandb_source_reads_from_its_checkpointed_offset(tmp_path: Path):
    """A restart from the saved byte offset reads no record twice."""
    import time

    _wandb_offline_run(tmp_path, [0.3, 0.2])
    opened = open_source_for(str(tmp_path / "wandb"))
    assert "wandb" == opened.format
    losses: list[tuple[int, float]] = []
    deadline = time.monotonic() + 30  # wandb-core may still be writing the file after finish()
    try:
        while len(losses) < 2 and time.monotonic() < deadline:
            losses += [(r.step, r.metrics["loss"]) for r in _records(opened.source.poll())
                       if r.kind == "train" and "loss" in r.metrics]
            time.sleep(0.1)
        positions = opened.source.positions()
    finally:
        opened.source.close()
    assert [(1, 0.3), (2, 0.2)] == losses
    again = open_source_for(str(tmp_path / "wandb"), positions=positions)
    assert [] == again.source.poll()
    again.source.close()


def _hide(tmp_path: Path, *modules: str) -> dict[str, str]:
    """An environment in which importing ``modules`` fails, as if the extra were absent."""
    shadow = tmp_path / "shadow"
    for module in modules:
        package = shadow / module
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(f"raise ImportError('{module} hidden by the test')\n")
    return {"PYTHONPATH": str(shadow)}


@pytest.mark.parametrize("extra", ["tensorboard", "mlflow", "wandb"])
def test_store_without_its_extra_names_the_extra_and_exits_one(extra: str, tmp_path: Path):
    """A store named on the command line whose library is missing: the extra to install, exit 1."""
    store = tmp_path / "store"
    store.mkdir()
    if extra == "tensorboard":
        (store / "events.out.tfevents.1700000000.host.1.0").write_bytes(b"")
    elif extra == "mlflow":
        _mlflow_run(f"sqlite:///{store / 'mlflow.db'}", [0.5])
        store = store / "mlflow.db"
    else:
        run_dir = store / "offline-run-20260101_000000-abc"
        run_dir.mkdir()
        (run_dir / "run-abc.wandb").write_bytes(b"")
    env = dict(os.environ, **_hide(tmp_path, extra))
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "trainguard", "monitor", str(store), "--once"],
                            capture_output=True, env=env, timeout=60, check=False)
    err = " ".join(result.stderr.decode().split())  # rich wraps long lines
    assert 1 == result.returncode, err
    assert f"trainguard[{extra}]" in err
    assert "Traceback" not in err


@pytest.mark.slow
@pytest.mark.trl
def test_trl_trainer_reporting_to_tensorboard_is_read_and_detected(tmp_path: Path):
    """A real SFTTrainer with report_to="tensorboard" on the tiny model: monitor OUTPUT_DIR
    reads its event files, folds train/ back and detects SFT."""
    pytest.importorskip("trl")
    from trl import SFTConfig, SFTTrainer

    from tests.tiny_trl import build_tiny_model, sft_dataset

    model = build_tiny_model(tmp_path / "llama")
    out = tmp_path / "out"
    args = SFTConfig(output_dir=str(out), max_steps=4, per_device_train_batch_size=2,
                     logging_steps=1, use_cpu=True, report_to=["tensorboard"],
                     save_strategy="no", disable_tqdm=True, learning_rate=1e-3, seed=0,
                     max_length=32)
    SFTTrainer(model=model, args=args, train_dataset=sft_dataset(8)).train()
    assert "tensorboard" == detect_format(str(out))
    record = tmp_path / "record.jsonl"
    result = run_cli("monitor", str(out), "--once", "--record", str(record), timeout=120)
    err = " ".join(result.stderr.decode().split())  # rich wraps long lines
    assert 0 == result.returncode, err
    assert "trainer sft (detected" in err
    train = [json.loads(line) for line in record.read_text().splitlines()]
    train = [r for r in train if r.get("kind", "train") == "train"]
    assert [1, 2, 3, 4] == [r["step"] for r in train]
    assert {"loss", "grad_norm", "learning_rate", "mean_token_accuracy"} <= set(train[0]["metrics"])


def test_convert_writes_a_tensorboard_store_as_canonical_jsonl(tmp_path: Path):
    """trainguard convert reads a tracker store like the monitor: one step per line."""
    _write_tensorboard(tmp_path / "runs" / "a", [0.9, 0.8])
    out = tmp_path / "events.jsonl"
    result = run_cli("convert", str(tmp_path / "runs"), "-o", str(out))
    assert 0 == result.returncode, result.stderr.decode()
    events = [json.loads(line) for line in out.read_text().splitlines()]
    train = [e for e in events if e.get("kind", "train") == "train"]
    assert [1, 2] == [e["step"] for e in train]
    assert {"loss", "grad_norm", "learning_rate"} == set(train[0]["metrics"])
