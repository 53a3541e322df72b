"""Sinks: where alerts and verdicts go (console, JSONL record, reports, notifications through
apprise, Prometheus ``/metrics``, the live view, the HTML and Markdown run reports).

A sink receives alerts and summaries; it never changes them and never decides a verdict.

May import: ``trainguard.events``, ``trainguard.exceptions``, ``monitor.engine`` (alert types).
Never ``monitor.ingest``, ``monitor.act`` or the CLI.
"""
