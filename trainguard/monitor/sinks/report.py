"""``--report``: what the monitor read, skipped and found, as one JSON document.

Per source stream: lines read, skips by reason with the first few located, rotations and
truncations; for the session: events parsed, parse skips, problems that made it degraded,
alerts. The terminal summary prints the same counts (:func:`summary_lines`).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from trainguard.monitor.sinks.files import write_atomic

if TYPE_CHECKING:
    from trainguard.monitor.daemon import Verdict
    from trainguard.monitor.ingest.tail import TailStats

__all__ = ["build_report", "summary_lines", "write_report"]


def build_report(source_name: str, streams: dict[str, TailStats], verdict: Verdict,
                 *, suppressed_alerts: int = 0) -> dict[str, Any]:
    """The report as a JSON-ready dict."""
    return {
        "source": source_name,
        "status": verdict.status,
        "exit_code": verdict.exit_code,
        "events": verdict.events,
        "records": verdict.records,
        "parse_skips": dict(verdict.skips),
        "parse_skip_examples": [
            {"stream": ex.stream, "line": ex.line, "reason": ex.reason, "detail": ex.detail}
            for ex in verdict.skip_examples],
        "problems": list(verdict.problems),
        "notes": list(verdict.notes),
        "lines": verdict.lines,
        "judged": verdict.judged,
        "alerts": sum(1 for a in verdict.alerts if a.state == "firing"),
        "alerts_resolved": sum(1 for a in verdict.alerts if a.state == "resolved"),
        "alerts_suppressed_after_restart": suppressed_alerts,
        "streams": {
            name: {"lines": st.lines, "skips": dict(st.skips), "rotations": st.rotations,
                   "truncations": st.truncations,
                   "skip_examples": [{"line": n, "reason": r, "detail": d}
                                     for n, r, d in st.examples]}
            for name, st in streams.items()},
    }


def write_report(path: str | os.PathLike[str], report: dict[str, Any]) -> None:
    """Write the report atomically, never through a symlink."""
    write_atomic(path, json.dumps(report, indent=1, allow_nan=False).encode() + b"\n")


def summary_lines(streams: dict[str, TailStats], limit: int = 20) -> list[str]:
    """One line per stream with reads or skips (the busiest ``limit``), for the terminal."""
    rows = sorted(streams.items(), key=lambda kv: -kv[1].lines)
    out = []
    for name, st in rows[:limit]:
        skipped = ", ".join(f"{c} x {r}" for r, c in st.skips.most_common())
        out.append(f"  {name}: {st.lines} lines" + (f"; skipped {skipped}" if skipped else ""))
        out.extend(f"    {name}:{n}: {r} {d}" for n, r, d in st.examples)
    if len(rows) > limit:
        out.append(f"  ... and {len(rows) - limit} more streams (see --report)")
    return out
