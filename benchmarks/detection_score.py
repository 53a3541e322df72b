"""Score the cached detection cases as a user sees them, through the real ``trainguard`` CLI.

Modes (each a subprocess of ``python -m trainguard``, no flags beyond the source and --once):

    stdout   the Trainer's printed log dicts piped in: ``trainguard monitor - --once``
    merged   stdout and stderr together (``2>&1``), piped the same way
    rundir   the callback's run directory: ``trainguard monitor RUN --once`` (on a copy, so
             the cache keeps no alerts or state of an earlier scoring)
    flags    stdout piped from a live process whose command line carries the case's config as
             the HfArgumentParser flags a TRL script takes (``--learning_rate 0.001
             --warmup_steps 100000 --max_steps 20``): ``python train.py ARGS | trainguard
             monitor - --once``, where the monitor finds its stdin's writer (a process that
             replays the cached stdout and lives until the monitor ends)

An alert *catches* a broken case when it is high or critical, fires within 5 logged steps of
the case's onset, and names one of the case's metrics: its ``metric`` (from ``alerts.jsonl`` for
a run directory; for stdin, from the console's rule id looked up in the loaded rule packs), or
failing that one of the metrics named in its message. A healthy case has a false alarm when any
high or critical alert fires.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

__all__ = ["MODES", "WITHIN", "CaseScore", "Row", "case_flags", "parse_console", "score_case",
           "table_rows"]

MODES = ("stdout", "merged", "rundir", "flags")
WITHIN = 5
SERIOUS = frozenset({"high", "critical"})
_HEAD = re.compile(r"^\s*(INFO|LOW|MEDIUM|HIGH|CRITICAL)\s+(\S+)\s+step\s+(-?\d+)")
_WHAT = re.compile(r"^\s*what:\s*(.*)$")


@dataclass
class Said:
    """One alert as the monitor reported it."""

    severity: str
    rule: str
    step: int
    metric: str
    message: str

    def short(self) -> str:
        """``rule@step(severity, metric)``."""
        return f"{self.rule}@{self.step}({self.severity}, {self.metric})"


@dataclass
class ModeResult:
    """What one mode's monitor run said about one case."""

    exit_code: int
    alerts: list[Said] = field(default_factory=list)
    problem: str = ""


@dataclass
class CaseScore:
    """A case's outcome in one mode."""

    name: str
    trainer: str
    failure: str | None
    onset: int | None
    mode: str
    result: ModeResult
    hit: Said | None = None

    @property
    def healthy(self) -> bool:
        """A run without a fault."""
        return self.failure is None

    @property
    def delay(self) -> int | None:
        """Logged steps from the onset to the catching alert."""
        if self.hit is None or self.onset is None:
            return None
        return self.hit.step - self.onset

    @property
    def caught(self) -> bool:
        """Caught within :data:`WITHIN` logged steps of the onset."""
        delay = self.delay
        return delay is not None and delay <= WITHIN

    @property
    def false_alarms(self) -> list[Said]:
        """High/critical alerts on a healthy run."""
        return [a for a in self.result.alerts if a.severity in SERIOUS] if self.healthy else []


def _rule_metrics() -> dict[str, str]:
    """Rule id -> metric, over every built-in pack (the console prints only the id)."""
    from trainguard.rules.loader import builtin_pack_names, load_pack
    out: dict[str, str] = {}
    for pack in builtin_pack_names():
        try:
            for compiled in load_pack(pack):
                out[compiled.rule.id] = compiled.rule.metric
        except Exception:  # noqa: BLE001, S112 - a pack that does not load names no metric
            continue
    return out


def parse_console(text: str, metrics: Mapping[str, str]) -> list[Said]:
    """The alerts in the monitor's console output (its stderr): one head line each
    (``SEVERITY rule step N``) followed by ``what: message``."""
    out: list[Said] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        head = _HEAD.match(line)
        if not head:
            continue
        message = ""
        if i + 1 < len(lines):
            what = _WHAT.match(lines[i + 1])
            message = what.group(1) if what else ""
        rule = head.group(2)
        out.append(Said(head.group(1).lower(), rule, int(head.group(3)),
                        metrics.get(rule, ""), message))
    return out


