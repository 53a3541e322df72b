"""Train the detection evidence's cases (real TRL trainers, tiny offline model) and cache what a
user would have: each run's printed stdout, its stderr, both merged, and the run directory the
real ``TrainGuardCallback`` wrote.

    python benchmarks/detection_generate.py [--only NAME ...] [--fresh] [--cache DIR]

(both sets: the main cases and the held-out ones)

All cases train in this one process (torch, transformers and TRL are imported once), on one
torch thread. A case whose cache folder holds a ``meta.json`` for the same case definition and
TRL version is not trained again; ``--fresh`` retrains. The cache (default
``benchmarks/.cache/detection``, git-ignored) holds per case::

    NAME/stdout.txt    what `python train.py | ...` would pipe (the Trainer's log dicts)
    NAME/stderr.txt    warnings, progress bars, TRL's logger lines
    NAME/merged.txt    both, interleaved as `2>&1` would give them
    NAME/run/          events.rank0.jsonl + run_metadata.json from TrainGuardCallback
    NAME/meta.json     the case, its onset step, the logged records, CPU seconds, any error
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import shutil
import sys
import time
import traceback
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.detection_cases import CASES, HOLDOUT, Case, find_onset  # noqa: E402

__all__ = ["DEFAULT_CACHE", "case_signature", "generate", "load_meta"]

DEFAULT_CACHE = ROOT / "benchmarks" / ".cache" / "detection"


def case_signature(case: Case) -> str:
    """A hash of what the training depends on (trainer, failure, seed, steps, config, variant)
    and the trainer stack's versions: a cached run is reused while both are the same (a new
    onset finder or metric list re-scores without retraining)."""
    from importlib import metadata
    versions = [metadata.version(p) for p in ("trl", "transformers", "torch")]
    trained = {k: v for k, v in asdict(case).items()
               if k in ("trainer", "failure", "seed", "steps", "config", "variant")}
    blob = json.dumps([trained, versions], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_meta(folder: Path) -> dict[str, Any] | None:
    """A case folder's ``meta.json``, or None if it has none (not trained yet)."""
    path = folder / "meta.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


class _Tee(io.TextIOBase):
    """A text stream that writes to its own file and to the shared merged file."""

    def __init__(self, own: IO[str], merged: IO[str]) -> None:
        self._own, self._merged = own, merged

    def write(self, s: str) -> int:
        self._own.write(s)
        self._merged.write(s)
        return len(s)

    def flush(self) -> None:
        self._own.flush()
        self._merged.flush()

    def isatty(self) -> bool:
        return False


def _record_callback(records: list[tuple[int, dict[str, float]]]) -> Any:
    from transformers import TrainerCallback

    class Record(TrainerCallback):  # type: ignore[misc]
        """Keeps each training log dict at full precision, for the onset finders."""

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None,
                   **kwargs: Any) -> None:
            if not logs or "train_runtime" in logs:
                return
            records.append((int(state.global_step), {
                k: float(v) for k, v in logs.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}))

    return Record()


def train_case(case: Case, model_path: str, folder: Path) -> dict[str, Any]:
    """Train one case into ``folder`` (emptied first) and write its ``meta.json``."""
    import torch
    from transformers import set_seed

    from trainguard.emitters.trl import TrainGuardCallback

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    records: list[tuple[int, dict[str, float]]] = []
    error: str | None = None
    cpu0, wall0 = time.process_time(), time.perf_counter()
    torch.set_num_threads(1)
    set_seed(case.seed)
    with open(folder / "stdout.txt", "w", encoding="utf-8") as out, \
            open(folder / "stderr.txt", "w", encoding="utf-8") as err, \
            open(folder / "merged.txt", "w", encoding="utf-8") as merged:
        tee_out, tee_err = _Tee(out, merged), _Tee(err, merged)
        handler = logging.StreamHandler(tee_err)  # TRL's logger.warning lines, as a console shows
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            with contextlib.redirect_stdout(tee_out), contextlib.redirect_stderr(tee_err), \
                    warnings.catch_warnings():
                warnings.simplefilter("default")
                callbacks = [TrainGuardCallback(folder / "run"), _record_callback(records)]
                trainer = build_and_train(case, model_path, folder, callbacks)
                del trainer
        except Exception:  # noqa: BLE001 - a case that cannot train is reported, not fatal
            error = traceback.format_exc(limit=6)
        finally:
            root.removeHandler(handler)
    shutil.rmtree(folder / "out", ignore_errors=True)
    meta = {
        "case": asdict(case), "name": case.name, "signature": case_signature(case),
        "onset": find_onset(case, records) if not error else None,
        "logged_steps": len(records), "records": records, "error": error,
        "cpu_s": round(time.process_time() - cpu0, 2),
        "wall_s": round(time.perf_counter() - wall0, 2),
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return meta


def build_and_train(case: Case, model_path: str, folder: Path, callbacks: list[Any]) -> Any:
    """Build the case's trainer and train it (its logs go wherever stdout points now)."""
    from benchmarks.detection_cases import build_trainer
    trainer = build_trainer(case, model_path, str(folder / "out"), callbacks)
    trainer.train()
    return trainer


def _quiet_libraries() -> None:
    """Progress bars of datasets' map calls are noise in the stderr capture, not findings."""
    import datasets
    datasets.disable_progress_bars()


def generate(cases: list[Case], cache: Path, *, fresh: bool = False,
             log: IO[str] = sys.stderr) -> list[dict[str, Any]]:
    """Train every case of ``cases`` not cached yet under ``cache``; return every case's meta."""
    from examples.tiny_model import build_tiny_model
    cache.mkdir(parents=True, exist_ok=True)
    model_path = build_tiny_model(cache / "_model")
    _quiet_libraries()
    metas: list[dict[str, Any]] = []
    for i, case in enumerate(cases, 1):
        folder = cache / case.name
        meta = load_meta(folder)
        if fresh or meta is None or meta.get("signature") != case_signature(case):
            meta = train_case(case, model_path, folder)
            status = "ERROR" if meta["error"] else f"onset {meta['onset']}"
            print(f"[{i}/{len(cases)}] {case.name}: {meta['logged_steps']} steps, {status}, "
                  f"{meta['cpu_s']} s CPU", file=log, flush=True)
        elif not meta["error"]:
            # The training is the same; the onset finder and the metric list may not be.
            meta["case"] = asdict(case)
            meta["onset"] = find_onset(case, meta["records"])
        metas.append(meta)
    return metas


def main() -> int:
    """Train the chosen cases; exit 1 if any could not train."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="case names (or substrings)")
    parser.add_argument("--fresh", action="store_true", help="retrain cached cases")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()
    from benchmarks.detection_unseen import UNSEEN
    chosen = [c for c in (*CASES, *HOLDOUT, *UNSEEN)
              if args.only is None or any(o in c.name for o in args.only)]
    metas = generate(chosen, args.cache, fresh=args.fresh)
    errors = [m["name"] for m in metas if m["error"]]
    for name in errors:
        print(f"{name} could not train; see its meta.json", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
