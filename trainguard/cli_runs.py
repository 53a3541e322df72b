"""The commands over whole runs: ``check`` (the batch verdict), ``report`` (HTML or Markdown)
and ``diff`` (two runs side by side). Registered on the ``trainguard`` app by
:func:`register`; like ``cli``, they only parse arguments and call the library.
"""

from __future__ import annotations

import json
from functools import cache
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from trainguard.exceptions import TrainguardError

if TYPE_CHECKING:
    from rich.console import Console

    from trainguard.monitor.check import CheckOptions, RunCheck

__all__ = ["register"]

EXIT_DEGRADED = 1

_RUNS_ARG = typer.Argument(help="Runs: JSONL files or run directories (every *.jsonl in it).",
                           show_default=False)
_RULES_OPT = typer.Option("--rules", "-r", help="Rule pack name or YAML file; repeatable. "
                          "Default: common + the detected trainer's pack, as monitor.")
_FIELD_MAP_OPT = typer.Option("--field-map", help="Preset name, YAML file, SOURCE=TARGET "
                              "rename or none; repeatable. Default: the map of the framework "
                              "the keys name (verl, openrlhf), else none.")
_SET_RULE_OPT = typer.Option("--set-rule", help="ID.FIELD=VALUE, as for monitor; repeatable.")
_ALERT_OPT = typer.Option("--alert", help="An inline rule, as for monitor; repeatable.")
_REGEX_OPT = typer.Option("--regex", help="Read plain trainer stdout with this preset or "
                          "pattern, as for monitor.")


@cache
def _err() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _fail(exc: TrainguardError) -> typer.Exit:
    from rich.markup import escape

    _err().print(f"[bold red]error:[/] {escape(str(exc))}")
    return typer.Exit(EXIT_DEGRADED)


def _say(text: str) -> None:
    from rich.markup import escape

    _err().print(f"[yellow]trainguard: {escape(text)}[/]")


def _check_options(rules: list[str], field_map: list[str], set_rule: list[str],
                   alert: list[str], regex: str | None) -> CheckOptions:
    from trainguard.monitor.check import CheckOptions

    return CheckOptions(rules=list(rules), field_maps=list(field_map), set_rules=list(set_rule),
                        inline_alerts=list(alert), regex=regex)


def _run_line(result: RunCheck) -> str:
    v = result.verdict
    firing = [a for a in v.alerts if a.state == "firing"]
    worst = f" (worst {result.worst_severity})" if result.worst_severity else ""
    skipped = sum(v.skips.values())
    return (f"{result.run}: {v.status.upper()} exit {v.exit_code}: {v.events} events in "
            f"{v.records} steps, {len(firing)} alerts{worst}, {skipped} lines skipped"
            + (f", {len(v.problems)} problems" if v.problems else ""))


def register(app: typer.Typer) -> None:
    """Add ``check``, ``report`` and ``diff`` to ``app``."""
    app.command(name="check")(check)
    app.command(name="report")(report)
    app.command(name="diff")(diff)


def check(
    runs: Annotated[list[str], _RUNS_ARG],
    rules: Annotated[list[str], _RULES_OPT] = [],  # noqa: B006
    field_map: Annotated[list[str], _FIELD_MAP_OPT] = [],  # noqa: B006
    set_rule: Annotated[list[str], _SET_RULE_OPT] = [],  # noqa: B006
    alert: Annotated[list[str], _ALERT_OPT] = [],  # noqa: B006
    regex: Annotated[Optional[str], _REGEX_OPT] = None,  # noqa: UP007
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document (a list "
                                          "of runs, each with its alerts) instead of lines.")
                       ] = False,
    report_path: Annotated[Optional[str], typer.Option(  # noqa: UP007
        "--report", help="Also write the report of these runs here (.html or .md).")] = None,
    notify: Annotated[list[str], typer.Option(
        "--notify", help="Send alerts to this apprise URL, as for monitor; repeatable.")] = [],  # noqa: B006
    notify_severity: Annotated[str, typer.Option(
        "--notify-severity", help="Lowest severity notified.")] = "high",
) -> None:
    """The batch verdict of finished runs: one line per run, the worst exit code.

    Stateless: it never resumes from or writes a follow checkpoint, and writes no alerts file;
    the alerts are those [bold]monitor --once[/bold] raises on the same files. Over past runs
    it is the backtest of a rule pack before deploying it.

    [bold]Examples[/bold]

      trainguard check runs/exp1 runs/exp2

      trainguard check runs/* -r grpo_strict --json > verdicts.json

      trainguard check runs/exp1 --report report.html

    Exit codes: 0 every run clean; 2 an alert of high severity or above in any run; 1 a run
    could not be read (and none alerted).
    """
    from trainguard.monitor.check import check_run, worst_exit_code

    options = _check_options(rules, field_map, set_rule, alert, regex)
    results: list[dict[str, object]] = []
    for_report: list[RunCheck] = []
    codes: list[int] = []
    for run in runs:
        notifier = None
        try:
            if notify:
                from trainguard.monitor.sinks.notify import Notifier

                notifier = Notifier(list(notify), run=run, min_severity=notify_severity,
                                    report=_say)
                options.sinks, options.observers = [notifier], [notifier]
            result = check_run(run, options, collect=report_path is not None)
        except TrainguardError as exc:
            _err().print(f"{run}: [bold red]error:[/] {exc}", markup=True, highlight=False)
            codes.append(EXIT_DEGRADED)
            if as_json:
                results.append({"run": run, "status": "error", "exit_code": EXIT_DEGRADED,
                                "error": str(exc)})
            continue
        codes.append(result.verdict.exit_code)
        if as_json:
            results.append(result.to_json())
        else:
            typer.echo(_run_line(result))
            for problem in result.verdict.problems:  # why it is degraded: what could not be seen
                _err().print(f"{run}: [yellow]DEGRADED:[/] {problem}", markup=True,
                             highlight=False)
            for a in result.verdict.alerts:
                if a.state == "firing":
                    rank = f" rank {a.rank}" if a.rank else ""
                    typer.echo(f"  {a.severity:<8} {a.rule} step {a.step}{rank}: {a.message}")
        if report_path is not None:
            for_report.append(result)
    if as_json:
        typer.echo(json.dumps(results, indent=2, allow_nan=False))
    if report_path is not None and for_report:
        try:
            _write_report(for_report, report_path)
        except TrainguardError as exc:
            raise _fail(exc) from None
    raise typer.Exit(worst_exit_code(codes))


