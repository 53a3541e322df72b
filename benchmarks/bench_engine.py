"""Rule engine speed: microseconds per step with the default packs at 30 metrics per step, and
end-to-end ``trainguard monitor --once`` throughput on one-metric-per-line events.

    python benchmarks/bench_engine.py [--quick] [--steps 20000] [--events 1000000]
                                      [--small 100000]
    python benchmarks/bench_engine.py --compare-git REV [--steps 2000] [--rounds 5]

All figures are CPU time (``time.process_time`` in process; ``wait4`` rusage for the CLI run), so
a shared machine's load does not distort them. Peak RSS of the CLI run is reported for the full
and the small input: flat memory means they are close.

"Default packs" are what ``trainguard monitor`` applies with no ``--rules``: ``common`` plus the
pack of the trainer it detects from the keys. The engine figures use each trainer's default
packs (and, for comparison, every built-in pack at once); the CLI runs pass no ``--rules``, with
GRPO keys (detected: common + grpo_safe) at 10 metrics per step, and ``loss`` alone (common) at
one metric per step, where every event is a step. ``source_read`` is the CPU the file source
alone spends delivering the same lines, to split the end-to-end figure between reading and the
monitor core (parse, step grouping, rules).

``--compare-git REV`` measures the engine figures of this tree and of revision ``REV`` (checked
out as a temporary git worktree, each run with ``PYTHONPATH`` at its tree), in turns, in the
same run, and prints both and their ratio: the before/after of an engine change on a machine
that others load. With ``--same-packs`` this tree's engine runs ``REV``'s rule packs: the
engines compared on the same rules, apart from what the rules added since cost.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from trainguard.monitor.engine.engine import Engine
from trainguard.rules.loader import builtin_pack_names, load_rules

#: Keys TRL trainers log, padded to 30 with generic ones.
KEYS = ["loss", "grad_norm", "learning_rate", "epoch", "entropy", "num_tokens",
         "mean_token_accuracy", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
         "rewards/margins", "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected",
         "kl", "reward", "reward_std", "frac_reward_zero_std", "completions/mean_length",
         "completions/clipped_ratio", "clip_ratio/region_mean", "clip_ratio/low_mean",
         "clip_ratio/high_mean", "step_time", "importance_sampling_ratio", "nll_loss",
         "completions/max_length", "completions/min_length", "objective/entropy"]


def _series(steps: int, names: list[str]) -> list[dict[str, float]]:
    rng = random.Random(0)
    return [{n: 1.0 + 0.05 * rng.random() - 0.0001 * step for n in names} for step in range(steps)]


def _us_per_step(packs: list[str], trainer: str | None, rows: list[dict[str, float]],
                 repeats: int = 3, batch: int = 1) -> tuple[int, float]:
    """(rules applied, best-of-``repeats`` CPU microseconds per step) on a fresh engine, fed
    one record at a time (``batch`` 1: following a live run) or ``batch`` records per call
    (a backlog or a finished run: rules with a batch form run once per batch)."""
    best = math.inf
    rules = 0
    records = [(0, step, metrics, float(step)) for step, metrics in enumerate(rows, 1)]
    for _ in range(repeats):
        engine = Engine(load_rules(packs), trainer)
        rules = len(engine.rules)
        start = time.process_time()
        if batch == 1:
            for record in records:
                engine.evaluate(*record)
        else:
            for i in range(0, len(records), batch):
                engine.evaluate_many(records[i:i + batch])
        best = min(best, time.process_time() - start)
    return rules, round(best / len(rows) * 1e6, 2)


def bench_engine(steps: int) -> dict[str, Any]:
    """Microseconds (CPU) per 30-metric step: each trainer's default packs, and all packs."""
    from trainguard.rules.detect import DEFAULT_PACKS

    rows = _series(steps, KEYS)
    result: dict[str, Any] = {"metrics_per_step": len(KEYS), "steps": steps}
    for kind in ("sft", "dpo", "grpo"):
        packs = ["common", DEFAULT_PACKS[kind]]
        rules, us = _us_per_step(packs, kind, rows)
        _, batched = _us_per_step(packs, kind, rows, batch=_BATCH)
        result[f"default_{kind}"] = {"packs": ",".join(packs), "rules": rules, "us_per_step": us,
                                     f"us_per_step_batches_of_{_BATCH}": batched}
    rules, us = _us_per_step(builtin_pack_names(), None, rows)
    _, batched = _us_per_step(builtin_pack_names(), None, rows, batch=_BATCH)
    result["all_packs"] = {"rules": rules, "us_per_step": us,
                           f"us_per_step_batches_of_{_BATCH}": batched}
    return result


