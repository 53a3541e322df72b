"""Plain trainer stdout: lines per CPU second through parse and normalization, one core.

    python benchmarks/bench_stdout.py [--lines 50000] [--quick]

Each case feeds the same physical lines through the auto-detecting parser that ``trainguard
monitor -`` and ``trainguard run`` use (``make_line_parser(None)``), or a named preset, then
through the ``trl`` field map, as the monitor does before the rules. Figures are lines per CPU
second (``time.process_time``), so a shared machine's load does not distort them:

* ``trl_dict``: a GRPO log dict as TRL 1.x prints it (27 keys, quoted 4-digit floats);
* ``trl_tqdm_merged``: the same behind a tqdm bar, its clear sequence and an ANSI cursor-up, as
  one physical line of stdout and stderr merged;
* ``trl_raw_floats``: the older unquoted-float form, SFT-sized (7 keys);
* ``prose``: a line that matches nothing (the cost of ignoring the trainer's chatter);
* ``verl``: a verl console line (20 pairs); ``user_re2``: a user's pattern through re2.
"""

from __future__ import annotations

import argparse
import json
import time

from trainguard.monitor.ingest.normalize import load_field_map
from trainguard.monitor.ingest.sources import Line
from trainguard.monitor.ingest.stdout import make_line_parser

GRPO_KEYS = [
    "loss", "grad_norm", "learning_rate", "num_tokens", "completions/mean_length",
    "completions/min_length", "completions/max_length", "completions/clipped_ratio",
    "completions/mean_terminated_length", "completions/min_terminated_length",
    "completions/max_terminated_length", "rewards/reward_len/mean", "rewards/reward_len/std",
    "reward", "reward_std", "frac_reward_zero_std", "kl", "entropy", "clip_ratio/low_mean",
    "clip_ratio/high_mean", "clip_ratio/region_mean", "clip_ratio/low_min",
    "clip_ratio/high_max", "step_time", "epoch", "rewards/reward_rand/mean",
    "rewards/reward_rand/std",
]


def _cases() -> dict[str, tuple[str | None, bytes]]:
    quoted = "{" + ", ".join(f"'{k}': '{0.1234 * (i + 1):.4g}'"
                             for i, k in enumerate(GRPO_KEYS)) + "}"
    bar = " 25%|\u2588\u2588\u258c       | 1/4 [00:02<00:06,  2.21s/it]"
    merged = f"\r{bar}\r{' ' * 45}\r\x1b[A{quoted}\r"
    raw = ("{'loss': 2.3456, 'grad_norm': 1.25, 'learning_rate': 5e-05, 'entropy': nan, "
           "'mean_token_accuracy': 0.5, 'num_tokens': 1234.0, 'epoch': 0.01}")
    verl = "(TaskRunner pid=1) step:12 - " + " - ".join(
        f"actor/metric_{i}:{0.01 * i}" for i in range(20))
    return {
        "trl_dict": (None, quoted.encode()),
        "trl_tqdm_merged": (None, merged.encode()),
        "trl_raw_floats": (None, raw.encode()),
        "prose": (None, b"Map: 100%|##########| 16/16 [00:00<00:00, 5109.16 examples/s] done"),
        "verl": (None, verl.encode()),
        "user_re2": (r"it (?P<step>\d+) loss (?P<loss>\S+) kl (?P<kl>\S+)",
                     b"2025-01-01 INFO it 12 loss 0.53 kl 0.01"),
    }


def _lines_per_cpu_second(regex: str | None, data: bytes, n: int) -> float:
    parser = make_line_parser(regex)
    field_map = load_field_map(["trl"])
    lines = [Line("out", i, data) for i in range(n)]
    start = time.process_time()
    for line in lines:
        result = parser(line)
        metrics = getattr(result, "metrics", None)
        if metrics is not None:
            field_map.apply(metrics)
    return n / (time.process_time() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--quick", action="store_true", help="5,000 lines per case")
    args = parser.parse_args()
    n = 5_000 if args.quick else args.lines
    results = {name: round(_lines_per_cpu_second(regex, data, n))
               for name, (regex, data) in _cases().items()}
    print(json.dumps({"lines_per_case": n, "unit": "lines per CPU second", **results}, indent=1))


if __name__ == "__main__":
    main()
