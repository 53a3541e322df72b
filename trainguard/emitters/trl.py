"""``TrainGuardCallback``: a transformers/TRL callback that streams logs and obeys stop requests.

    from trainguard.emitters.trl import TrainGuardCallback
    trainer = GRPOTrainer(..., callbacks=[TrainGuardCallback()])

It writes every ``on_log`` dict as an event (``RUN_DIR/events.rank{R}.jsonl``), the run's
metadata (trainer kind, versions, config and its hash, git commit) into ``run_metadata.json`` at
train start, and checks the control file at each step end. On a stop request for this session
it sets ``should_save`` and ``should_training_stop`` so that the run ends with a checkpoint. The
Trainer has no cross-rank broadcast of ``control``, so under a process group the writer's
``should_stop`` does it: rank 0 reads the file and broadcasts its answer at every step end, and
every rank stops after the same step (see :mod:`trainguard.emitters.writer`).

``RUN_DIR`` is ``run_dir=``, else ``$TRAINGUARD_RUN_DIR``, else ``args.output_dir/trainguard``.

This module imports transformers: import it explicitly. ``import trainguard`` never does.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import subprocess
import time
from collections.abc import Mapping
from importlib import metadata as _pkg_metadata
from pathlib import Path
from typing import Any, Final

from transformers import TrainerCallback

from trainguard.control import RUN_DIR_ENV, write_json_atomic
from trainguard.emitters.writer import EventWriter

__all__ = ["STOPPED_FILENAME", "TrainGuardCallback", "detect_trainer_kind", "jsonable"]

STOPPED_FILENAME: Final = "stopped.json"

#: Exact config class name -> trainer kind: the trainer configs TRL 1.16 ships (``trl`` and
#: ``trl.experimental``; PPO, BCO, XPO, Nash-MD and PRM trainers are gone from it). Checked
#: before the class hierarchy, because some configs subclass others (GKDConfig and GOLDConfig
#: < SFTConfig, GMPOConfig < GRPOConfig). Pinned against the installed trl by
#: tests/test_trl_callback.py.
CONFIG_KINDS: Final[dict[str, str]] = {
    "SFTConfig": "sft", "DPOConfig": "dpo", "KTOConfig": "kto", "RewardConfig": "reward",
    "GRPOConfig": "grpo", "RLOOConfig": "rloo", "OnlineDPOConfig": "online_dpo",
    "ORPOConfig": "orpo", "CPOConfig": "cpo", "GKDConfig": "gkd", "GOLDConfig": "gold",
    "DistillationConfig": "distillation", "AsyncDistillationConfig": "async_distillation",
    "ServerDistillationConfig": "server_distillation", "TPOConfig": "tpo",
    "A2POConfig": "a2po", "GMPOConfig": "gmpo", "SDFTConfig": "sdft", "SDPOConfig": "sdpo",
    "IWOPDConfig": "iwopd", "AsyncGRPOConfig": "async_grpo",
}
#: TRL model tags (``model.model_tags``) whose kind is not the tag itself with ``-`` -> ``_``.
TAG_KINDS: Final[dict[str, str]] = {"reward-trainer": "reward"}
#: Config keys that say where a run lives, not how it trains: left out of the config hash.
_UNHASHED_KEYS: Final = frozenset({"output_dir", "logging_dir", "run_name", "hub_model_id"})


def detect_trainer_kind(args: Any, model: Any = None) -> str:
    """The trainer kind (``"grpo"``, ``"dpo"``, ... or ``"unknown"``) from the config and model.

    Order: the exact config class name; TRL's model tags (``['trl', 'dpo']``); the nearest known
    config class up the hierarchy (a user's ``MyGRPOConfig(GRPOConfig)``); a TRL config class
    not listed here (``trl...FooConfig`` -> ``foo``); else ``"unknown"``.
    """
    cls = type(args)
    kind = CONFIG_KINDS.get(cls.__name__)
    if kind is not None:
        return kind
    tags = getattr(model, "model_tags", None) or []
    for tag in tags:
        if isinstance(tag, str) and tag != "trl":
            return TAG_KINDS.get(tag, tag.replace("-", "_"))
    for base in cls.__mro__[1:]:
        kind = CONFIG_KINDS.get(base.__name__)
        if kind is not None:
            return kind
    name = cls.__name__
    if cls.__module__.startswith("trl.") and name.endswith("Config") and len(name) > 6:
        return name[:-6].lower()
    return "unknown"


def jsonable(value: Any, _depth: int = 0) -> Any:
    """``value`` made safe for strict JSON: non-finite floats and unknown objects as strings."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if _depth > 8:
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v, _depth + 1) for v in value]
    return str(value)


def _config_dict(args: Any) -> dict[str, Any]:
    try:
        raw = args.to_dict()  # masks hub tokens and turns enums into their values
    except Exception:  # noqa: BLE001 - a broken config must not stop training
        raw = dict(getattr(args, "__dict__", {}))
    return {k: jsonable(v) for k, v in raw.items() if not k.startswith("_")}


def config_hash(config: Mapping[str, Any]) -> str:
    """A short, stable hash of a config: equal for two runs trained the same way."""
    kept = {k: v for k, v in config.items() if k not in _UNHASHED_KEYS}
    blob = json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _version(package: str) -> str | None:
    try:
        return _pkg_metadata.version(package)
    except _pkg_metadata.PackageNotFoundError:
        return None


