"""A W&B offline run (``wandb/offline-run-*/run-*.wandb``) as a source, read with wandb's own
record reader.

The ``.wandb`` file is wandb's transaction log: a LevelDB-style log of ``wandb.proto`` ``Record``
messages. ``wandb.sdk.internal.datastore.DataStore`` reads the framing and checksums; each
``history`` record (one ``wandb.log`` call) becomes one step. Its step is the logged
``train/global_step`` (what transformers' and OpenRLHF's callbacks log beside their metrics,
since ``wandb.log``'s own ``_step`` counts calls, eval calls included), else ``_step``. A record
still being written at the end of the file is read on the next poll. Needs ``trainguard[wandb]``
(wandb before 0.30, the last releases that ship the Python record reader).

Given a ``wandb`` folder, the newest run in it is read (run folders are named by start time).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from trainguard.events import decode_value
from trainguard.monitor.ingest.tail import Line
from trainguard.monitor.ingest.trackers.base import (
    MissingExtraError,
    TrackerLines,
    TrackerSource,
    require_extra,
)

__all__ = ["WandbSource", "find_wandb_file"]

_WHAT = "a W&B offline run"
#: The keys that carry the trainer's own step, most trusted first.
_STEP_KEYS = ("train/global_step", "global_step", "_step")


def _run_file(folder: Path) -> Path | None:
    files = sorted(folder.glob("run-*.wandb"))
    return files[-1] if files else None


def find_wandb_file(path: Path) -> Path | None:
    """The ``.wandb`` file ``path`` names: the file, a run folder's, or a wandb folder's newest."""
    if path.is_file():
        return path if path.suffix == ".wandb" else None
    if not path.is_dir():
        return None
    own = _run_file(path)
    if own is not None:
        return own
    for folder in (path, path / "wandb"):
        if not folder.is_dir():
            continue
        runs = sorted((d for d in folder.glob("*run-*") if d.is_dir() and _run_file(d)),
                      key=lambda d: d.name.split("run-", 1)[-1])
        if runs:
            return _run_file(runs[-1])
    return None


class WandbSource(TrackerSource):
    """The history of one W&B offline run, as canonical one-metric lines."""

    def __init__(self, spec: str, file: Path, *,
                 positions: dict[str, dict[str, Any]] | None = None) -> None:
        _check_reader(spec)
        datastore = require_extra("wandb.sdk.internal.datastore", "wandb", _WHAT, spec)
        records = require_extra("wandb.proto.wandb_internal_pb2", "wandb", _WHAT, spec)
        self._record_class = records.Record
        self._store_class = datastore.DataStore
        self.name = spec
        self._file = file
        self._out = TrackerLines(spec)
        saved = (positions or {}).get(spec, {})
        self._offset = int(saved.get("offset", 0)) if saved.get("file") == str(file) else 0
        self._store: Any = None
        self._error: str | None = None
        self._stuck: tuple[int, int] | None = None  # (offset, file size) of a failed read

    def _open(self) -> Any:
        if self._store is None:
            store = self._store_class()
            # DataStore.open_for_scan opens read-write; a reader needs read access only.
            store._fname = str(self._file)
            store._fp = open(self._file, "rb")  # noqa: SIM115 - held until close()
            store._opened_for_scan = True
            store._read_header()
            if self._offset:
                store.seek(self._offset)
            else:
                self._offset = store.get_offset()
            self._store = store
        return self._store

    def poll(self) -> list[Line]:
        """History records written since the last call."""
        try:
            store = self._open()
        except FileNotFoundError:
            self._error = f"{self.name}: {self._file} is gone"
            return []
        except Exception as exc:  # noqa: BLE001 - a header still being written, or not W&B
            self._error = f"{self.name}: cannot read {self._file}: {exc}"
            self._store = None
            return []
        self._error = None
        record_class = self._record_class
        while True:
            try:
                data = store.scan_data()
            except Exception as exc:  # noqa: BLE001 - a record cut short (AssertionError) or corrupt
                self._partial(store, exc)
                break
            if data is None:
                # End of the file, or a record cut short that the reader dropped: read again.
                store.seek(self._offset)
                break
            record = record_class()
            record.ParseFromString(data)
            self._offset = store.get_offset()
            if record.WhichOneof("record_type") == "history":
                self._history(record.history)
        return self._out.take()

    def _partial(self, store: Any, exc: BaseException) -> None:
        """A record cut short by the writer is read whole next time; one that stays bad while
        the file grows past it is corrupt, and said so."""
        size = os.path.getsize(self._file)
        if self._stuck is not None and self._stuck[0] == self._offset and \
                size - self._offset > 65536:
            self._error = (f"{self._file}: record at byte {self._offset} is corrupt ({exc}); "
                           "the rest of this run cannot be read")
        self._stuck = (self._offset, size)
        store.seek(self._offset)

    def _history(self, history: Any) -> None:
        values: dict[str, Any] = {}
        for item in history.item:
            key = item.key or "/".join(item.nested_key)
            try:
                values[key] = json.loads(item.value_json)
            except ValueError:
                continue
        step_value = next((values[k] for k in _STEP_KEYS if k in values), None)
        if step_value is None and history.HasField("step"):
            step_value = history.step.num
        if not isinstance(step_value, int | float):
            self._out.skip("missing_step", ", ".join(sorted(values))[:60])
            return
        stamp = values.get("_timestamp")
        time = float(stamp) if isinstance(stamp, int | float) else None
        for key, raw in values.items():
            value = decode_value(raw)
            if value is not None:  # strings, media, tables: not metrics
                self._out.add(key, value, int(step_value), time)

    def positions(self) -> dict[str, dict[str, Any]]:
        """The byte offset after the last whole record read."""
        return {self.name: {"file": str(self._file), "offset": self._offset}}

    def watch_dirs(self) -> list[tuple[str, bool]]:
        """The run's folder."""
        return [(str(self._file.parent), False)]

    def notify(self, path: str) -> None:
        """Every poll reads on from the last offset (cheap at the end of the file)."""

    def close(self) -> None:
        """Close the run file."""
        if self._store is not None and self._store._fp is not None:
            self._store._fp.close()
        self._store = None


def _check_reader(spec: str) -> None:
    """wandb 0.30 and later ship no Python record reader: say which wandb the extra needs."""
    try:
        import wandb.sdk.internal.datastore  # noqa: F401
    except ImportError as exc:
        try:
            import wandb
        except ImportError:
            return  # require_extra says to install the extra
        raise MissingExtraError(
            f"{spec}: this is {_WHAT}; wandb {wandb.__version__} has no Python record reader "
            "(wandb.sdk.internal.datastore, removed in 0.30); install the wandb extra's "
            "version: pip install 'trainguard[wandb]'") from exc
