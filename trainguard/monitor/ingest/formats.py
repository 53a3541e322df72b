"""What a source path holds, told from its layout, and the source that reads it.

``trainguard monitor PATH`` is pointed at wherever a run's metrics already live, and the same
call opens each of them (:func:`open_source_for`):

* ``events.out.tfevents.*`` (a file, or a folder of runs): TensorBoard
  (``trackers/tensorboard.py``);
* ``sqlite:///x.db``, a SQLite MLflow store, an ``mlruns/`` file store: MLflow
  (``trackers/mlflow.py``);
* ``*.wandb``, an ``offline-run-*`` folder, a ``wandb/`` folder: W&B offline
  (``trackers/wandb.py``);
* a JSONL file or folder whose first line is ``{"step":N,"data":{...}}``: verl's file logger
  (``verl_file.py``, over the file or directory source; it applies the ``verl`` map itself);
* ``-``: stdin, verl file-logger lines rewritten as they come;
* anything else: a canonical JSONL file or run directory.

The tracker sources fold the prefixes trackers add (``train/x`` is ``x``); lines a stdout
preset reads get its field map from the parser (``make_line_parser(map_keys=True)``).

A run directory that holds trainguard's own ``*.jsonl`` events is read as such even when a
tracker also wrote there (``output_dir/runs/`` beside the callback's events): ours carry ranks
and times the trackers do not. A store named without its extra installed is a
:class:`~trainguard.monitor.ingest.trackers.base.MissingExtraError` naming the extra.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from trainguard.monitor.ingest.sources import Source, open_source

__all__ = ["OpenedSource", "TRACKER_STORES", "detect_format", "open_source_for"]

#: Formats whose source reads a tracker's store and hands over canonical JSON lines.
TRACKER_STORES = frozenset({"tensorboard", "mlflow", "wandb"})

#: Lines of a file looked at to tell its format.
_SNIFF_LINES = 5


@dataclass(slots=True)
class OpenedSource:
    """A source and the format it was recognised as (see :func:`detect_format`)."""

    source: Source
    format: str


def _first_lines(path: Path, limit: int = _SNIFF_LINES) -> list[bytes]:
    if not path.is_file():  # a FIFO or device would block the read
        return []
    try:
        with path.open("rb") as handle:
            return [line for line in (handle.readline(1 << 16) for _ in range(limit)) if line]
    except OSError:
        return []


def _jsonl_files(root: Path) -> list[Path]:
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(folder, f) for f in files if f.endswith(".jsonl")]
    return found


def detect_format(spec: str) -> str:
    """``tensorboard``, ``mlflow``, ``wandb``, ``verl_file``, ``stdin`` or ``jsonl``.

    A path that cannot be looked into is ``jsonl``: opening it then says what is wrong.
    """
    try:
        return _detect(spec)
    except OSError:
        return "jsonl"


def _detect(spec: str) -> str:
    from trainguard.monitor.ingest.verl_file import is_verl_file_line

    if spec == "-":
        return "stdin"
    if spec.startswith(("sqlite:///", "file://")):
        return "mlflow"
    def verl(line: bytes) -> bool:
        return is_verl_file_line(line) and not _claimed(line)

    path = Path(spec)
    jsonl = [path] if path.is_file() else _jsonl_files(path) if path.is_dir() else []
    if path.is_dir() and jsonl:
        found = any(verl(line) for f in jsonl for line in _first_lines(f, 1))
        return "verl_file" if found else "jsonl"
    if path.is_file() and path.suffix in (".jsonl", ".json", ".log", ".txt", ""):
        lines = [line for line in _first_lines(path) if line.strip()]
        if lines and verl(lines[0]):
            return "verl_file"
    if path.exists() and not (path.is_file() and path.suffix == ".jsonl"):
        # Imported only here: a file or run directory of our own events never needs them.
        from trainguard.monitor.ingest.trackers.mlflow import mlflow_store_uri
        from trainguard.monitor.ingest.trackers.tensorboard import is_tensorboard_store
        from trainguard.monitor.ingest.trackers.wandb import find_wandb_file

        if is_tensorboard_store(path):
            return "tensorboard"
        if find_wandb_file(path) is not None:
            return "wandb"
        if mlflow_store_uri(spec) is not None:
            return "mlflow"
    return "jsonl"


def _claimed(line: bytes) -> bool:
    """A JSON format registered in ``sniff.JSON_FORMATS`` recognises the line: it reads the
    file through its own parser, and the built-in verl rewrite stays out of its way."""
    from trainguard.monitor.ingest.sniff import JSON_FORMATS

    if not JSON_FORMATS:
        return False
    import orjson

    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return any(fmt.detects(obj) for fmt in JSON_FORMATS)


def open_source_for(spec: str, *, exclude: Iterable[str] = (),
                    from_start: bool = True,
                    positions: dict[str, dict[str, Any]] | None = None,
                    tee: BinaryIO | None = None, rescan_interval: float = 1.0,
                    map_keys: bool = True) -> OpenedSource:
    """Open ``spec`` as what its layout says it is (module doc); the arguments are
    :func:`~trainguard.monitor.ingest.sources.open_source`'s, and ``map_keys=False`` keeps
    verl's file-logger keys as written (``trainguard convert``).

    Raises :class:`~trainguard.exceptions.SourceError` (a ``MissingExtraError`` for a store
    whose reader is not installed) for what the user must fix before the monitor can start.
    """
    kind = detect_format(spec)
    if kind == "tensorboard":
        from trainguard.monitor.ingest.trackers.tensorboard import TensorBoardSource

        return OpenedSource(TensorBoardSource(spec, positions=positions), kind)
    if kind == "mlflow":
        from trainguard.monitor.ingest.trackers.mlflow import MlflowSource, mlflow_store_uri

        uri = mlflow_store_uri(spec) or spec
        return OpenedSource(MlflowSource(spec, uri, positions=positions), kind)
    if kind == "wandb":
        from trainguard.monitor.ingest.trackers.wandb import WandbSource, find_wandb_file

        file = find_wandb_file(Path(spec))
        assert file is not None  # detect_format found it
        return OpenedSource(WandbSource(spec, file, positions=positions), kind)
    source = open_source(spec, exclude=exclude, from_start=from_start, positions=positions,
                         tee=tee, rescan_interval=rescan_interval)
    path = Path(spec)
    try:
        empty = kind == "jsonl" and spec != "-" and not (
            _jsonl_files(path) if path.is_dir() else path.is_file() and path.stat().st_size)
    except OSError:
        empty = False
    if kind in ("verl_file", "stdin") or (empty and not path.is_dir() and path.suffix == ".jsonl"
                                          and not path.exists()):
        # stdin and a store not written yet may turn out to be verl's file logger: lines are
        # checked one by one there (cheap); a file of our own events keeps its fast path.
        from trainguard.monitor.ingest.verl_file import VerlFileSource

        source = VerlFileSource(source, map_keys=map_keys)
    return OpenedSource(source, kind)
