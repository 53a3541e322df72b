"""``trainguard convert``: any source into canonical events, in one pass. Registered on the
``trainguard`` app by :func:`register`; like ``cli``, it only parses arguments and calls the
library (:mod:`trainguard.monitor.convert`).
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from trainguard.cli_options import LOGGING_STEPS_OPT, REGEX_OPT, STEPS_PER_EPOCH_OPT
from trainguard.cli_output import EXIT_DEGRADED, escape, fail, stderr
from trainguard.exceptions import TrainguardError

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add ``convert`` to ``app``."""
    app.command(name="convert")(convert)


def convert(
    source: Annotated[str, typer.Argument(
        help="A file, a run directory (every *.jsonl in it) or - for stdin.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Canonical JSONL written here "
                                        "(replaced if it exists).")],
    regex: Annotated[Optional[str], REGEX_OPT] = None,  # noqa: UP007
    field_map: Annotated[list[str], typer.Option(
        "--field-map", "--preset", help="Field-map preset name, YAML file or SOURCE=TARGET "
        "rename; repeatable. Default: keys kept as written.")] = [],  # noqa: B006
    logging_steps: Annotated[int, LOGGING_STEPS_OPT] = 1,
    steps_per_epoch: Annotated[Optional[int], STEPS_PER_EPOCH_OPT] = None,  # noqa: UP007
) -> None:
    """Turn any source into canonical events (one step per line), in one pass.

    Lines are auto-detected: canonical JSONL in any form, and trainer stdout (TRL log dicts in
    tqdm output, verl, OpenRLHF, key=value) unless --regex names one preset or a pattern.

    [bold]Examples[/bold]

      trainguard convert train.log -o events.jsonl --logging-steps 10

      trainguard convert verl.log -o events.jsonl --regex verl --preset verl

      python train.py 2>&1 | trainguard convert - -o events.jsonl

    Exit codes: 0 converted; 1 the source or an option is wrong, or the source was unreadable.
    """
    from trainguard.monitor.convert import convert as convert_source

    try:
        result = convert_source(source, output, regex=regex, field_maps=list(field_map),
                                logging_steps=logging_steps, steps_per_epoch=steps_per_epoch)
    except TrainguardError as exc:
        raise fail(exc) from None
    skipped = sum(result.skips.values())
    stderr().print(f"trainguard convert: {result.lines} lines -> {result.records} steps "
                   f"({result.events} metric values) in {escape(output)}; {skipped} lines skipped",
                   highlight=False)
    for reason, count in result.skips.most_common():
        stderr().print(f"  skipped {count} x {reason}")
    for ex in result.skip_examples:
        stderr().print(f"    {escape(ex.stream)}:{ex.line}: {ex.reason} {escape(ex.detail)}")
    for problem in result.problems:
        stderr().print(f"  [bold yellow]DEGRADED:[/] {escape(problem)}")
    raise typer.Exit(EXIT_DEGRADED if result.problems else 0)
