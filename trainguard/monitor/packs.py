"""Choosing rule packs for a session: the rules to start with, then the trainer's pack and
filtering once the run says what is training. ``trainguard monitor`` and ``trainguard run``
both use :class:`PackSelector`; the decision itself is :func:`trainguard.rules.detect.choose_packs`
(pure); this module adds what needs I/O: reading ``run_metadata.json`` (or the config a trainer's
command line names) and loading packs."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainguard.exceptions import TrainguardError
from trainguard.monitor.engine.alerts import Alert
from trainguard.monitor.engine.engine import Engine
from trainguard.monitor.verdict import ConfigReport
from trainguard.rules.detect import DEFAULT_PACKS, PackChoice, choose_packs
from trainguard.rules.loader import CompiledRule, apply_overrides, load_pack

__all__ = ["CONFIG_FIELDS", "DEFAULT_RULES", "PackSelector", "TrainerCommand", "command_config",
           "command_trainer", "config_metrics", "recorded_trainer"]

#: The packs a session starts with when no --rules are given (the trainer's pack follows).
DEFAULT_RULES = ("common",)

METADATA_FILENAME = "run_metadata.json"  # as the writer names it (emitters/writer.py)


#: Fields of the trainer's config (recorded by the TRL callback) that rules read, as
#: ``config/NAME`` metrics of one record at the first step (common.warmup_longer_than_run,
#: grpo.temperature_too_low, rloo.temperature_too_low).
CONFIG_FIELDS = ("max_steps", "warmup_steps", "warmup_ratio", "learning_rate", "temperature")


def _metadata(run_dir: str | Path | None) -> dict[str, Any]:
    if run_dir is None:
        return {}
    try:
        meta = json.loads((Path(run_dir) / METADATA_FILENAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def recorded_trainer(run_dir: str | Path | None) -> str | None:
    """The trainer kind the TRL callback recorded in ``RUN_DIR/run_metadata.json``, if any."""
    kind = _metadata(run_dir).get("trainer")
    return kind.lower() if isinstance(kind, str) else None


def config_metrics(run_dir: str | Path | None) -> dict[str, float]:
    """The recorded config's numeric :data:`CONFIG_FIELDS` as ``config/NAME`` metrics."""
    config = _metadata(run_dir).get("config")
    if not isinstance(config, dict):
        return {}
    return {f"config/{name}": float(config[name]) for name in CONFIG_FIELDS
            if isinstance(config.get(name), (int, float)) and not isinstance(config[name], bool)}


#: A ``--config FILE`` larger than this is not a trainer's config (and is not read).
_MAX_CONFIG_FILE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class TrainerCommand:
    """A trainer's command line, where a relative ``--config`` path is read from (``cwd``),
    and how the terminal names it (``origin``)."""

    argv: tuple[str, ...]
    cwd: str | None = None
    origin: str = "the command line"


def command_config(argv: Sequence[str], cwd: str | None = None) -> dict[str, float]:
    """What a trainer's command line says of the :data:`CONFIG_FIELDS`, as ``config/NAME``
    metrics: the TrainingArguments flags HfArgumentParser reads (``--warmup_steps 100``,
    ``--warmup_steps=100``, ``--warmup-steps 100``) over the top-level keys of a TRL
    ``--config FILE.yaml`` (TrlParser), flags winning as they do there. ``trainguard run``
    gives this to a trainer that records no config of its own; a field the command does not
    name stays unknown, so a rule reading it says nothing rather than guess a default. A
    relative config path is read from ``cwd`` (the trainer's working directory), if given."""
    wanted = set(CONFIG_FIELDS)
    flags: dict[str, str] = {}
    config_file: str | None = None
    for i, arg in enumerate(argv):
        if not arg.startswith("--"):
            continue
        name, eq, value = arg[2:].partition("=")
        if not eq:
            following = argv[i + 1] if i + 1 < len(argv) else None
            if following is None or following.startswith("--"):
                continue
            value = following
        key = name.replace("-", "_")
        if key == "config":
            config_file = value
        elif key in wanted:
            flags[key] = value
    if config_file and cwd is not None:
        config_file = os.path.join(cwd, config_file)  # an absolute path stays as it is
    values: dict[str, Any] = dict(_config_file_fields(config_file, wanted)) if config_file else {}
    values.update(flags)
    out: dict[str, float] = {}
    for key, value in values.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if not isinstance(value, bool):
            out[f"config/{key}"] = number
    return out


def command_trainer(argv: Sequence[str]) -> str | None:
    """The trainer kind a TRL CLI command line names: ``trl rloo ...`` (or ``python
    /path/to/trl rloo``), ``python -m trl dpo ...``, ``accelerate launch -m trl.cli grpo
    ...``; None for any other command. Only the program (or the script an interpreter runs)
    and what follows ``-m`` count: ``--output_dir out/trl dpo`` names nothing."""
    at: int | None = None
    for i, arg in enumerate(argv[:-1]):
        if arg == "-m" and argv[i + 1] in ("trl", "trl.cli"):
            at = i + 2
            break
    else:
        program = [os.path.basename(a) for a in argv[:2]]
        if program and program[0] == "trl":
            at = 1
        elif len(program) == 2 and program[0].startswith("python") and program[1] == "trl":
            at = 2
    if at is None or at >= len(argv):
        return None
    kind = argv[at].lower()
    return kind if kind in DEFAULT_PACKS else None


