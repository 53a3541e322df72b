"""The ``trainguard`` command line: parses arguments, calls the library, maps errors to exits.

Exit codes (``monitor``): 0 no alert of high severity or above; 2 at least one; 1 it could not
read its input or its rules (or a source became unreadable, or nothing could be judged: a blind
monitor is never clean), or the command line itself is wrong (never 2, the alert code).
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup

from trainguard import __version__
from trainguard.cli_output import EXIT_DEGRADED, EXIT_USAGE

__all__ = ["EXIT_DEGRADED", "EXIT_USAGE", "app", "run"]

# Each command imports what it needs (the monitor, the rules, rich) when it runs: `trainguard
# --help` and a `monitor --once` CI gate start in a fraction of the time (bench_startup.py).
# The commands live in cli_follow.py (monitor, run), cli_rules.py, cli_convert.py and
# cli_runs.py (check, report, diff); what they print and their exit codes in cli_output.py.


class _Commands(TyperGroup):
    """The command group, with usage errors (an unknown option, a missing argument, a bad
    value) exiting 1, not click's 2: 2 is the alert code, and a CI gate must not read a typo
    in its own command line as "the run had a critical alert"."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None,
                     **extra: Any) -> Any:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except typer.TyperException as exc:
            raise _usage_exit(exc) from None

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except typer.TyperException as exc:
            raise _usage_exit(exc) from None


def _usage_exit(exc: typer.TyperException) -> typer.TyperException:
    """``exc`` (typer's usage errors carry click's code 2) with the usage exit code."""
    if getattr(exc, "exit_code", None) == 2:  # noqa: PLR2004 - click's usage code
        exc.exit_code = EXIT_USAGE
    return exc


app = typer.Typer(
    cls=_Commands,
    name="trainguard",
    help="Watch post-training runs (TRL, verl, OpenRLHF, plain PyTorch) and stop them when they "
    "go wrong.\n\nExample: [bold]trainguard monitor runs/exp1 --rules common --stop[/bold]",
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"trainguard {__version__}")
        raise typer.Exit(0)


@app.callback()
def main(
    version: Annotated[Optional[bool], typer.Option(  # noqa: UP007 - typer needs Optional
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None,
) -> None:
    """trainguard: a streaming monitor for post-training runs."""


def _register_commands() -> None:
    from trainguard import cli_convert, cli_follow, cli_rules, cli_runs

    for module in (cli_follow, cli_rules, cli_convert, cli_runs):
        module.register(app)


_register_commands()


def run() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    run()
