"""TensorBoard event files as a source, read with the tensorboard package's own loader.

``tensorboard.backend.event_processing.event_file_loader.LegacyEventFileLoader`` reads the
TFRecord framing (checksums included) and the ``Event`` protos; a record still being written at
the end of a file is left for the next call, so a file is followed live by calling ``Load()``
again. Scalars are read as they were written: ``simple_value`` (``SummaryWriter.add_scalar``) or
a scalar tensor (TensorFlow 2's ``tf.summary.scalar``). The loader's subclass
``EventFileLoader`` would first migrate every ``simple_value`` to a tensor (``data_compat``),
which took two thirds of the read time, only for it to be turned back into a float here. Needs
``trainguard[tensorboard]``.

Layout: ``events.out.tfevents.*`` files, as ``torch.utils.tensorboard.SummaryWriter`` (and so
transformers' ``TensorBoardCallback``, OpenRLHF and verl) writes them, one folder per run
(``runs/Dec01_22-00-00_host/``). Given a folder holding several runs, the newest run (the
folder whose first event file is the most recent) is read, so two runs' steps never mix in one
rank's windows; its later event files (a resumed writer) are read in name order.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from trainguard.monitor.ingest.tail import Line
from trainguard.monitor.ingest.trackers.base import TrackerLines, TrackerSource, require_extra

__all__ = ["EVENT_FILE_MARK", "TensorBoardSource", "find_event_files", "is_tensorboard_store"]

EVENT_FILE_MARK = "events.out.tfevents."
_WHAT = "a TensorBoard event store"


def _event_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root] if EVENT_FILE_MARK in root.name else []
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(folder, f) for f in files if EVENT_FILE_MARK in f]
    return found


def is_tensorboard_store(path: Path) -> bool:
    """A TensorBoard event file, or a folder holding one (at any depth)."""
    return bool(_event_files(path))


def find_event_files(path: Path) -> list[Path]:
    """The event files of the newest run under ``path``, in the order they were written."""
    files = _event_files(path)
    if not files:
        return []
    by_run: dict[Path, list[Path]] = {}
    for file in files:
        by_run.setdefault(file.parent, []).append(file)
    # The writer's file name holds its start time (events.out.tfevents.<time>.<host>...).
    newest = max(by_run, key=lambda run: min(_start_time(f) for f in by_run[run]))
    return sorted(by_run[newest], key=_start_time)


def _start_time(path: Path) -> float:
    rest = path.name.split(EVENT_FILE_MARK, 1)[-1]
    try:
        return float(rest.split(".", 1)[0])
    except ValueError:
        return path.stat().st_mtime if path.exists() else 0.0


class TensorBoardSource(TrackerSource):
    """The scalars of a TensorBoard run, as canonical one-metric lines."""

    def __init__(self, spec: str, *, positions: dict[str, dict[str, Any]] | None = None) -> None:
        loader = require_extra("tensorboard.backend.event_processing.event_file_loader",
                               "tensorboard", _WHAT, spec)
        self._tensor_util = require_extra("tensorboard.util.tensor_util", "tensorboard",
                                          _WHAT, spec)
        self._loader_class = loader.LegacyEventFileLoader
        self.name = spec
        self._root = Path(spec)
        self._out = TrackerLines(spec)
        self._positions = dict(positions or {})
        #: file -> (loader, events read so far)
        self._files: dict[str, list[Any]] = {}
        self._error: str | None = None

    def _scan(self) -> None:
        try:
            files = find_event_files(self._root)
        except OSError as exc:
            self._error = f"{self.name}: {exc.strerror or exc}"
            return
        self._error = None if files or self._files else f"{self.name}: no event files yet"
        for file in files:
            key = str(file)
            if key not in self._files:
                skip = int(self._positions.pop(key, {}).get("events", 0))
                self._files[key] = [self._loader_class(key), 0, skip]

    def poll(self) -> list[Line]:
        """Scalars written since the last call, in file order."""
        self._scan()
        make_ndarray = self._tensor_util.make_ndarray
        for key, state in self._files.items():
            loader, read, skip = state
            try:
                for event in loader.Load():
                    read += 1
                    if read <= skip:
                        continue  # read before a restart (its position was checkpointed)
                    for value in event.summary.value:
                        self._value(value, event, make_ndarray)
            except Exception as exc:  # noqa: BLE001 - a corrupt file must not kill the monitor
                self._error = f"{key}: cannot read event record {read + 1}: {exc}"
            state[1] = read
        return self._out.take()

    def _value(self, value: Any, event: Any, make_ndarray: Any) -> None:
        kind = value.WhichOneof("value")
        if kind == "simple_value":
            number = float(value.simple_value)
        elif kind == "tensor" and value.metadata.plugin_data.plugin_name in ("scalars", ""):
            array = make_ndarray(value.tensor)
            if array.size != 1 or array.dtype.kind not in "fiu":
                self._out.skip("not_a_scalar", value.tag)
                return
            number = float(array.reshape(-1)[0])
        else:
            return  # images, histograms, text: not metrics
        self._out.add(value.tag, number, int(event.step), float(event.wall_time) or None)

    def positions(self) -> dict[str, dict[str, Any]]:
        """Events read per file, so a restart reads on from there."""
        return {**self._positions,
                **{key: {"events": state[1]} for key, state in self._files.items()}}

    def watch_dirs(self) -> list[tuple[str, bool]]:
        """The store's folder, recursively."""
        root = self._root if self._root.is_dir() else self._root.parent
        return [(str(root), True)]

    def notify(self, path: str) -> None:
        """Every poll reads every file of the run (the loader is cheap at the end of one)."""

    def close(self) -> None:
        """Drop the loaders (they hold the files open)."""
        self._files.clear()
