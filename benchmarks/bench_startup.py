"""Start-up cost of the CLI (CPU seconds of the child process, best of N, printed as JSON).

* ``monitor_once_s``: ``trainguard monitor F --once --quiet`` on a 10-line TRL SFT file with the
  default packs and the trainer auto-detected (the fixed cost of every CI gate and every
  end-to-end throughput figure);
* ``monitor_once_cold_cache_s``: the same with an empty rule-pack cache (the first start after
  an install or an edit of a pack: the packs' YAML is parsed, then cached);
* ``monitor_once_no_bytecode_s``: the same with ``PYTHONDONTWRITEBYTECODE=1``, as in a
  checkout where bytecode is never written: trainguard's modules are compiled from source on
  every start (the libraries keep their installed bytecode; so would trainguard's own
  ``__pycache__`` if one were there);
* ``help_s``: ``trainguard --help``;
* ``rules_list_s``: ``trainguard rules list`` (every built-in pack loaded);
* ``python_s``: ``python -c pass``, the interpreter's own floor.

Bytecode goes to a temporary ``PYTHONPYCACHEPREFIX`` and the pack cache to a temporary
``TRAINGUARD_CACHE_DIR``; one warm-up run fills both. CPU time is user + system of the child,
read from ``os.wait4``'s rusage. ``--n`` sets the runs per figure (default 7; ``--quick``: 3).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _cpu_seconds(argv: list[str], env: dict[str, str]) -> float:
    """User + system CPU seconds of one run of ``argv`` (its output discarded)."""
    # cwd=ROOT: `python -m` puts the working directory first on sys.path, so this is the code
    # measured whichever directory the benchmark is started from.
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 2):
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}")
    return usage.ru_utime + usage.ru_stime


def _best(argv: list[str], env: dict[str, str], n: int) -> float:
    return min(_cpu_seconds(argv, env) for _ in range(n))


def _write_events(path: Path, steps: int = 10) -> None:
    """Canonical JSONL as TRL's SFTTrainer logs it (so auto-detection adds the sft pack)."""
    with path.open("w", encoding="utf-8") as handle:
        for step in range(1, steps + 1):
            metrics = {"loss": 3.6 - 0.01 * step, "grad_norm": 2.9, "learning_rate": 1e-3,
                       "entropy": 3.62, "mean_token_accuracy": 0.0, "num_tokens": 11.0 * step,
                       "epoch": step / 8}
            handle.write(json.dumps({"time": 1.7e9 + step, "step": step,
                                     "metrics": metrics}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=7, help="runs per figure (best is kept)")
    parser.add_argument("--quick", action="store_true", help="3 runs per figure")
    args = parser.parse_args()
    n = 3 if args.quick else args.n
    cli = [sys.executable, "-m", "trainguard"]
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        env["TRAINGUARD_CACHE_DIR"] = str(Path(tmp) / "cache")
        events = Path(tmp) / "events.jsonl"
        _write_events(events)
        monitor_cmd = [*cli, "monitor", str(events), "--once", "--quiet"]
        _cpu_seconds(monitor_cmd, env)  # warm-up: fills the bytecode and pack caches
        cold = min(_cpu_seconds(monitor_cmd, dict(env, TRAINGUARD_CACHE_DIR=f"{tmp}/cold{i}"))
                   for i in range(n))
        monitor = _best(monitor_cmd, env, n)
        help_s = _best([*cli, "--help"], env, n)
        rules_list = _best([*cli, "rules", "list"], env, n)
        no_bytecode = dict(env, PYTHONDONTWRITEBYTECODE="1")
        no_bytecode.pop("PYTHONPYCACHEPREFIX")
        monitor_source = _best(monitor_cmd, no_bytecode, n)
    python_s = _best([sys.executable, "-c", "pass"], env, n)
    print(json.dumps({"bench": "startup", "runs": n, "monitor_once_s": round(monitor, 3),
                      "monitor_once_cold_cache_s": round(cold, 3),
                      "monitor_once_no_bytecode_s": round(monitor_source, 3),
                      "help_s": round(help_s, 3), "rules_list_s": round(rules_list, 3),
                      "python_s": round(python_s, 3)}))


if __name__ == "__main__":
    main()
