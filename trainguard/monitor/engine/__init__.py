"""The engine: rules in, alerts out. Pure: no files, clocks, signals, threads or processes.

Owns rule evaluation over step records (``engine``, ``rulestate``), the cross-rank views
(``ranks``: straggler scores), the alert life cycle (``alerts``) and the rule-test runner
(``testing``: ``promtool test rules`` for trainguard packs, and ``replay``).

May import: ``trainguard.rules``, ``trainguard.events``, ``trainguard.exceptions`` and the standard
library's pure parts. Never ``monitor.ingest``, ``monitor.act``, ``monitor.sinks``, the loop, or the
CLI. ``testing`` reads the one test or record file it is handed, and nothing else.
"""
