"""trainguard: a streaming monitor that watches post-training runs and stops them going wrong.

The trainer side is :class:`EventWriter`; importing it never imports torch or the monitor.
It is imported on first use (module ``__getattr__``), so ``import trainguard`` (and through it
every ``trainguard monitor`` start) does not pay for the writer's imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainguard.emitters.writer import EventWriter

__version__ = "0.1.0"
__all__ = ["EventWriter", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "EventWriter":
        from trainguard.emitters.writer import EventWriter

        return EventWriter
    raise AttributeError(f"module 'trainguard' has no attribute {name!r}")