def git_commit(cwd: str | os.PathLike[str] | None = None) -> str | None:
    """``git rev-parse HEAD`` in ``cwd``, or ``None`` (no git, not a repository, too slow)."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                              text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


def _is_metric(value: Any) -> bool:
    kind = type(value)
    if kind is float or kind is int:
        return True
    if kind is bool or kind is str or value is None:
        return False
    return hasattr(value, "__float__")  # numpy scalars, 0-d tensors


class TrainGuardCallback(TrainerCallback):
    """Stream a Trainer's logs to trainguard and stop the run when the monitor asks.

    No argument is needed: the run directory comes from ``$TRAINGUARD_RUN_DIR`` or
    ``args.output_dir/trainguard``. ``stop_check_interval`` bounds how often the control file
    is stat-ed (seconds). After a stop, :attr:`stopped_at_step` is the step the run ended at.
    """

    def __init__(self, run_dir: str | os.PathLike[str] | None = None, *,
                 stop_check_interval: float = 0.05) -> None:
        self._run_dir = run_dir
        self._stop_check_interval = stop_check_interval
        self.writer: EventWriter | None = None
        self.trainer_kind: str | None = None
        self.stopped_at_step: int | None = None
        self.checkpoint: str | None = None

    # -- set-up --------------------------------------------------------------------------------

    def resolve_run_dir(self, args: Any) -> Path:
        """Where events go: ``run_dir=``, ``$TRAINGUARD_RUN_DIR``, or ``output_dir/trainguard``."""
        if self._run_dir is not None:
            return Path(self._run_dir)
        env = os.environ.get(RUN_DIR_ENV)
        if env:
            return Path(env)
        return Path(getattr(args, "output_dir", None) or ".") / "trainguard"

    def _writer_for(self, args: Any) -> EventWriter:
        writer = self.writer
        if writer is None:
            writer = self.writer = EventWriter(
                self.resolve_run_dir(args), rank=int(getattr(args, "process_index", 0)),
                world_size=int(getattr(args, "world_size", 1)),
                stop_check_interval=self._stop_check_interval)
        return writer

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Open this rank's event file and record what is training (rank 0 writes the file)."""
        if self.writer is not None:  # a second train() call is a new run segment
            self.writer.close()
            self.writer = None
        self.stopped_at_step = None
        self.checkpoint = None
        writer = self._writer_for(args)
        model = kwargs.get("model")
        self.trainer_kind = detect_trainer_kind(args, model)
        if writer.rank != 0:
            return
        config = _config_dict(args)
        tags = getattr(model, "model_tags", None)
        writer.update_metadata({
            "trainer": self.trainer_kind,
            "config_class": f"{type(args).__module__}.{type(args).__qualname__}",
            "model_class": type(model).__name__ if model is not None else None,
            "model_tags": list(tags) if tags else None,
            "versions": {name: _version(name)
                         for name in ("trl", "transformers", "torch", "accelerate", "trainguard")},
            "config_hash": config_hash(config),
            "config": config,
            "git_commit": git_commit(os.getcwd()),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "world_size": writer.world_size,
            "start_time": writer.started_at,
            "max_steps": int(getattr(state, "max_steps", 0) or 0),
            "output_dir": str(getattr(args, "output_dir", "")),
        })

    # -- the per-step path ---------------------------------------------------------------------

    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None,
               **kwargs: Any) -> None:
        """Write the log dict as one event of the current global step (non-numbers dropped)."""
        if not logs:
            return
        writer = self.writer or self._writer_for(args)
        metrics = {k: v for k, v in logs.items() if _is_metric(v)}
        if "train_runtime" in logs:
            kind = "summary"
        elif any(k.startswith("eval_") for k in logs):
            kind = "eval"
        else:
            kind = "train"
        writer.log_metrics(state.global_step, metrics, kind=kind)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Obey a stop request: save a checkpoint after this step and end training."""
        writer = self.writer or self._writer_for(args)
        if self.stopped_at_step is not None or not writer.should_stop:
            return
        # Runs after DefaultFlowCallback, so these flags survive until _maybe_log_save_evaluate:
        # the step is logged, a checkpoint saved, and the loop ends.
        control.should_log = True
        control.should_save = True
        control.should_training_stop = True
        step = int(state.global_step)
        self.stopped_at_step = step
        writer.log_metrics(step, {"trainguard/stop_step": step}, kind="stop")
        self._record_stop(args, writer)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Note the checkpoint written for a stop, so that ``stopped.json`` can name it."""
        if self.stopped_at_step is not None and self.writer is not None:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            self.checkpoint = str(folder)
            self._record_stop(args, self.writer)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Close this rank's event file; record where training ended."""
        writer = self.writer
        if writer is None:
            return
        writer.update_metadata({"end_time": time.time(), "final_step": int(state.global_step)})
        writer.close()
        self.writer = None

    def _record_stop(self, args: Any, writer: EventWriter) -> None:
        if writer.rank != 0:
            return
        request = writer.stop_request
        stopped = {
            "run_id": writer.run_id,
            "step": self.stopped_at_step,
            "time": time.time(),
            "checkpoint": self.checkpoint,
            "rule": request.rule if request else None,
            "reason": writer.stop_reason,
            "requested_at_step": request.step if request else None,
        }
        writer.update_metadata({"stopped": stopped})
        try:
            write_json_atomic(writer.run_dir / STOPPED_FILENAME, stopped)
        except (OSError, ValueError):
            pass  # recorded in run_metadata.json already; never raise into training
