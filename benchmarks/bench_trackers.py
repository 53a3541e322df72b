"""Reading tracker stores and verl's file logger: events per CPU second through the monitor.

Writes 5,000 steps of 10 scalars with each library (TensorBoard's SummaryWriter, MLflow's
client into SQLite, verl's file-logger format), then times ``Monitor.run(once=True)`` over it
(CPU time, ``common`` rules). Also the cost of the verl file-logger wrapper on canonical events
(a monitor started on an empty run directory keeps it for the session). Prints JSON.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import orjson

from trainguard.events import Record, encode_record
from trainguard.monitor.daemon import Monitor
from trainguard.monitor.ingest.formats import open_source_for
from trainguard.monitor.ingest.sources import DirectorySource
from trainguard.monitor.ingest.verl_file import VerlFileSource
from trainguard.rules.loader import load_rules

STEPS, KEYS = 5000, 10


def _rate(source: object) -> dict[str, float]:
    monitor = Monitor(source, load_rules(["common"]))  # type: ignore[arg-type]
    started = time.process_time()
    verdict = monitor.run(once=True)
    spent = time.process_time() - started
    source.close()  # type: ignore[attr-defined]
    return {"events": verdict.events, "cpu_s": round(spent, 3),
            "events_per_s": round(verdict.events / spent)}


def main() -> None:
    """Print the figures as one JSON object."""
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(root / "tb" / "run"))
        for step in range(STEPS):
            for k in range(KEYS):
                writer.add_scalar(f"train/m{k}", 0.1 * k, step)
        writer.close()
        out["tensorboard"] = _rate(open_source_for(str(root / "tb")).source)

        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        uri = f"sqlite:///{root / 'mlflow.db'}"
        client = MlflowClient(tracking_uri=uri)
        run = client.create_run(client.create_experiment("bench"))
        for step in range(STEPS):
            client.log_batch(run.info.run_id, metrics=[
                Metric(f"train/m{k}", 0.1 * k, 0, step) for k in range(KEYS)])
        out["mlflow_sqlite"] = _rate(open_source_for(uri).source)

        verl = root / "verl.jsonl"
        with verl.open("wb") as f:
            for step in range(STEPS):
                data = {f"actor/m{k}": (math.nan if k == 0 else 0.1 * k) for k in range(KEYS)}
                f.write(orjson.dumps({"step": step, "data": data}) + b"\n")
        out["verl_file"] = _rate(open_source_for(str(verl)).source)

        run_dir = root / "run"
        run_dir.mkdir()
        with (run_dir / "events.rank0.jsonl").open("wb") as f:
            for step in range(STEPS * 20):
                f.write(encode_record(Record(step, {f"m{k}": 0.1 * k for k in range(KEYS)}, 1.0)))
        out["canonical_dir_plain"] = _rate(DirectorySource(run_dir))
        out["canonical_dir_verl_wrapper"] = _rate(VerlFileSource(DirectorySource(run_dir)))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