def _monitor(args: list[str], stdin: Path | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.setdefault("COLUMNS", "200")  # the console wraps long messages at the terminal width
    with open(stdin, "rb") if stdin else open(os.devnull, "rb") as feed:
        return subprocess.run([sys.executable, "-m", "trainguard", "monitor", *args, "--once"],
                              stdin=feed, capture_output=True, text=True, env=env,
                              timeout=300, check=False)


#: The trainer of the ``flags`` mode: writes the cached stdout, then lives on until its reader
#: (the monitor) has taken every byte from the pipe (FIONREAD on the write end reads 0) and a
#: moment more, as a trainer outlives its logs; then ends, so ``--once`` sees the end of input.
_REPLAY = """
import fcntl, struct, sys, termios, time
sys.stdout.buffer.write(open(sys.argv[1], 'rb').read())
sys.stdout.flush()
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    left = struct.unpack('i', fcntl.ioctl(1, termios.FIONREAD, bytes(4)))[0]
    if not left:
        break
    time.sleep(0.02)
time.sleep(0.3)
"""


def case_flags(case: Mapping[str, Any]) -> list[str]:
    """The command-line flags a TRL script would take for ``case``'s config (and its length)."""
    config = {**case["config"], "max_steps": case["steps"]}
    return [part for key, value in config.items() for part in (f"--{key}", str(value))]


def _piped(stdout: Path, flags: list[str]) -> subprocess.CompletedProcess[str]:
    """``replay STDOUT FLAGS | trainguard monitor - --once``, both children of this process
    (one process group, as a shell's pipeline)."""
    env = dict(os.environ)
    env.setdefault("COLUMNS", "200")
    writer = subprocess.Popen([sys.executable, "-c", _REPLAY, str(stdout), *flags],
                              stdout=subprocess.PIPE)
    assert writer.stdout is not None
    try:
        monitor = subprocess.Popen([sys.executable, "-m", "trainguard", "monitor", "-",
                                    "--once"], stdin=writer.stdout, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=env)
        writer.stdout.close()  # the monitor's copy is the pipe's only reader now
        out, err = monitor.communicate(timeout=300)
    finally:
        writer.kill()
        writer.wait()
    return subprocess.CompletedProcess(monitor.args, monitor.returncode, out, err)


def run_mode(folder: Path, mode: str, metrics: Mapping[str, str],
             case: Mapping[str, Any] | None = None) -> ModeResult:
    """Run the monitor on one cached case in one mode (``flags`` needs the ``case``)."""
    if mode in ("stdout", "merged", "flags"):
        if mode == "flags":
            assert case is not None, "the flags mode needs the case's config"
            done = _piped(folder / "stdout.txt", case_flags(case))
        else:
            done = _monitor(["-"], folder / f"{mode}.txt")
        alerts = parse_console(done.stderr, metrics)
    else:
        with tempfile.TemporaryDirectory(prefix="trainguard-score-") as tmp:
            run = Path(tmp) / "run"
            shutil.copytree(folder / "run", run)
            done = _monitor([str(run)], None)
            alerts = []
            path = run / "alerts.jsonl"
            if path.exists():
                for line in path.read_text(encoding="utf-8").splitlines():
                    obj = json.loads(line)
                    if obj.get("state") != "firing":
                        continue
                    alerts.append(Said(obj["severity"], obj["rule"], int(obj["step"]),
                                       obj.get("metric") or metrics.get(obj["rule"], ""),
                                       obj.get("message", "")))
    problem = ""
    if done.returncode not in (0, 2):
        problem = (done.stderr or done.stdout).strip()[-600:]
    return ModeResult(done.returncode, alerts, problem)


def _names_metric(alert: Said, wanted: Iterable[str]) -> bool:
    wanted = tuple(wanted)
    if alert.metric:
        return alert.metric in wanted
    return any(re.search(rf"(?<![\w/]){re.escape(m)}(?![\w/])", alert.message) for m in wanted)


def score_case(meta: Mapping[str, Any], folder: Path, mode: str,
               metrics: Mapping[str, str]) -> CaseScore:
    """Score one cached case in one mode."""
    case = meta["case"]
    result = run_mode(folder, mode, metrics, case)
    score = CaseScore(meta["name"], case["trainer"], case["failure"], meta["onset"], mode, result)
    if not score.healthy and score.onset is not None:
        hits = [a for a in result.alerts
                if a.severity in SERIOUS and _names_metric(a, case["metrics"])]
        # The earliest naming alert at or after the onset; one before it is counted too (the
        # onset finders look for an unmistakable sign, a rule may see the start of it).
        score.hit = min(hits, key=lambda a: a.step) if hits else None
    return score


@dataclass
class Row:
    """One trainer's line of the table, in one mode."""

    trainer: str
    broken: int = 0
    caught: int = 0
    healthy: int = 0
    false_runs: int = 0
    delays: list[int] = field(default_factory=list)

    @property
    def median_delay(self) -> float | None:
        """Median logged steps from onset to the catching alert, over runs with a hit."""
        return statistics.median(self.delays) if self.delays else None


def table_rows(scores: Sequence[CaseScore], trainers: Sequence[str]) -> list[Row]:
    """Per trainer, then ``all``: broken runs caught within 5 of those broken, healthy runs with
    a false high/critical alert, median delay."""
    rows = {t: Row(t) for t in trainers}
    total = Row("all")
    for s in scores:
        for row in (rows.setdefault(s.trainer, Row(s.trainer)), total):
            if s.healthy:
                row.healthy += 1
                row.false_runs += bool(s.false_alarms)
                continue
            row.broken += 1
            row.caught += s.caught
            if s.delay is not None:
                row.delays.append(s.delay)
    return [*rows.values(), total]
