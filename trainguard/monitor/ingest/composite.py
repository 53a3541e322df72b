"""One source made of several: the run's own events plus side channels (GPU samples, output).

:class:`CompositeSource` is the :class:`~trainguard.monitor.ingest.sources.Source` the monitor sees
when it reads more than one place at once. The *primary* source (a file, a run directory,
stdin, the trainer's output) decides the session: its name, whether it is exhausted or still
streaming, and its checkpoint positions and watched directories (any attribute not defined here
is the primary's, so a watcher or a checkpointer treats the composite exactly as the primary).
The *extra* sources only add lines, problems and counters. Lines are returned primary first,
then each extra in order; every line keeps its own stream name, so records never mix.
"""

from __future__ import annotations

from typing import Any

from trainguard.monitor.ingest.sources import Line, Source
from trainguard.monitor.ingest.tail import TailStats

__all__ = ["CompositeSource"]


class CompositeSource:
    """``primary`` plus ``extras``, polled together; the primary decides when it is over."""

    def __init__(self, primary: Source, *extras: Source) -> None:
        self.primary = primary
        self.extras = list(extras)
        self.name = primary.name

    def __getattr__(self, attr: str) -> Any:
        # Optional capabilities (positions, watch_dirs, notify, streaming) are the primary's,
        # and absent when it lacks them: start_watcher and the checkpointer test with hasattr.
        if attr in ("primary", "extras"):  # not set yet (copy, unpickle): no recursion
            raise AttributeError(attr)
        return getattr(self.primary, attr)

    def poll(self) -> list[Line]:
        """The primary's new lines, then each extra's."""
        lines = self.primary.poll()
        for extra in self.extras:
            lines += extra.poll()
        return lines

    def problems(self) -> list[str]:
        """Every part's problems: a side channel that cannot be read also degrades the verdict."""
        found = self.primary.problems()
        for extra in self.extras:
            found += extra.problems()
        return found

    @property
    def exhausted(self) -> bool:
        """The primary's: side channels never end a session on their own."""
        return self.primary.exhausted

    def stats(self) -> dict[str, TailStats]:
        """Counters of every stream of every part."""
        out = dict(self.primary.stats())
        for extra in self.extras:
            out.update(extra.stats())
        return out

    def close(self) -> None:
        """Close every part (extras first, so a side thread never outlives the primary)."""
        for extra in self.extras:
            extra.close()
        self.primary.close()
