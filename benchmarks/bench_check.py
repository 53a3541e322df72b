"""``trainguard check`` and ``report`` on large runs, side by side with ``monitor --once``.

    python benchmarks/bench_check.py [--sizes 1000000,10000000] [--quick]

For each size, a file of canonical one-metric lines (``{"time", "step", "name", "value"}``) is
written, with one metric a step and with ten metrics a step, plus, at the first size, the same
one-metric-a-step events with ISO-8601 ``"time"`` strings. Each is read by a real
``trainguard check FILE --json`` process and by ``trainguard monitor FILE --once -q``, both with
the default packs (common + the detected trainer's), one after the other. Per run: CPU time of
the whole process (user + system, from ``os.wait4``, start-up included), events per CPU second,
peak RSS, and whether the two raised the same alerts. Then ``trainguard report FILE -o
report.html`` at the first size, in CPU seconds.

Targets (issue 12): check >= 1,000,000 events/s of CPU time end to end; peak RSS < 200 MB and
flat in the input size; alerts identical to monitor --once; report on 1M events < 5 s CPU.

The package is byte-compiled first, as an install compiles it: with ``PYTHONDONTWRITEBYTECODE``
set (as on the developers' machines) every run would otherwise compile trainguard's modules
again, 0.1 s of each start-up that no installed copy pays. ``--repeat N`` runs each command N
times and keeps the least CPU time (the most peak RSS): on a shared machine the CPU time of one
run varies by half with what else runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

NAMES = ["loss", "grad_norm", "learning_rate", "entropy", "mean_token_accuracy", "num_tokens",
         "epoch", "reward", "kl", "reward_std"]
BASE = dt.datetime(2024, 11, 23, 8, 0, 0, tzinfo=dt.UTC)


def _value(name: str, step: int, steps: int, noise: float) -> float:
    """A healthy SFT-like run: loss falling, accuracy rising, tokens counting up."""
    frac = step / steps
    # The loss falls without noise: at 1M steps a noisy plateau makes sft.loss_not_decreasing
    # flap, and the figures would be of a run that alerts all the time.
    return {"loss": 0.5 + 2.5 * math.exp(-3.0 * frac),
            "grad_norm": 1.0 + noise, "learning_rate": 1e-5, "entropy": 2.0 - frac + noise,
            "mean_token_accuracy": 0.5 + 0.4 * frac + noise, "num_tokens": step * 512.0,
            "epoch": 3.0 * frac, "reward": 0.1 + frac + noise, "kl": 0.02 + noise * 0.01,
            "reward_std": 0.3 + noise}[name]


def write_run(path: Path, events: int, per_step: int, *, iso: bool = False) -> None:
    """``events`` one-metric lines, ``per_step`` metrics a step of a healthy run, and one NaN
    loss three quarters in (so both sides raise an alert to compare)."""
    steps = events // per_step
    nan_step = steps * 3 // 4
    seed = 12345
    with open(path, "wb") as handle:
        buf: list[bytes] = []
        for step in range(1, steps + 1):
            seconds = step * 0.5
            when: Any = ((BASE + dt.timedelta(seconds=seconds)).isoformat(
                timespec="milliseconds").replace("+00:00", "Z") if iso
                else round(BASE.timestamp() + seconds, 3))
            for i in range(per_step):
                seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
                noise = (seed / 0x7FFFFFFF - 0.5) * 0.02
                value = _value(NAMES[i], step, steps, noise)
                buf.append(orjson.dumps({"time": when, "step": step, "name": NAMES[i],
                                         "value": "NaN" if i == 0 and step == nan_step
                                         else value}))
            if len(buf) >= 200_000:
                handle.write(b"\n".join(buf) + b"\n")
                buf = []
        if buf:
            handle.write(b"\n".join(buf) + b"\n")


GNU_TIME = shutil.which("time") and Path("/usr/bin/time")


def run(args: list[str], stdout: Any = subprocess.DEVNULL) -> tuple[int, float, float]:
    """Run ``trainguard ARGS``; (exit code, CPU seconds user + system, peak RSS MiB).

    Through GNU time when there is one: ``ru_maxrss`` from ``wait4`` of a child of this
    process counts this process's own pages, which the child had until its exec."""
    command = [sys.executable, "-m", "trainguard", *args]
    if GNU_TIME and GNU_TIME.exists():
        with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
            proc = subprocess.run([str(GNU_TIME), "-q", "-o", report.name, "-f", "%U %S %M",
                                   *command], stdout=stdout, stderr=subprocess.DEVNULL,
                                  check=False)
            user, system, rss_kib = report.read().split()[-3:]
        return proc.returncode, float(user) + float(system), int(rss_kib) / 1024
    proc = subprocess.Popen(command, stdout=stdout, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    return (os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime,
            float("nan"))  # no honest peak RSS without GNU time


def _keys(alerts: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(a["rule"], a["rank"], a["step"], a["state"], str(a["value"])) for a in alerts]


def best_of(args: list[str], repeat: int, outputs: tuple[Path, ...] = (),
            stdout: Path | None = None) -> tuple[int, float, float]:
    """:func:`run` ``repeat`` times: the exit code, the least CPU and the most peak RSS.
    ``outputs`` are removed before each run (a state or alerts file would be resumed)."""
    best: tuple[int, float, float] | None = None
    for _ in range(repeat):
        for p in outputs:
            p.unlink(missing_ok=True)
        if stdout is not None:
            with open(stdout, "wb") as handle:
                code, cpu, rss = run(args, stdout=handle)
        else:
            code, cpu, rss = run(args)
        best = (code, cpu, rss) if best is None else (code, min(best[1], cpu),
                                                      max(best[2], rss))
    assert best is not None
    return best


def compare(path: Path, events: int, tmp: Path, repeat: int = 1) -> dict[str, Any]:
    """check and monitor --once over one file."""
    out = tmp / "check.json"
    check_code, check_cpu, check_rss = best_of(["check", str(path), "--json"], repeat,
                                               stdout=out)
    alerts_file, state = tmp / "once_alerts.jsonl", tmp / "once_state.json"
    once_code, once_cpu, once_rss = best_of(["monitor", str(path), "--once", "-q", "--alerts",
                                             str(alerts_file), "--state", str(state)], repeat,
                                            outputs=(alerts_file, state))
    check_alerts = json.loads(out.read_text())[0]["alerts"]
    once_alerts = [json.loads(line) for line in alerts_file.read_text().splitlines()]
    for p in (out, alerts_file, state):
        p.unlink(missing_ok=True)
    return {"events": events,
            "check": {"exit": check_code, "cpu_s": round(check_cpu, 3),
                      "events_per_cpu_s": round(events / check_cpu), "peak_rss_mib":
                      round(check_rss, 1)},
            "monitor_once": {"exit": once_code, "cpu_s": round(once_cpu, 3),
                             "events_per_cpu_s": round(events / once_cpu), "peak_rss_mib":
                             round(once_rss, 1)},
            "alerts": len(check_alerts),
            "alerts_identical": _keys(check_alerts) == _keys(once_alerts)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--quick", action="store_true", help="100k events only")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each command; the "
                        "least CPU time is kept")
    args = parser.parse_args()
    repeat = max(1, args.repeat)
    import compileall

    import trainguard

    compileall.compile_dir(str(Path(trainguard.__file__).parent), quiet=1)
    sizes = [100_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench-check-"))
    results: dict[str, Any] = {"target_events_per_cpu_s": 1_000_000, "runs": []}
    try:
        for size in sizes:
            for per_step in (1, 10):
                path = tmp / f"run-{size}-{per_step}.jsonl"
                write_run(path, size, per_step)
                row = compare(path, size, tmp, repeat)
                row["metrics_per_step"] = per_step
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
                if size == sizes[0] and per_step == 1:
                    code, cpu, rss = best_of(["report", str(path), "-o", str(tmp / "r.html")],
                                             repeat)
                    results["report"] = {"events": size, "exit": code, "cpu_s": round(cpu, 3),
                                         "peak_rss_mib": round(rss, 1), "target_cpu_s": 5.0}
                    print(json.dumps({"report": results["report"]}), flush=True)
                path.unlink()
        iso = tmp / "iso.jsonl"
        write_run(iso, sizes[0], 1, iso=True)
        row = compare(iso, sizes[0], tmp, repeat)
        row["metrics_per_step"], row["time"] = 1, "iso-8601 strings"
        results["runs"].append(row)
        print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
