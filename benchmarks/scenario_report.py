"""Scenario report: runs the scenario suite once (real TRL trainers on the tiny offline model)
and prints, per rule pack, the broken scenarios it caught of those it should, the high/critical
alerts it raised on healthy runs (the target is zero) and the median steps from a fault's onset
to the alert.

    python benchmarks/scenario_report.py [--only NAME ...] [--json]

The scenarios, their expected verdicts and onsets are those of ``tests/test_scenarios.py``
(defined in ``tests/scenario_runs.py``). Training takes about 25 s of CPU; this is not a
``bench_*.py`` script, so ``run_all.py`` does not run it. Exit status 1 when a scenario misses
its verdict or a healthy run raises a high/critical alert.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.scenario_runs import (  # noqa: E402
    SCENARIOS,
    Outcome,
    PackRow,
    Scenario,
    pack_rows,
    run_scenario,
    stdout_verdict,
)


def _quiet() -> None:
    """Keep the report readable: the trainers' warnings and progress bars are not findings."""
    warnings.filterwarnings("ignore")
    import datasets
    import transformers
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def _fmt_delay(row: PackRow) -> str:
    delay = row.median_delay
    return "n/a" if delay is None else f"{delay:g}"


def table(rows: list[PackRow]) -> str:
    """The per-pack summary as a Markdown table."""
    lines = ["| pack | caught / expected | false high/critical on healthy runs "
             "| median steps onset -> alert | missed |",
             "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row.pack} | {row.caught} / {row.expected} | {row.false_serious} "
                     f"| {_fmt_delay(row)} | {', '.join(row.missed) or '-'} |")
    return "\n".join(lines)


def details(results: list[tuple[Scenario, Outcome]], stdout_same: dict[str, bool]) -> str:
    """One line per scenario: verdict, onset, the first step of each named rule, and whether
    the plain-stdout capture gave the same verdict."""
    lines = ["| scenario | trainer | steps | onset | alerts (rule@step) | serious alerts "
             "| same verdict from plain stdout |",
             "|---|---|---|---|---|---|---|"]
    for scenario, out in results:
        named = [r for rules in scenario.catches.values() for r in rules]
        fired = ", ".join(f"{r}@{out.first(r)}" for r in named) or "(healthy)"
        onset = scenario.onset(out.records) if not scenario.healthy else None
        same = "yes" if stdout_same[scenario.name] else "NO"
        lines.append(f"| {scenario.name} | {out.kind} | {len(out.records)} "
                     f"| {onset if onset is not None else '-'} | {fired} "
                     f"| {len(out.serious())} | {same} |")
    return "\n".join(lines)


def main() -> int:
    """Run the scenarios and print the report; exit 1 when a scenario misses its verdict."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="scenario names to run")
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    args = parser.parse_args()
    _quiet()
    from tests.tiny_trl import build_tiny_model

    chosen = [s for s in SCENARIOS if args.only is None or s.name in args.only]
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    results: list[tuple[Scenario, Outcome]] = []
    with tempfile.TemporaryDirectory(prefix="trainguard-scenarios-") as tmp:
        model = build_tiny_model(Path(tmp) / "model")
        for i, scenario in enumerate(chosen):
            results.append((scenario, run_scenario(scenario, model, Path(tmp) / f"s{i}")))
        # While the captures still exist: the verdict from the plain stdout alone.
        stdout_same = {s.name: sorted(r for rules in s.catches.values() for r in rules)
                       == stdout_verdict(s, out) for s, out in results}
    wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    rows = pack_rows(results)
    failed = sum(len(r.missed) + r.false_serious for r in rows)
    failed += sum(1 for same in stdout_same.values() if not same)
    if args.json:
        print(json.dumps({
            "packs": [{"pack": r.pack, "caught": r.caught, "expected": r.expected,
                       "false_high_critical_on_healthy": r.false_serious,
                       "median_steps_onset_to_alert": r.median_delay, "missed": r.missed}
                      for r in rows],
            "stdout_same_verdict": stdout_same,
            "scenarios": len(results), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)},
            indent=1))
    else:
        healthy = sum(1 for s, _ in results if s.healthy)
        print(f"{len(results)} scenarios ({healthy} healthy, {len(results) - healthy} broken), "
              f"trained in {wall:.0f} s wall / {cpu:.0f} s CPU\n")
        print(table(rows))
        print()
        print(details(results, stdout_same))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
