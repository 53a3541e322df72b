"""TrainGuardCallback on real TRL trainers (tiny offline Llama, CPU): events, metadata, stops."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")

from transformers import TrainerCallback  # noqa: E402

from tests.tiny_trl import (  # noqa: E402
    build_tiny_model,
    kto_dataset,
    preference_dataset,
    prompt_dataset,
    reward_len,
    sft_dataset,
)
from trainguard.emitters.trl import TrainGuardCallback, detect_trainer_kind  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.trl]

DATA = Path(__file__).resolve().parent / "data"
COMMON_KEYS = {"loss", "grad_norm", "learning_rate", "epoch"}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One tiny Llama saved once for every trainer test."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "llama")


def _args(out: Path, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        output_dir=str(out), max_steps=2, per_device_train_batch_size=2, logging_steps=1,
        use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True, learning_rate=1e-3,
        seed=0,
    )
    base.update(extra)
    return base


def _sft(model: str, out: Path, cb: TrainGuardCallback, **kw: Any) -> Any:
    from trl import SFTConfig, SFTTrainer
    return SFTTrainer(model=model, args=SFTConfig(**_args(out, max_length=32, **kw)),
                      train_dataset=sft_dataset(8), callbacks=[cb])


def _dpo(model: str, out: Path, cb: TrainGuardCallback, **kw: Any) -> Any:
    from trl import DPOConfig, DPOTrainer
    return DPOTrainer(model=model, args=DPOConfig(**_args(out, max_length=32, **kw)),
                      train_dataset=preference_dataset(8), callbacks=[cb])


def _grpo(model: str, out: Path, cb: TrainGuardCallback, **kw: Any) -> Any:
    from trl import GRPOConfig, GRPOTrainer
    return GRPOTrainer(model=model, reward_funcs=reward_len,
                       args=GRPOConfig(**_args(out, num_generations=2, max_completion_length=6,
                                               **kw)),
                       train_dataset=prompt_dataset(8), callbacks=[cb])


def _kto(model: str, out: Path, cb: TrainGuardCallback, **kw: Any) -> Any:
    from trl import KTOConfig, KTOTrainer
    return KTOTrainer(model=model, args=KTOConfig(**_args(out, max_length=32, **kw)),
                      train_dataset=kto_dataset(8), callbacks=[cb])


def _reward(model: str, out: Path, cb: TrainGuardCallback, **kw: Any) -> Any:
    from trl import RewardConfig, RewardTrainer
    return RewardTrainer(model=model, args=RewardConfig(**_args(out, max_length=32, **kw)),
                         train_dataset=preference_dataset(8), callbacks=[cb])


def _rloo(model: str, out: Path, cb: TrainGuardCallback, **kw: Any) -> Any:
    from trl import RLOOConfig, RLOOTrainer
    return RLOOTrainer(model=model, reward_funcs=reward_len,
                       args=RLOOConfig(**_args(out, num_generations=2, max_completion_length=6,
                                               **kw)),
                       train_dataset=prompt_dataset(8), callbacks=[cb])


def _orpo(model: str, out: Path, cb: TrainGuardCallback, **kw: Any) -> Any:
    from transformers import AutoTokenizer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer
    return ORPOTrainer(model=model, args=ORPOConfig(**_args(out, max_length=32, **kw)),
                       train_dataset=preference_dataset(8),
                       processing_class=AutoTokenizer.from_pretrained(model), callbacks=[cb])


def _cpo(model: str, out: Path, cb: TrainGuardCallback, **kw: Any) -> Any:
    from transformers import AutoTokenizer
    from trl.experimental.cpo import CPOConfig, CPOTrainer
    return CPOTrainer(model=model, args=CPOConfig(**_args(out, max_length=32, **kw)),
                      train_dataset=preference_dataset(8),
                      processing_class=AutoTokenizer.from_pretrained(model), callbacks=[cb])


#: trainer kind -> (builder, keys that trainer logs beyond loss/grad_norm/learning_rate/epoch).
TRAINERS: dict[str, tuple[Callable[..., Any], set[str]]] = {
    "sft": (_sft, {"entropy", "mean_token_accuracy", "num_tokens"}),
    "dpo": (_dpo, {"rewards/chosen", "rewards/margins", "logps/chosen", "rewards/accuracies"}),
    "grpo": (_grpo, {"reward", "reward_std", "frac_reward_zero_std", "completions/mean_length",
                     "rewards/reward_len/mean", "clip_ratio/region_mean"}),
    "kto": (_kto, {"kl", "rewards/chosen", "logps/chosen"}),
    "reward": (_reward, {"accuracy", "margin", "mean_reward"}),
    "rloo": (_rloo, {"reward", "reward_std", "kl", "completions/mean_length"}),
    "orpo": (_orpo, {"log_odds_ratio", "nll_loss", "rewards/margins"}),
    "cpo": (_cpo, {"nll_loss", "rewards/margins", "logps/chosen"}),
}


def _events(run_dir: Path, rank: int = 0) -> list[dict[str, Any]]:
    path = run_dir / f"events.rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("kind", sorted(TRAINERS))
def test_callback_records_events_and_metadata_of_each_trainer(kind: str, tiny_model: str,
                                                              tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch):
    """Each trainer's step logs, summary and detected kind land in the run directory."""
    monkeypatch.delenv("TRAINGUARD_RUN_DIR", raising=False)
    build, extra_keys = TRAINERS[kind]
    out = tmp_path / "out"
    trainer = build(tiny_model, out, TrainGuardCallback())
    trainer.train()

    run_dir = out / "trainguard"
    events = _events(run_dir)
    train = [e for e in events if "kind" not in e]
    summary = [e for e in events if e.get("kind") == "summary"]
    assert [e["step"] for e in train] == [1, 2]
    assert set() == (COMMON_KEYS | extra_keys) - set(train[0]["metrics"])
    assert len(summary) == 1 and summary[0]["step"] == 2
    assert "train_runtime" in summary[0]["metrics"]

    meta = json.loads((run_dir / "run_metadata.json").read_text())
    assert kind == meta["trainer"]
    assert meta["world_size"] == 1
    assert meta["config"]["max_steps"] == 2 and len(meta["config_hash"]) == 16
    assert all(meta["versions"][name] for name in ("trl", "transformers", "torch"))
    assert isinstance(meta["run_id"], str) and meta["final_step"] == 2
    assert "stopped" not in meta