def _write_report(results: list[RunCheck], output: str) -> None:
    from trainguard.monitor.runs import write_run_report

    write_run_report(results, output)


def report(
    runs: Annotated[list[str], _RUNS_ARG],
    output: Annotated[str, typer.Option("--output", "-o", help="Write the report here: "
                                        ".html (one self-contained file) or .md.")],
    rules: Annotated[list[str], _RULES_OPT] = [],  # noqa: B006
    field_map: Annotated[list[str], _FIELD_MAP_OPT] = [],  # noqa: B006
    set_rule: Annotated[list[str], _SET_RULE_OPT] = [],  # noqa: B006
    alert: Annotated[list[str], _ALERT_OPT] = [],  # noqa: B006
    regex: Annotated[Optional[str], _REGEX_OPT] = None,  # noqa: UP007
) -> None:
    """Write a report of runs: plots, alerts with what to do, metadata, ingest health.

    A plot per watched metric (a line per rank, alerts and the stop marked), the alerts with
    what to do and why, the run's metadata, and what ingest skipped, by reason.

    The HTML file is self-contained (inline SVG, no script, no network reference): it opens
    offline and can be attached anywhere. Markdown (.md) suits a PR comment or a CI summary.

    [bold]Examples[/bold]

      trainguard report runs/exp1 -o report.html

      trainguard report runs/exp1 runs/exp2 -o summary.md -r grpo_strict

    Exit codes: 0 written (whatever the runs' verdicts; use check for those); 1 a run or an
    option is wrong.
    """
    from trainguard.monitor.check import check_runs

    try:
        results = check_runs(list(runs), _check_options(rules, field_map, set_rule, alert,
                                                          regex), collect=True)
        _write_report(results, output)
    except TrainguardError as exc:
        raise _fail(exc) from None
    _err().print(f"trainguard report: {len(results)} run(s) -> {output}", highlight=False)


def diff(
    run_a: Annotated[str, typer.Argument(help="The first run (a file or run directory).")],
    run_b: Annotated[str, typer.Argument(help="The second run.")],
    rtol: Annotated[float, typer.Option("--rtol", help="Relative tolerance.")] = 1e-3,
    atol: Annotated[float, typer.Option("--atol", help="Absolute tolerance.")] = 1e-6,
    field_map: Annotated[list[str], _FIELD_MAP_OPT] = [],  # noqa: B006
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")
                       ] = False,
) -> None:
    """Compare two runs: where each metric first diverges, and what config drifted.

    For each metric and rank, the first step both runs have where |a - b| > atol + rtol x |b|;
    then the differences between their run_metadata.json. On a resume it says which settings
    drifted from the run it resumes.

    [bold]Examples[/bold]

      trainguard diff runs/exp1 runs/exp1-resume

      trainguard diff runs/a runs/b --rtol 0.01 --json

    Exit codes: 0 no divergence and the same config; 2 a metric diverged or the config
    differs; 1 a run could not be read.
    """
    from trainguard.monitor.runs import diff_runs

    try:
        result = diff_runs(run_a, run_b, rtol=rtol, atol=atol, field_maps=list(field_map))
    except TrainguardError as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2, allow_nan=False))
    else:
        for line in result.lines():
            typer.echo(line)
    raise typer.Exit(2 if result.differs else 0)
