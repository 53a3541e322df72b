"""The run report as Markdown, for a pull-request comment or a CI job summary: the verdict,
the alerts with what to do, a row per watched metric and rank with a text sparkline, metadata
and ingest health."""

from __future__ import annotations

import json
import math

from trainguard.monitor.sinks.report_model import RankSeries, RunReport

__all__ = ["render_markdown", "sparkline"]

_BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 24) -> str:
    """``values`` as a row of block characters (each the mean of its slice)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ""
    if len(finite) > width:
        size = len(finite) / width
        finite = [sum(chunk) / len(chunk) for chunk in
                  (finite[int(i * size):max(int((i + 1) * size), int(i * size) + 1)]
                   for i in range(width))]
    lo, hi = min(finite), max(finite)
    span = hi - lo or 1.0
    return "".join(_BARS[min(7, int((v - lo) / span * 8))] for v in finite)


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}"


def _series_row(metric: str, s: RankSeries) -> str:
    nonfinite = str(len(s.nonfinite_steps)) if s.nonfinite_steps else ""
    return (f"| `{_cell(metric)}` | {s.rank} | {s.points} | {_num(s.first)} | {_num(s.last)} | "
            f"{_num(s.low)} | {_num(s.high)} | {nonfinite} | {sparkline(s.values)} |")


def _run(report: RunReport) -> list[str]:
    steps = f"steps {report.steps[0]}-{report.steps[1]}" if report.steps else "no steps"
    out = [f"## {report.run}: **{report.status.upper()}** (exit {report.exit_code})", "",
           f"Trainer: {report.trainer or 'not detected'}; {steps}; {report.events} events in "
           f"{report.records} steps; ranks {', '.join(map(str, report.ranks)) or '-'}.", ""]
    if report.stop is not None:
        verb = "Stopped" if report.stop.requested else "A stop rule fired (not stopped)"
        out += [f"**{verb}** at step {report.stop.step} by `{report.stop.rule}`: "
                f"{_cell(report.stop.reason)}", ""]
    firing = [a for a in report.alerts if a.state != "resolved"]
    out += ["### Alerts", ""]
    if firing:
        out += ["| severity | rule | step | rank | what | do |", "|---|---|---|---|---|---|"]
        out += [f"| {a.severity} | `{a.rule}` | {a.step} | {'' if a.rank is None else a.rank} "
                f"| {_cell(a.message)} | {_cell(a.recommendation)} |" for a in firing]
    else:
        out.append("No alerts.")
    out += ["", "### Watched metrics", ""]
    if report.plots:
        out += ["| metric | rank | points | first | last | min | max | not finite | trend |",
                "|---|---|---|---|---|---|---|---|---|"]
        out += [_series_row(p.metric, s) for p in report.plots for s in p.series]
    else:
        out.append("No metrics.")
    out += ["", "### Run metadata", ""]
    if report.metadata:
        out += ["| key | value |", "|---|---|"]
        for key, value in report.metadata.items():
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            out.append(f"| {_cell(key)} | `{_cell(text[:200])}` |")
    else:
        out.append("No run_metadata.json.")
    out += ["", "### Ingest health", "",
            f"{sum(report.skips.values())} lines skipped."]
    if report.skips:
        out += ["", "| skipped because | lines |", "|---|---|"]
        out += [f"| {_cell(r)} | {c} |" for r, c in sorted(report.skips.items(),
                                                          key=lambda kv: -kv[1])]
    out += ["", *[f"**DEGRADED:** {_cell(p)}" for p in report.problems], ""]
    return out


def render_markdown(reports: list[RunReport]) -> str:
    """The whole report: one section per run."""
    lines = ["# trainguard report", ""]
    for report in reports:
        lines += _run(report)
    return "\n".join(lines) + "\n"