#: Records per call in the batched figures: about what one 1 MiB read of a file holds.
_BATCH = 2000


def bench_engine_one_metric(steps: int) -> dict[str, float]:
    """Microseconds (CPU) per one-metric step (``loss`` only, common): the per-event floor."""
    rows = [{"loss": 1.0 + 0.01 * (step % 7)} for step in range(steps)]
    rules, us = _us_per_step(["common"], None, rows)
    _, batched = _us_per_step(["common"], None, rows, batch=_BATCH)
    return {"steps": steps, "rules": rules, "us_per_step": us,
            f"us_per_step_batches_of_{_BATCH}": batched}


def bench_alias_bomb(tmp: Path, levels: int = 30) -> dict[str, float]:
    """CPU milliseconds to refuse a billion-laughs rule file (T28 target: < 100 ms)."""
    from trainguard.exceptions import ConfigError
    from trainguard.rules.loader import load_pack

    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    path = tmp / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    start = time.process_time()
    try:
        load_pack(str(path))
        refused = False
    except ConfigError:
        refused = True
    return {"levels": levels, "refused": refused,
            "cpu_ms": round((time.process_time() - start) * 1e3, 1)}


def bench_monitor_in_process(events: int, small: int, names: list[str]) -> dict[str, float]:
    """Parser + step grouping + engine fed in 10,000-line chunks (no source): events per CPU
    second and RSS after ``small`` and ``events`` events, to separate the core's memory from
    the sources' (which read a whole file in one poll)."""
    import psutil

    from trainguard.monitor.daemon import Monitor
    from trainguard.monitor.ingest.sources import Line

    class _NoSource:
        exhausted = True

        def poll(self) -> list[Line]:
            return []

        def problems(self) -> list[str]:
            return []

    # The packs the CLI ends up with on these (GRPO) keys: common + grpo_safe.
    monitor = Monitor(_NoSource(), load_rules(["common", "grpo_safe"]))  # type: ignore[arg-type]
    proc = psutil.Process()
    rss: dict[str, float] = {}
    n, step, cpu = 0, 0, 0.0
    while n < events:
        chunk = []
        while len(chunk) < 10_000:
            step += 1
            for name in names:
                n += 1
                value = _LEVELS.get(name, 1.0)
                chunk.append(Line("bench", n, f'{{"time":{step}.0,"step":{step},"name":"{name}",'
                                              f'"value":{value}}}'.encode()))
        start = time.process_time()
        monitor.process(chunk)
        cpu += time.process_time() - start
        if n in (small, events):
            rss[f"rss_mib_after_{n}"] = round(proc.memory_info().rss / 2**20, 1)
    return {"events": n, "events_per_cpu_s": round(n / cpu), **rss}


#: Typical levels of a healthy run, so the stream raises no alert (an alert storm would measure
#: the sinks, not the monitor); other names sit at 1.
_LEVELS = {"loss": 0.5, "learning_rate": 1e-5, "reward": 0.5, "reward_std": 0.3,
           "frac_reward_zero_std": 0.1, "kl": 0.05, "completions/clipped_ratio": 0.1,
           "num_tokens": 1e6}


def _write_events(path: Path, events: int, names: list[str]) -> None:
    """One metric per line, as a stdout parser or a per-metric logger writes them."""
    now = 1.7e9
    with open(path, "w", buffering=1 << 20) as handle:
        step = 0
        written = 0
        while written < events:
            step += 1
            for name in names:
                value = _LEVELS.get(name, 1.0) * (1.0 + 0.01 * math.sin(step * 0.1 + len(name)))
                handle.write(f'{{"time":{now + step:.3f},"step":{step},"name":"{name}",'
                             f'"value":{value:.6f}}}\n')
                written += 1
                if written == events:
                    break