def _config_file_fields(path: str, wanted: set[str]) -> dict[str, Any]:
    """The wanted top-level keys of a YAML config file; nothing if it cannot be read."""
    from trainguard.rules.loader import load_yaml

    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(_MAX_CONFIG_FILE_BYTES + 1)
        data = load_yaml(text, path) if len(text) <= _MAX_CONFIG_FILE_BYTES else None
    except (OSError, UnicodeDecodeError, TrainguardError):
        return {}
    return {k: v for k, v in data.items() if k in wanted} if isinstance(data, dict) else {}


class PackSelector:
    """Called by the loop with the metric keys seen so far until it returns True: reads the
    recorded trainer kind, asks :func:`choose_packs`, adds the pack and sets the engine's
    trainer (so rules scoped to other trainers stop applying), and says so through ``say``.
    The recorded config's :data:`CONFIG_FIELDS` (or, where none is recorded, what the trainer's
    command line says of them) are then evaluated as one record at the step being read (a
    warmup longer than the run shows at the first one); alerts go to ``route``.

    ``command``: the trainer's command line (``trainguard run``), or a function that finds it
    when the first record comes (the writer of a piped stdin, ingest/pipe_writer.py: by then
    it has surely started its program); its config flags stand in for a config the trainer
    did not record."""

    def __init__(self, explicit: Sequence[str], run_dir: str | Path | None,
                 say: Callable[[str], None], overrides: Sequence[str] = (),
                 command: Sequence[str] | Callable[[], TrainerCommand | None] = ()) -> None:
        self.explicit = list(explicit)
        self.run_dir = run_dir
        self.command: Callable[[], TrainerCommand | None]
        if callable(command):
            self.command = command
        else:
            given = TrainerCommand(tuple(command)) if command else None
            self.command = lambda: given
        self._config_read = False
        self._from_command: dict[str, float] | None = None
        self._command: TrainerCommand | None = None
        self._command_looked_for = False
        #: The config/ metrics found (None: not looked for yet, no record came).
        self._config_given: frozenset[str] | None = None
        self.say = say
        self.overrides = list(overrides)
        self.engine: Engine | None = None
        self.route: Callable[[Alert], None] | None = None
        self.step: Callable[[], int] = lambda: 0
        self.choice: PackChoice | None = None

    def attach(self, engine: Engine, route: Callable[[Alert], None] | None = None,
               step: Callable[[], int] = lambda: 0) -> None:
        """The engine to configure, where its config alerts go, and the step they carry (the
        record being read when the trainer became known): the loop's, made after this."""
        self.engine, self.route, self.step = engine, route, step

    def __call__(self, keys: set[str]) -> bool:
        assert self.engine is not None, "attach() the engine first"
        command = self._trainer_command()
        choice = choose_packs(self.explicit, recorded_trainer(self.run_dir), keys,
                              command_trainer(command.argv) if command else None)
        if choice.trainer is None:
            if not self._config_read:  # a plain loop may never name its trainer
                self._config_read = True
                self._evaluate_config()
            return False
        self.choice = choice
        added: list[CompiledRule] = []
        for pack in choice.packs:
            try:
                added += load_pack(pack)
            except TrainguardError as exc:  # a broken built-in pack must not blind the monitor
                self.say(f"trainguard: {choice.reason}; cannot load pack {pack}: {exc}")
        if added:
            self.engine.add_rules(apply_overrides(added, self.overrides, missing_ok=True))
        self.engine.set_trainer(choice.trainer)
        self.say(f"trainguard: {choice.reason}"
                 + (f" ({len(added)} rules)" if added else ""))
        # Again for the pack just added (grpo.temperature_too_low): a rule that already saw
        # the same config record stays as it was (config rules have no `for`).
        if added or not self._config_read:
            self._config_read = True
            self._evaluate_config()
        return True

    def config_report(self) -> ConfigReport | None:
        """What was found of the trainer's config and where it was looked for, for the
        verdict (monitor/verdict.py); None before the first record."""
        if self._config_given is None:
            return None
        places = []
        if self.run_dir is not None:
            places.append(f"{Path(self.run_dir) / METADATA_FILENAME}")
        command = self._command
        places.append(command.origin if command is not None else "no trainer command line")
        return ConfigReport(self._config_given, "; ".join(places))

    def _trainer_command(self) -> TrainerCommand | None:
        """The trainer's command line, looked for once (at the first record)."""
        if not self._command_looked_for:
            self._command_looked_for = True
            self._command = self.command()
        return self._command

    def _command_config(self) -> dict[str, float]:
        """The config the trainer's command line gives, found (and said) once."""
        if self._from_command is None:
            command = self._trainer_command()
            self._from_command = command_config(command.argv, command.cwd) if command else {}
            if command and self._from_command:
                said = ", ".join(f"{k.removeprefix('config/')}={v:g}"
                                 for k, v in self._from_command.items())
                self.say(f"trainguard: config from {command.origin}: {said}")
        return self._from_command

    def _evaluate_config(self) -> None:
        """Evaluate the recorded config (else the command line's) as one record."""
        assert self.engine is not None
        config = config_metrics(self.run_dir) or self._command_config()
        self._config_given = frozenset(config)
        if config:
            for alert in self.engine.evaluate(0, self.step(), config):
                if self.route is not None:
                    self.route(alert)
