"""The run report as one self-contained HTML file: inline CSS and SVG drawn here, no script,
no font, image or style sheet fetched from anywhere, so it opens offline, in a mail client or
an artifact viewer, as it opened here."""

from __future__ import annotations

import json
import math
import time
from html import escape
from typing import Any

from trainguard.monitor.engine.alerts import Alert
from trainguard.monitor.sinks.report_model import MetricPlot, RunReport, StopMark

__all__ = ["render_html", "svg_plot"]

_RANK_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                "#7f7f7f"]
_SEVERITY_COLORS = {"info": "#4c78a8", "low": "#54a24b", "medium": "#e0a800", "high": "#e45756",
                    "critical": "#b00020"}
_STATUS_COLORS = {"clean": "#2e7d32", "alert": "#b00020", "degraded": "#e0a800"}

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px;color:#222;
background:#fff;max-width:1200px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:16px 0 6px}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;font-weight:600;
font-size:13px}
.meta{color:#555;font-size:13px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5}
.plots{display:flex;flex-wrap:wrap;gap:12px}
.plot{border:1px solid #e5e5e5;border-radius:6px;padding:6px;width:552px}
.plot h4{margin:0 0 2px;font-size:13px;font-family:monospace}
.sev{font-weight:700}
.do{color:#333}.why{color:#666;font-size:12px}
code{font-size:12px}
"""

W, H = 540, 190
_ML, _MR, _MT, _MB = 56, 12, 10, 26


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value != value:
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4g}"


def svg_plot(plot: MetricPlot, stop: StopMark | None) -> str:
    """One metric: a polyline per rank, alert markers, non-finite values and the stop."""
    steps = [s for series in plot.series for s in series.steps + series.nonfinite_steps]
    values = [v for series in plot.series for v in series.values]
    alert_steps = [a.step for a in plot.alerts]
    if stop is not None and stop.step is not None:
        alert_steps.append(stop.step)
    all_steps = steps + alert_steps
    x0, x1 = (min(all_steps), max(all_steps)) if all_steps else (0, 1)
    if x1 == x0:
        x1 = x0 + 1
    y0, y1 = (min(values), max(values)) if values else (0.0, 1.0)
    if y1 == y0:
        y0, y1 = y0 - 1.0, y1 + 1.0
    pad = (y1 - y0) * 0.06
    y0, y1 = y0 - pad, y1 + pad
    pw, ph = W - _ML - _MR, H - _MT - _MB

    def x(step: float) -> float:
        return _ML + (step - x0) / (x1 - x0) * pw

    def y(value: float) -> float:
        return _MT + (y1 - value) / (y1 - y0) * ph

    out = [f'<svg width="{W}" height="{H}" '
           f'viewBox="0 0 {W} {H}" role="img" aria-label="{escape(plot.metric)}">',
           f'<rect x="{_ML}" y="{_MT}" width="{pw}" height="{ph}" fill="#fcfcfc" '
           'stroke="#ccc"/>']
    for i in range(5):  # grid and labels
        gy = _MT + ph * i / 4
        value = y1 - (y1 - y0) * i / 4
        out.append(f'<line x1="{_ML}" y1="{gy:.1f}" x2="{_ML + pw}" y2="{gy:.1f}" '
                   'stroke="#eee"/>')
        out.append(f'<text x="{_ML - 4}" y="{gy + 4:.1f}" font-size="10" text-anchor="end" '
                   f'fill="#555">{_fmt(value)}</text>')
    for i in range(5):
        step = x0 + (x1 - x0) * i / 4
        out.append(f'<text x="{x(step):.1f}" y="{H - 8}" font-size="10" text-anchor="middle" '
                   f'fill="#555">{int(round(step))}</text>')
    for series in plot.series:
        color = _RANK_COLORS[series.rank % len(_RANK_COLORS)]
        if series.steps:
            points = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in zip(series.steps,
                                                                        series.values,
                                                                        strict=True))
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.3" '
                       f'points="{points}"><title>rank {series.rank}</title></polyline>')
        for s in series.nonfinite_steps[:200]:  # NaN / inf: a cross on the top edge
            cx, cy = x(s), _MT + 5
            out.append(f'<path d="M{cx - 4:.1f},{cy - 4:.1f}L{cx + 4:.1f},{cy + 4:.1f}'
                       f'M{cx - 4:.1f},{cy + 4:.1f}L{cx + 4:.1f},{cy - 4:.1f}" '
                       f'stroke="#b00020" stroke-width="2"><title>rank {series.rank} step {s}: '
                       'not finite</title></path>')
    for alert in plot.alerts:
        color = _SEVERITY_COLORS.get(alert.severity, "#444")
        ax = x(alert.step)
        out.append(f'<line x1="{ax:.1f}" y1="{_MT}" x2="{ax:.1f}" y2="{_MT + ph}" '
                   f'stroke="{color}" stroke-dasharray="3,3" stroke-width="1.2"/>')
        out.append(f'<path d="M{ax - 5:.1f},{_MT + ph:.1f}L{ax + 5:.1f},{_MT + ph:.1f}'
                   f'L{ax:.1f},{_MT + ph - 8:.1f}Z" fill="{color}"><title>'
                   f'{escape(alert.severity)} {escape(alert.rule)} at step {alert.step}: '
                   f'{escape(alert.message)}</title></path>')
    if stop is not None and stop.step is not None:
        sx = x(stop.step)
        label = "stop" if stop.requested else "would stop"
        out.append(f'<line x1="{sx:.1f}" y1="{_MT}" x2="{sx:.1f}" y2="{_MT + ph}" '
                   'stroke="#b00020" stroke-width="2.5"/>')
        out.append(f'<text x="{sx + 3:.1f}" y="{_MT + 20}" font-size="11" fill="#b00020" '
                   f'font-weight="700">{label} @ {stop.step}</text>')
    out.append("</svg>")
    return "".join(out)


def _legend(plot: MetricPlot) -> str:
    parts = []
    for s in plot.series:
        color = _RANK_COLORS[s.rank % len(_RANK_COLORS)]
        nonfinite = f", {len(s.nonfinite_steps)} not finite" if s.nonfinite_steps else ""
        parts.append(f'<span style="color:{color}">&#9632;</span> rank {s.rank} '
                     f'(last {_fmt(s.last)}, min {_fmt(s.low)}, max {_fmt(s.high)}{nonfinite})')
    return '<div class="meta">' + " &nbsp; ".join(parts) + "</div>"


def _alerts_table(alerts: list[Alert]) -> str:
    firing = [a for a in alerts if a.state != "resolved"]
    if not firing:
        return "<p>No alerts.</p>"
    rows = ["<table><tr><th>severity</th><th>rule</th><th>step</th><th>rank</th>"
            "<th>what, what to do, why</th><th>action</th></tr>"]
    for a in firing:
        color = _SEVERITY_COLORS.get(a.severity, "#444")
        body = f"{escape(a.message)}"
        if a.recommendation:
            body += f'<div class="do"><b>do:</b> {escape(a.recommendation)}</div>'
        if a.reference:
            body += f'<div class="why"><b>why:</b> {escape(a.reference)}</div>'
        rows.append(f'<tr><td class="sev" style="color:{color}">{escape(a.severity)}</td>'
                    f"<td><code>{escape(a.rule)}</code></td><td>{a.step}</td>"
                    f"<td>{'' if a.rank is None else a.rank}</td><td>{body}</td>"
                    f"<td>{escape(a.delivery or a.action)}</td></tr>")
    resolved = len(alerts) - len(firing)
    rows.append("</table>")
    if resolved:
        rows.append(f'<p class="meta">{resolved} resolved since.</p>')
    return "".join(rows)


def _metadata(meta: dict[str, Any]) -> str:
    if not meta:
        return '<p class="meta">No run_metadata.json.</p>'
    rows = ["<table>"]
    for key, value in meta.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        if len(text) > 400:
            text = text[:400] + "..."
        rows.append(f"<tr><th>{escape(str(key))}</th><td><code>{escape(text)}</code></td></tr>")
    rows.append("</table>")
    return "".join(rows)


def _health(report: RunReport) -> str:
    total = sum(report.skips.values())
    parts = [f"<p>{report.events} events in {report.records} steps; "
             f"{total} lines skipped.</p>"]
    if report.skips:
        parts.append("<table><tr><th>skipped because</th><th>lines</th></tr>")
        parts.extend(f"<tr><td>{escape(r)}</td><td>{c}</td></tr>"
                     for r, c in sorted(report.skips.items(), key=lambda kv: -kv[1]))
        parts.append("</table>")
    if report.streams:
        parts.append("<table><tr><th>stream</th><th>lines</th><th>skips</th></tr>")
        for name, st in list(report.streams.items())[:50]:
            skips = ", ".join(f"{c} x {r}" for r, c in st["skips"].items()) or "-"
            parts.append(f"<tr><td><code>{escape(name)}</code></td><td>{st['lines']}</td>"
                         f"<td>{escape(skips)}</td></tr>")
        parts.append("</table>")
    for problem in report.problems:
        parts.append(f'<p style="color:#b00020"><b>DEGRADED:</b> {escape(problem)}</p>')
    return "".join(parts)


def _run_section(report: RunReport) -> str:
    color = _STATUS_COLORS.get(report.status, "#444")
    steps = f"steps {report.steps[0]}-{report.steps[1]}" if report.steps else "no steps"
    head = (f'<h2>{escape(report.run)} <span class="badge" style="background:{color}">'
            f"{escape(report.status.upper())}</span></h2>"
            f'<p class="meta">trainer: {escape(report.trainer or "not detected")}; {steps}; '
            f"ranks: {', '.join(map(str, report.ranks)) or '-'}; exit code "
            f"{report.exit_code}</p>")
    stop = ""
    if report.stop is not None:
        verb = "Stopped" if report.stop.requested else "A stop rule fired (not stopped)"
        stop = (f'<p><b style="color:#b00020">{verb}</b> at step {report.stop.step} by '
                f"<code>{escape(report.stop.rule)}</code>: {escape(report.stop.reason)}</p>")
    plots = "".join(
        f'<div class="plot"><h4>{escape(p.metric)}</h4>{svg_plot(p, report.stop)}'
        f"{_legend(p)}</div>" for p in report.plots) or "<p>No metrics to plot.</p>"
    return (head + stop + "<h3>Alerts</h3>" + _alerts_table(report.alerts)
            + "<h3>Watched metrics</h3>" + f'<div class="plots">{plots}</div>'
            + "<h3>Run metadata</h3>" + _metadata(report.metadata)
            + "<h3>Ingest health</h3>" + _health(report))


def render_html(reports: list[RunReport]) -> str:
    """The whole report: one section per run."""
    made = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    title = "trainguard report: " + ", ".join(r.run for r in reports)
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>trainguard report</h1><p class=\"meta\">{len(reports)} run(s); made {made}"
            "</p>" + "".join(_run_section(r) for r in reports) + "</body></html>\n")