def bench_source_read(path: Path) -> float:
    """CPU seconds the file source alone spends delivering every line of ``path``, as the
    monitor takes them (blocks of raw lines, ``poll_blocks``)."""
    from trainguard.monitor.ingest.sources import FileSource

    source = FileSource(path)
    start = time.process_time()
    try:
        while source.poll_blocks():
            pass
    finally:
        source.close()
    return time.process_time() - start


def bench_cli(events: int, names: list[str], tmp: Path, repeat: int = 1) -> dict[str, float]:
    """CPU seconds, events per CPU second and peak RSS of ``trainguard monitor FILE --once``
    (no ``--rules``: the default packs), and the file source's share of the CPU; the least CPU
    of ``repeat`` runs, since on a shared machine other load only ever adds to it."""
    path = tmp / f"events_{events}_{len(names)}.jsonl"
    _write_events(path, events, names)
    cmd = [sys.executable, "-m", "trainguard", "monitor", str(path), "--once", "--quiet",
           "--alerts", str(tmp / "alerts.jsonl")]
    # As an installed package runs: bytecode cached (this environment may set
    # PYTHONDONTWRITEBYTECODE, which would recompile our modules on every start) and the
    # built-in pack cache warm; the warm-up run fills both.
    env = dict(os.environ, PYTHONPYCACHEPREFIX=str(tmp / "pycache"),
               TRAINGUARD_CACHE_DIR=str(tmp / "pack-cache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    warm = tmp / "warm-up.jsonl"
    _write_events(warm, 200, names)
    subprocess.run([*cmd[:4], str(warm), *cmd[5:]], env=env, capture_output=True, check=False)
    runs = []
    for _ in range(repeat):
        # Through a small launcher: Linux carries the RSS high-water mark of the memory a child
        # was forked with across exec, so forking the CLI from this (large) process would report
        # this process's RSS as the CLI's peak.
        launched = subprocess.run([sys.executable, "-c", _LAUNCHER, *cmd], env=env,
                                  capture_output=True, text=True, check=True)
        runs.append(json.loads(launched.stdout))
    usage = min(runs, key=lambda u: u["cpu_s"])
    cpu = usage["cpu_s"]
    source_cpu = min(bench_source_read(path) for _ in range(repeat))
    path.unlink()
    return {"events": events, "metric_names": len(names), "exit": usage["exit"],
            "cpu_s": round(cpu, 2), "events_per_cpu_s": round(events / cpu),
            "source_read_cpu_s": round(source_cpu, 2),
            "peak_rss_mib": round(usage["maxrss_kib"] / 1024, 1)}


#: Runs argv[1:] and prints its exit code, CPU seconds and peak RSS (``wait4`` rusage).
_LAUNCHER = """
import json, os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(proc.pid, 0)
print(json.dumps({"exit": os.waitstatus_to_exitcode(status),
                  "cpu_s": usage.ru_utime + usage.ru_stime, "maxrss_kib": usage.ru_maxrss}))
"""


#: GRPO's keys, 10 per step: the monitor detects grpo and applies common + grpo_safe.
_GRPO_NAMES = ["loss", "grad_norm", "learning_rate", "entropy", "num_tokens", "reward",
               "reward_std", "frac_reward_zero_std", "kl", "completions/clipped_ratio"]


def engine_figures(steps: int) -> dict[str, Any]:
    """The engine's figures alone (``--engine-only``), with the path of the trainguard measured."""
    import trainguard

    return {"trainguard": trainguard.__file__, "engine": bench_engine(steps),
            "engine_1_metric": bench_engine_one_metric(steps * 5)}


def _figures(result: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric figures of ``engine_figures`` by a dotted name (``engine.default_sft...``)."""
    out: dict[str, float] = {}
    for key, value in result.items():
        if isinstance(value, dict):
            out.update(_figures(value, f"{prefix}{key}."))
        elif key.startswith("us_per_step"):
            out[prefix + key] = value
    return out


def tree_with_packs(root: Path, packs_from: Path, into: Path) -> Path:
    """A copy of ``root``'s package with the rule packs (and their rule tests) of the tree
    ``packs_from``: this engine on that revision's rules."""
    shutil.copytree(root / "trainguard", into / "trainguard",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for folder in ("packs", "tests"):
        shutil.rmtree(into / "trainguard" / "rules" / folder)
        shutil.copytree(packs_from / "trainguard" / "rules" / folder,
                        into / "trainguard" / "rules" / folder)
    return into


def compare_git(rev: str, steps: int, rounds: int, same_packs: bool = False) -> dict[str, Any]:
    """The engine figures of this tree and of git revision ``rev`` (a temporary worktree),
    measured in turns, ``rounds`` times each, in the same run: the least CPU of each figure
    (another process's load only ever adds), and after / before. ``same_packs``: this tree's
    engine runs ``rev``'s rule packs, so the two engines do the same work (the engine's own
    speed, apart from what rules added since ``rev`` cost)."""
    root = Path(__file__).resolve().parent.parent
    here = Path(__file__).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "rev"
        subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", "-q", str(other),
                        rev], check=True)
        try:
            after = tree_with_packs(root, other, Path(tmp) / "after") if same_packs else root
            trees = {"before": other, "after": after}
            best: dict[str, dict[str, float]] = {"before": {}, "after": {}}
            for turn in range(rounds):
                for name in (("before", "after") if turn % 2 == 0 else ("after", "before")):
                    env = dict(os.environ, PYTHONPATH=str(trees[name]))
                    run = subprocess.run([sys.executable, str(here), "--engine-only",
                                          "--steps", str(steps)], env=env, cwd=tmp,
                                         capture_output=True, text=True, check=True)
                    result = json.loads(run.stdout)
                    if not result["trainguard"].startswith(str(trees[name])):
                        raise SystemExit(f"measured {result['trainguard']}, not {trees[name]}")
                    for key, value in _figures(result).items():
                        best[name][key] = min(best[name].get(key, math.inf), value)
        finally:
            subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(other)],
                           check=False)
    return {"before": rev, "same_packs": same_packs, "rounds": rounds, "steps": steps,
            "us_per_step": {
        key: {"before": best["before"][key], "after": value,
              "ratio": round(value / best["before"][key], 2)}
        for key, value in best["after"].items() if key in best["before"]}}