def _monitor(run_dir: Path, rules: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200")
    return subprocess.Popen([sys.executable, "-m", "trainguard", "monitor", str(run_dir), "--stop",
                             "--rules", rules, "--poll-interval", "0.02"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


class _Pace(TrainerCallback):
    """Gives each step a realistic floor of wall time, as real steps take seconds; without it
    a tiny CPU step can be shorter than the monitor's reaction on a loaded machine."""

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        time.sleep(0.5)


@pytest.mark.parametrize("kind", ["dpo", "grpo"])
def test_monitor_in_another_process_stops_the_run_with_a_checkpoint(
        kind: str, tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A stop rule firing in a separate monitor process halts the trainer within one step,
    with a checkpoint saved and the stop recorded."""
    out = tmp_path / "out"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.setenv("TRAINGUARD_RUN_DIR", str(run_dir))
    monitor = _monitor(run_dir, str(DATA / "trl_stop_at_step_2.yaml"))
    try:
        build, _ = TRAINERS[kind]
        callback = TrainGuardCallback()
        trainer = build(tiny_model, out, callback, max_steps=12)
        trainer.add_callback(_Pace())
        # The monitor is up by now (trainer construction takes seconds); train.
        trainer.train()
    finally:
        monitor.send_signal(signal.SIGINT)
        monitor_out = monitor.communicate(timeout=30)[0].decode(errors="replace")

    alerts = [json.loads(x) for x in (run_dir / "alerts.jsonl").read_text().splitlines()]
    fired = [a for a in alerts if a.get("state") == "firing"]
    assert fired, monitor_out
    alert_step = fired[0]["step"]
    assert alert_step == 2
    stopped = json.loads((run_dir / "stopped.json").read_text())
    final_step = trainer.state.global_step
    assert final_step == stopped["step"] == callback.stopped_at_step
    assert 1 <= final_step - alert_step <= 1 + 1, (alert_step, final_step)
    assert final_step < 12
    assert (out / f"checkpoint-{final_step}").is_dir()
    assert str(out / f"checkpoint-{final_step}") == stopped["checkpoint"]
    assert stopped["rule"] == "trainguard.test_stop_at_step_2"
    meta = json.loads((run_dir / "run_metadata.json").read_text())
    assert kind == meta["trainer"] and final_step == meta["stopped"]["step"]
    stop_events = [e for e in _events(run_dir) if e.get("kind") == "stop"]
    assert [final_step] == [e["step"] for e in stop_events]
    assert monitor.returncode == 2


def test_stop_request_for_another_run_is_ignored(tiny_model: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch):
    """A control file naming another run id never stops this one."""
    from trainguard.control import StopRequest, write_stop_request
    monkeypatch.delenv("TRAINGUARD_RUN_DIR", raising=False)
    out = tmp_path / "out"
    write_stop_request(out / "trainguard" / "control.json", StopRequest(
        rule="x", reason="someone else's", step=1, time=time.time() + 60, run_id="other-run"))
    callback = TrainGuardCallback()
    trainer = _sft(tiny_model, out, callback)
    trainer.train()
    assert trainer.state.global_step == 2
    assert callback.stopped_at_step is None


class _Cfg:
    pass


def test_detect_trainer_kind_prefers_exact_class_then_tags_then_hierarchy():
    """GMPOConfig (a GRPOConfig subclass) is gmpo; a user subclass falls back to its base."""
    from trl import GRPOConfig
    from trl.experimental.gkd import GKDConfig
    from trl.experimental.gmpo import GMPOConfig

    class MyGRPOConfig(GRPOConfig):
        pass

    class Model:
        model_tags = ["trl", "reward-trainer"]

    got = {
        "gmpo": detect_trainer_kind(GMPOConfig.__new__(GMPOConfig)),
        "gkd": detect_trainer_kind(GKDConfig.__new__(GKDConfig)),
        "grpo": detect_trainer_kind(MyGRPOConfig.__new__(MyGRPOConfig)),
        "reward": detect_trainer_kind(_Cfg(), Model()),
        "unknown": detect_trainer_kind(_Cfg()),
    }
    assert {k: k for k in got} == got


def test_on_log_drops_non_numbers_keeps_nan_and_separates_eval(tmp_path: Path):
    """Strings and None are dropped, NaN kept; eval_* logs are kind eval."""
    from transformers import TrainerControl, TrainerState, TrainingArguments
    args = TrainingArguments(output_dir=str(tmp_path / "o"), use_cpu=True, report_to=[])
    state, control = TrainerState(), TrainerControl()
    state.global_step = 3
    callback = TrainGuardCallback(run_dir=tmp_path / "run")
    callback.on_log(args, state, control, logs={"loss": float("nan"), "note": "x", "r": None,
                                                "flag": True, "grad_norm": 1.5})
    callback.on_log(args, state, control, logs={"eval_loss": 0.25, "epoch": 1.0})
    callback.on_train_end(args, state, control)
    train, evaluation = _events(tmp_path / "run")
    assert train["metrics"] == {"loss": "NaN", "grad_norm": 1.5}
    assert evaluation["kind"] == "eval" and evaluation["step"] == 3
    assert math.isclose(0.25, evaluation["metrics"]["eval_loss"])


def test_the_trainer_list_is_the_installed_trls_configs():
    """CONFIG_KINDS names exactly the trainer config classes the installed TRL (1.16) ships,
    in ``trl`` and ``trl.experimental``: no PPOConfig, BCOConfig, XPOConfig, NashMDConfig or
    PRMConfig any more, and AsyncGRPO and the distillation trainers are there."""
    import importlib
    import pkgutil

    import trl
    import trl.experimental

    from trainguard.emitters.trl import CONFIG_KINDS

    not_trainers = {"ModelConfig", "DatasetMixtureConfig", "MergeConfig"}
    found = {n for n in dir(trl) if n.endswith("Config") and not n.startswith("_")}
    for info in pkgutil.walk_packages(trl.experimental.__path__, "trl.experimental."):
        try:
            module = importlib.import_module(info.name)
        except Exception:  # noqa: BLE001, S112 - an optional dependency of one trainer
            continue
        found |= {n for n, v in vars(module).items() if n.endswith("Config")
                  and isinstance(v, type) and v.__module__.startswith("trl")
                  and not n.startswith("_")}
    assert sorted(found - not_trainers) == sorted(CONFIG_KINDS)
