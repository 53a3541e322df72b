"""Rule engine work in instructions per step (valgrind's callgrind): a count that another
process's load cannot move, for before/after comparisons on a shared machine.

    python benchmarks/bench_engine_ir.py --compare-git REV [--kinds grpo sft dpo]

For this tree, for revision ``REV`` (a temporary git worktree) and for this tree's engine on
``REV``'s rule packs, each trainer's default packs run one record at a time over the 30-metric
steps of ``bench_engine``, and GRPO's in batches of 250: instructions per step are
``(Ir(1500 steps) - Ir(500 steps)) / 1000``, so start-up and imports cancel out. About 10 CPU
minutes (valgrind runs Python some 50x slower). Needs ``valgrind`` on the PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_engine import KEYS, tree_with_packs  # noqa: E402

#: Runs the engine (the tree on PYTHONPATH) over N of bench_engine's steps, one record at a
#: time (batch 1) or in batches.
_DRIVER = """
import random, sys
import trainguard
from trainguard.monitor.engine.engine import Engine
from trainguard.rules.detect import DEFAULT_PACKS
from trainguard.rules.loader import load_rules
kind, n, batch, keys = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(",")
rng = random.Random(0)  # bench_engine's rows
rows = [{k: 1.0 + 0.05 * rng.random() - 0.0001 * step for k in keys} for step in range(n)]
records = [(0, s, m, float(s)) for s, m in enumerate(rows, 1)]
engine = Engine(load_rules(["common", DEFAULT_PACKS[kind]]), kind)
if batch == 1:
    for record in records:
        engine.evaluate(*record)
else:
    for i in range(0, n, batch):
        engine.evaluate_many(records[i:i + batch])
print("measured", trainguard.__file__)
"""

_COLLECTED = re.compile(r"Collected : (\d+)")


def instructions(tree: Path, kind: str, steps: int, batch: int) -> int:
    """Instructions callgrind counts for the driver over ``steps`` steps, with ``tree``."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    with tempfile.TemporaryDirectory() as cwd:  # not this tree: `-c` puts the cwd first
        done = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                               sys.executable, "-c", _DRIVER, kind, str(steps), str(batch),
                               ",".join(KEYS)], env=env, cwd=cwd, capture_output=True,
                              text=True, check=True)
    if f"measured {tree}" not in done.stdout:
        raise SystemExit(f"measured {done.stdout.strip()}, not {tree}")
    found = _COLLECTED.search(done.stderr)
    if found is None:
        raise SystemExit(f"no instruction count from valgrind: {done.stderr[-500:]}")
    return int(found.group(1))


def per_step(tree: Path, kind: str, batch: int) -> int:
    """Instructions per step, start-up cancelled out."""
    return (instructions(tree, kind, 1500, batch) - instructions(tree, kind, 500, batch)) // 1000


def main() -> None:
    """Print the three trees' instructions per step and their ratios as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare-git", metavar="REV", required=True)
    parser.add_argument("--kinds", nargs="*", default=["grpo", "sft", "dpo"])
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    specs = [(kind, 1) for kind in args.kinds] + [("grpo", 250)]
    result: dict[str, Any] = {"before": args.compare_git, "instructions_per_step": {}}
    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "rev"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q",
                        str(other), args.compare_git], check=True)
        try:
            trees = {"before": other, "after": ROOT,
                     "after_engine_before_packs": tree_with_packs(ROOT, other,
                                                                   Path(tmp) / "same")}
            for kind, batch in specs:
                counts = {name: per_step(tree, kind, batch) for name, tree in trees.items()}
                before = counts["before"]
                result["instructions_per_step"][f"{kind}, batch {batch}"] = {
                    **counts, "ratio": round(counts["after"] / before, 2),
                    "ratio_same_packs": round(counts["after_engine_before_packs"] / before, 2)}
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(other)], check=False)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
