"""The monitor process: the path of an event, one room each.

    ingest/  -> sources, tailing, stdout parsing, field maps, grouping into steps
    engine/  -> rules in, alerts out (pure), cross-rank views, alert life cycle, rule tests
    act/     -> control file, signals, ``trainguard run``, postmortem
    sinks/   -> console, JSONL record, reports
    ray/     -> many nodes: an agent actor per node, the monitor actor, the spool (trainguard[ray])

This package itself keeps the loop (``daemon``, with its parts: completed steps to the engine
``intake``, one-metric steps read as columns ``step_columns``, step alignment across ranks
``alignment``, the verdict ``verdict``, the collector while it runs ``collector``), the
session that wires a command line to the rooms (``session``), the checkpoint (``checkpoint``),
format conversion (``convert``), the stateless batch verdict (``check``), whole runs in polars
for reports and diffs (``runs``) and the outputs a command line asks for besides alerts
(``outputs``).
Nothing here imports ``trainguard.cli``; the trainer side (``trainguard.emitters``) never
imports anything here.
"""
