"""Ingest: where events come from and how they become step records.

Owns the sources (files, run directories, stdin, pipes, GPU samples), the tailer (rotation,
truncation, restarts), trainer stdout parsing by regex presets, field maps (``normalize``) and
grouping of events into steps (``gather``).

May import: ``trainguard.events``, ``trainguard.control``, ``trainguard.exceptions``,
``trainguard.presets`` data, ``trainguard.rules`` (for key detection). Never ``monitor.engine``'s
evaluation, ``monitor.act``, ``monitor.sinks``, the loop or the CLI.
"""
