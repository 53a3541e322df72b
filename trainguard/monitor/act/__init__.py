"""Acting on a verdict: the control file, identity-checked signals, ``trainguard run``, postmortems.

Owns every effect on the trainer: writing stop requests, signalling a process only after its
identity is checked (``process``), wrapping a trainer command (``runner``) and saying afterwards
what the trainer did with a stop (``postmortem``).

May import: ``trainguard.control``, ``trainguard.events``, ``trainguard.exceptions``,
``monitor.engine`` (alert types), ``monitor.ingest`` (``runner`` reads its child's stdout).
Never ``monitor.sinks`` or the CLI.
"""
