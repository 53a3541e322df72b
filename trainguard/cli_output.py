"""What the ``trainguard`` commands write to stderr and how our errors become exit codes.

Kept out of ``cli`` so every command module can use it without importing the app that
registers them. rich is imported on first use: ``--help`` and a quiet ``monitor --once`` never
pay for it.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

import typer

from trainguard.exceptions import TrainguardError

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["EXIT_DEGRADED", "EXIT_USAGE", "escape", "fail", "stderr"]

#: Mirrors trainguard.monitor.daemon.EXIT_DEGRADED (pinned by tests/test_startup.py).
EXIT_DEGRADED = 1
#: A mistake in the command line itself: never the alert code 2.
EXIT_USAGE = 1


@cache
def stderr() -> Console:
    """The stderr console, made on first use (rich costs tens of ms to import)."""
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def escape(text: str) -> str:
    """``text`` as rich prints it literally (our messages may hold [brackets])."""
    from rich.markup import escape as escape_markup

    return escape_markup(text)


def fail(exc: TrainguardError) -> typer.Exit:
    """Print ``exc`` as an error line, no traceback; the exit to raise (degraded: 1)."""
    stderr().print(f"[bold red]error:[/] {escape(str(exc))}")  # messages may hold [brackets]
    return typer.Exit(EXIT_DEGRADED)
