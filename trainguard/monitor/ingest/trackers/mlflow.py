"""An MLflow tracking store as a source, read through ``mlflow.tracking.MlflowClient``.

Stores: SQLite (``sqlite:///path/mlflow.db``, or the ``.db`` file itself) and the file store
(``mlruns/``, or a folder holding one). The newest run of the store (by start time, over every
experiment) is followed: the run a trainer is writing now. Its metric histories are read again
at most every :data:`MIN_INTERVAL` seconds (longer as they grow: a read of the whole history
must stay a small part of the time), and only the points not yet seen are handed on. Needs
``trainguard[mlflow]``.

Opening a SQLite store written by an older MLflow lets MLflow upgrade its schema, as any
MLflow client does.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from trainguard.monitor.ingest.tail import Line
from trainguard.monitor.ingest.trackers.base import TrackerLines, TrackerSource, require_extra

__all__ = ["MIN_INTERVAL", "MlflowSource", "mlflow_store_uri"]

#: Seconds between two reads of the store while following it.
MIN_INTERVAL = 1.0
_WHAT = "an MLflow tracking store"
_SQLITE_MAGIC = b"SQLite format 3\x00"


def _is_sqlite_store(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            if handle.read(16) != _SQLITE_MAGIC:
                return False
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            tables = {row[0] for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")}
    except (OSError, sqlite3.Error):
        return False
    return {"metrics", "runs", "experiments"} <= tables


def _is_file_store(path: Path) -> bool:
    """An ``mlruns`` folder: experiment folders, each with a ``meta.yaml``."""
    try:
        return any(child.is_dir() and (child / "meta.yaml").is_file()
                   and child.name not in (".trash",) for child in path.iterdir())
    except OSError:
        return False


def mlflow_store_uri(spec: str) -> str | None:
    """The tracking URI of the MLflow store ``spec`` names, or None when it is not one."""
    if spec.startswith("sqlite:///"):
        return spec
    if spec.startswith("file://"):
        return spec
    path = Path(spec)
    if path.is_file():
        return f"sqlite:///{path.resolve()}" if _is_sqlite_store(path) else None
    if not path.is_dir():
        return None
    if _is_file_store(path) and not any(path.glob("*.jsonl")):
        return path.resolve().as_uri()
    nested = path / "mlruns"
    if nested.is_dir() and _is_file_store(nested):
        return nested.resolve().as_uri()
    return None


class MlflowSource(TrackerSource):
    """The newest run of an MLflow store, as canonical one-metric lines."""

    def __init__(self, spec: str, uri: str, *,
                 positions: dict[str, dict[str, Any]] | None = None) -> None:
        client_module = require_extra("mlflow.tracking", "mlflow", _WHAT, spec)
        if uri.startswith("file:"):
            # MLflow 3 refuses to open a file store unless told; reading one is what we want.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        for name in ("mlflow", "alembic"):  # their INFO lines would mix with ours on stderr
            logging.getLogger(name).setLevel(logging.WARNING)
        self.name = spec
        self._uri = uri
        self._client_class = client_module.MlflowClient
        self._client: Any = None
        self._positions = dict(positions or {})
        self._run_id: str | None = None
        self._seen: dict[str, int] = {}
        self._out = TrackerLines(spec)
        self._error: str | None = None
        self._next_read = 0.0
        self._interval = MIN_INTERVAL

    def _open(self) -> Any:
        if self._client is None:
            self._client = self._client_class(tracking_uri=self._uri)
        return self._client

    def _pick_run(self, client: Any) -> str | None:
        saved = self._positions.get(self.name, {})
        if isinstance(saved.get("run_id"), str):
            self._seen = {k: int(v) for k, v in dict(saved.get("seen", {})).items()}
            return str(saved["run_id"])
        experiments = [e.experiment_id for e in client.search_experiments()]
        if not experiments:
            return None
        runs = client.search_runs(experiments, order_by=["attributes.start_time DESC"],
                                  max_results=1)
        return str(runs[0].info.run_id) if runs else None

    def poll(self) -> list[Line]:
        """Points logged since the last read, in step order (at most one read a second)."""
        now = time.monotonic()
        if now < self._next_read:
            return []
        started = time.perf_counter()
        self._error = None
        try:
            self._read()
        except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds; none may kill us
            self._error = f"{self.name}: MLflow cannot read the store: {exc}"[:300]
        spent = time.perf_counter() - started
        self._interval = max(MIN_INTERVAL, 20 * spent)
        self._next_read = now + self._interval
        return self._out.take()

    def _read(self) -> None:
        client = self._open()
        if self._run_id is None:
            self._run_id = self._pick_run(client)
            if self._run_id is None:
                self._error = f"{self.name}: no run in the store yet"
                return
        run = client.get_run(self._run_id)
        fresh: list[tuple[int, str, float, float]] = []
        for key in sorted(run.data.metrics):
            history = sorted(client.get_metric_history(self._run_id, key),
                             key=lambda m: (m.timestamp, m.step))
            seen = self._seen.get(key, 0)
            fresh += [(int(m.step), key, float(m.value), m.timestamp / 1000.0)
                      for m in history[seen:]]
            self._seen[key] = len(history)
        fresh.sort(key=lambda point: (point[0], point[1]))
        for step, key, value, stamp in fresh:
            self._out.add(key, value, step, stamp)

    def positions(self) -> dict[str, dict[str, Any]]:
        """The run followed and the points read per metric, so a restart reads on."""
        if self._run_id is None:
            return dict(self._positions)
        return {self.name: {"run_id": self._run_id, "seen": dict(self._seen)}}

    def close(self) -> None:
        """MLflow's client holds no file of ours open between calls."""
        self._client = None
