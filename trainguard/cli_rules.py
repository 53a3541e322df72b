"""``trainguard rules``: list, show, explain, validate and test rules. Registered on the
``trainguard`` app by :func:`register`; like ``cli``, the commands only parse arguments and call
the library (:mod:`trainguard.rules.catalog`, :mod:`trainguard.monitor.engine.testing`).
"""

from __future__ import annotations

from typing import Annotated

import typer

from trainguard.cli_output import EXIT_DEGRADED, escape, fail, stderr
from trainguard.exceptions import TrainguardError

__all__ = ["register", "rules_app"]

rules_app = typer.Typer(
    help="List, show, explain and validate rules.\n\nExample: [bold]trainguard rules explain "
    "common.loss_spike[/bold]", rich_markup_mode="rich", no_args_is_help=True)
_PACKS_OPT = typer.Option("--rules", "-r", help="Rule pack or YAML file to look in; repeatable. "
                          "Default: every built-in pack.")


def register(app: typer.Typer) -> None:
    """Add the ``rules`` group to ``app``."""
    app.add_typer(rules_app, name="rules")


@rules_app.command("list")
def rules_list(rules: Annotated[list[str], _PACKS_OPT] = []) -> None:  # noqa: B006
    """List rules: id, severity, action, trainers and metric.

    [bold]Examples[/bold]

      trainguard rules list

      trainguard rules list -r common -r my_rules.yaml
    """
    from trainguard.rules.catalog import catalog

    try:
        entries = catalog(rules)
    except TrainguardError as exc:
        raise fail(exc) from None
    for pack, compiled in entries:
        r = compiled.rule
        typer.echo(f"{r.id:<40} {r.severity.value:<8} {r.action.value:<5} "
                   f"{','.join(r.trainers):<12} {r.metric}  [{pack}]"
                   + ("" if r.enabled else "  (disabled)"))


@rules_app.command("show")
def rules_show(rule_id: Annotated[str, typer.Argument(help="Rule id, e.g. common.loss_spike")],
               rules: Annotated[list[str], _PACKS_OPT] = []) -> None:  # noqa: B006
    """Print every field of one rule, defaults included.

    [bold]Example[/bold]

      trainguard rules show common.nonfinite_loss
    """
    from trainguard.rules.catalog import find_rule, show_rule

    try:
        _, compiled = find_rule(rule_id, rules)
    except TrainguardError as exc:
        raise fail(exc) from None
    typer.echo(show_rule(compiled))


@rules_app.command("explain")
def rules_explain(rule_id: Annotated[str, typer.Argument(help="Rule id, e.g. common.loss_spike")],
                  rules: Annotated[list[str], _PACKS_OPT] = []) -> None:  # noqa: B006
    """Explain one rule: what it watches, when it fires, what to do, and the reference.

    [bold]Example[/bold]

      trainguard rules explain common.loss_spike
    """
    from trainguard.rules.catalog import explain_rule, find_rule

    try:
        pack, compiled = find_rule(rule_id, rules)
    except TrainguardError as exc:
        raise fail(exc) from None
    typer.echo(explain_rule(compiled, pack))


@rules_app.command("validate")
def rules_validate(files: Annotated[list[str], typer.Argument(help="Rule files (YAML).")]) -> None:
    """Check rule files: safe YAML, every field, every condition; exit 1 on a mistake.

    [bold]Example[/bold]

      trainguard rules validate rules.yaml
    """
    from trainguard.rules.catalog import validate_file

    failed = False
    for path in files:
        try:
            compiled = validate_file(path)
        except TrainguardError as exc:
            stderr().print(f"[bold red]error:[/] {escape(str(exc))}")
            failed = True
            continue
        typer.echo(f"{path}: OK, {len(compiled)} rules")
    raise typer.Exit(EXIT_DEGRADED if failed else 0)


@rules_app.command("test")
def rules_test(files: Annotated[list[str], typer.Argument(
        help="Rule test files (YAML, promtool style). Default: every built-in pack's tests.")] = [],  # noqa: B006
) -> None:
    """Run rule unit tests: input series per step, the alerts expected at given steps.

    Exit 1 if any case fails. The format is in README.md ("Testing rules").

    [bold]Examples[/bold]

      trainguard rules test my_rules.tests.yaml

      trainguard rules test          [dim]# every built-in rule's firing and quiet cases[/dim]
    """
    from trainguard.monitor.engine.testing import builtin_test_files, run_rule_tests

    paths = list(files) or [str(p) for p in builtin_test_files()]
    failed = passed = skipped = 0
    for path in paths:
        try:
            results = run_rule_tests(path)
        except TrainguardError as exc:
            stderr().print(f"[bold red]error:[/] {escape(str(exc))}")
            failed += 1
            continue
        for result in results:
            if result.skipped:
                skipped += 1
                typer.echo(f"SKIP {path}: {result.name}: {result.detail}")
            elif result.passed:
                passed += 1
            else:
                failed += 1
                typer.echo(f"FAIL {path}: {result.name}: {result.detail}")
    typer.echo(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
    raise typer.Exit(EXIT_DEGRADED if failed else 0)
