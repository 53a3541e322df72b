"""Hostile-input figures: peak memory with many rank files behind, CPU of an alert storm.

* ``files``: a finished run of N rank files, each with more than one read (1 MiB) of
  one-metric lines, read by ``trainguard monitor DIR --once``: peak RSS of the process
  (``ru_maxrss``). A poll reads at most 32 MiB across all files (ingest/sources.py), so the
  peak no longer grows with the number of files behind.
* ``storm``: 10,000 alerts (a rule that fires and resolves on every other step) with the
  state kept (a run directory): CPU seconds (user + system) of the monitor process. Each
  alert is one journal append, not a rewrite of the whole ledger.

``--code DIR`` runs another checkout (``git archive REV | tar -x -C DIR``) for a before/after.

    python benchmarks/bench_hostile.py files --files 4096 --mib 1.2 --keep /tmp/run4096
    python benchmarks/bench_hostile.py storm --alerts 10000
    python benchmarks/bench_hostile.py            # both, 512 files (make bench)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(args: list[str], code: str | None) -> tuple[int, float, float, float]:
    """Exit code, peak RSS (MiB), CPU seconds and wall seconds of the monitor process."""
    env = dict(os.environ)
    if code:
        env["PYTHONPATH"] = code
    started = time.monotonic()
    # cwd: ``python -m`` puts the working directory first on sys.path, before PYTHONPATH.
    proc = subprocess.Popen([sys.executable, "-m", "trainguard", *args], env=env,
                            cwd=tempfile.gettempdir(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    return (os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024,
            usage.ru_utime + usage.ru_stime, wall)


def _make_run(folder: Path, files: int, mib: float) -> int:
    line_count = 0
    per_file = int(mib * (1 << 20))
    for rank in range(files):
        lines = []
        size = 0
        step = 0
        while size < per_file:
            for name in ("loss", "grad_norm", "learning_rate", "kl"):
                line = json.dumps({"time": 1.0e9 + step, "step": step, "name": name,
                                   "value": 1.0 + (step % 7) / 10, "rank": rank}) + "\n"
                lines.append(line)
                size += len(line)
            step += 1
        (folder / f"events.rank{rank}.jsonl").write_text("".join(lines))
        line_count += len(lines)
    return line_count


def bench_files(files: int, mib: float, code: str | None, keep: str | None = None) -> None:
    """Peak RSS of ``--once`` over ``files`` rank files of ``mib`` MiB each (generated into
    ``keep`` once and reused, when given: 4,096 files take minutes to write)."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(keep) if keep else Path(tmp) / "run"
        if not (run / f"events.rank{files - 1}.jsonl").exists():
            run.mkdir(parents=True, exist_ok=True)
            _make_run(run, files, mib)
        lines = sum(p.read_bytes().count(b"\n") for p in run.glob("*.jsonl"))
        state = Path(tmp) / "state.json"
        rc, rss, cpu, wall = _run(["monitor", str(run), "--once", "-q", "-r", "common",
                                   "--state", str(state), "--alerts",
                                   str(Path(tmp) / "alerts.jsonl")], code)
        print(f"files={files} MiB/file={mib} lines={lines} rc={rc} peak_rss_mib={rss:.0f} "
              f"cpu_s={cpu:.1f} wall_s={wall:.1f}")


def bench_storm(alerts: int, code: str | None) -> None:
    """CPU of a session that raises ``alerts`` alerts with its state kept."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        run.mkdir()
        with open(run / "events.jsonl", "w") as handle:
            for step in range(alerts):
                value = 2.0 if step % 2 == 0 else 0.0
                handle.write(json.dumps({"step": step, "metrics": {"storm": value}}) + "\n")
        rc, rss, cpu, wall = _run(["monitor", str(run), "--once", "-q", "-r", "common",
                                   "--alert", "storm > 1 -> high: storm"], code)
        raised = len((run / "alerts.jsonl").read_text().splitlines())
        print(f"alerts_written={raised} rc={rc} cpu_s={cpu:.2f} wall_s={wall:.2f} "
              f"peak_rss_mib={rss:.0f}")
        shutil.rmtree(run, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", choices=["files", "storm", "both"], default="both",
                        help="both (what make bench runs): storm, then files")
    parser.add_argument("--files", type=int, default=512)
    parser.add_argument("--mib", type=float, default=1.2)
    parser.add_argument("--alerts", type=int, default=10_000)
    parser.add_argument("--code", default=None, help="another checkout to run instead")
    parser.add_argument("--keep", default=None, help="generate the run here once, reuse it")
    ns = parser.parse_args()
    if ns.what in ("storm", "both"):
        bench_storm(ns.alerts, ns.code)
    if ns.what in ("files", "both"):
        bench_files(ns.files, ns.mib, ns.code, ns.keep)


if __name__ == "__main__":
    main()