def main() -> None:
    """Run every figure and print them as JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true",
                        help="small inputs (about 15 s): a smoke run, not the reported figures")
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3, help="CLI runs per figure (least CPU)")
    parser.add_argument("--engine-only", action="store_true",
                        help="only the engine figures (us per step), and which trainguard ran")
    parser.add_argument("--compare-git", metavar="REV",
                        help="the engine figures of this tree against git revision REV (built "
                             "as a temporary worktree), measured in turns in one run")
    parser.add_argument("--same-packs", action="store_true",
                        help="with --compare-git: this tree's engine on REV's rule packs")
    parser.add_argument("--rounds", type=int, default=5,
                        help="turns of each tree with --compare-git (least CPU of each figure)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.events, args.small, args.repeat = 2_000, 100_000, 20_000, 1
    if args.engine_only:
        print(json.dumps(engine_figures(args.steps)))
        return
    if args.compare_git:
        print(json.dumps(compare_git(args.compare_git, args.steps, args.rounds,
                                     args.same_packs), indent=1))
        return
    tmp = Path(tempfile.mkdtemp())
    result = {
        "engine": bench_engine(args.steps),
        "engine_1_metric": bench_engine_one_metric(args.steps * 5),
        "alias_bomb": bench_alias_bomb(tmp),
        "monitor_core_in_process": bench_monitor_in_process(args.events, args.small,
                                                            _GRPO_NAMES),
        "cli_10_metrics_per_step": bench_cli(args.events, _GRPO_NAMES, tmp, args.repeat),
        "cli_10_metrics_per_step_small": bench_cli(args.small, _GRPO_NAMES, tmp, args.repeat),
        "cli_1_metric_per_step": bench_cli(args.events, ["loss"], tmp, args.repeat),
        "cli_1_metric_per_step_small": bench_cli(args.small, ["loss"], tmp, args.repeat),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
