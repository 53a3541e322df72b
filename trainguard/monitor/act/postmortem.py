"""The postmortem: what a person needs after a run ended, was stopped, or hung.

``RUN_DIR/postmortem.json`` is written atomically when the trainer exits (normally, by exception,
by a signal such as the OOM killer's SIGKILL), when trainguard stopped it, or when it hung::

    {"version": 1, "status": "stopped", "exit": {"code": null, "signal": "SIGTERM", ...},
     "last_step": {"0": 41}, "last_metrics": {"0": {"loss": "NaN"}},
     "nodes": {"0": {"host": "gpu-node-3", "local_rank": 0}}, "alerts": [...],
     "stop": {"rule": ..., "deliveries": [...], "obeyed": true, "outcome": ...},
     "hang": null, "resume": {"checkpoint": "runs/x/checkpoint-40", "step": 40, ...},
     "output_tail": ["...last lines of output..."]}
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from trainguard.control import write_json_atomic
from trainguard.events import Record, encode_value
from trainguard.monitor.engine.alerts import Alert

__all__ = ["POSTMORTEM_FILENAME", "describe_exit", "find_resume_checkpoint", "write_postmortem"]

POSTMORTEM_FILENAME = "postmortem.json"
_CHECKPOINT = re.compile(r"^checkpoint[-_](\d+)$")


def describe_exit(returncode: int | None) -> dict[str, Any]:
    """A ``Popen.returncode`` as code, signal and a sentence (negative = killed by a signal)."""
    if returncode is None:
        return {"code": None, "signal": None,
                "description": "exit status not visible (not trainguard's child) or still running"}
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        why = " (the kernel's OOM killer sends SIGKILL: check dmesg)" if name == "SIGKILL" else ""
        return {"code": None, "signal": name, "description": f"killed by {name}{why}"}
    return {"code": returncode, "signal": None,
            "description": "exited normally" if returncode == 0 else
            f"exited with code {returncode} (an exception or an error exit)"}


def find_resume_checkpoint(dirs: Iterable[str | os.PathLike[str]],
                           before_step: int | None) -> dict[str, Any] | None:
    """The newest ``checkpoint-N`` folder (in ``dirs`` or one level below) with N < before_step.

    A checkpoint saved at the step of the first critical alert may already hold the broken
    weights, so it is excluded.
    """
    best: tuple[int, Path] | None = None
    for base in dirs:
        root = Path(base)
        candidates: list[Path] = []
        try:
            for child in root.iterdir():
                if child.is_dir():
                    candidates.append(child)
                    if not _CHECKPOINT.match(child.name):
                        candidates.extend(p for p in child.iterdir() if p.is_dir())
        except OSError:
            continue
        for path in candidates:
            m = _CHECKPOINT.match(path.name)
            if not m:
                continue
            n = int(m.group(1))
            if before_step is not None and n >= before_step:
                continue
            if best is None or n > best[0]:
                best = (n, path)
    if best is None:
        return None
    why = (f"last checkpoint before the first critical alert (step {before_step})"
           if before_step is not None else "last checkpoint written")
    return {"checkpoint": str(best[1]), "step": best[0], "reason": why}


def _metrics_json(metrics: dict[str, float]) -> dict[str, Any]:
    return {k: encode_value(v) for k, v in metrics.items()}


def write_postmortem(
    run_dir: str | os.PathLike[str],
    *,
    status: str,
    returncode: int | None,
    last_records: dict[int, Record],
    alerts: Sequence[Alert],
    stop: dict[str, Any] | None = None,
    hang: dict[str, Any] | None = None,
    output_tail: Sequence[str] = (),
    checkpoint_dirs: Sequence[str | os.PathLike[str]] = (),
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``RUN_DIR/postmortem.json`` and return its path.

    ``status``: ``exited``, ``failed``, ``killed``, ``stopped`` or ``hung``.
    """
    critical = [a.step for a in alerts if a.state == "firing" and a.severity == "critical"]
    first_critical = min(critical) if critical else None
    resume = find_resume_checkpoint([run_dir, *checkpoint_dirs], first_critical)
    report: dict[str, Any] = {
        "version": 1,
        "status": status,
        "written_at": time.time(),
        "exit": describe_exit(returncode),
        "last_step": {str(rank): rec.step for rank, rec in sorted(last_records.items())},
        "last_metrics": {str(rank): _metrics_json(rec.metrics)
                         for rank, rec in sorted(last_records.items())},
        # Which node each rank ran on (as its events said): on many nodes, where to look.
        "nodes": {str(rank): {"host": rec.host, "local_rank": rec.local_rank}
                  for rank, rec in sorted(last_records.items()) if rec.host is not None},
        "first_critical_step": first_critical,
        "alerts": [a.to_json() for a in alerts],
        "stop": stop,
        "hang": hang,
        "resume": resume,
        "output_tail": list(output_tail),
    }
    if extra:
        report.update(extra)
    path = Path(run_dir) / POSTMORTEM_FILENAME
    write_json_atomic(path, report)
    return path
