"""`trainguard convert SOURCE -o OUT.jsonl` end to end through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli
from trainguard.events import Record, parse_line
from trainguard.monitor.convert import convert

DATA = Path(__file__).resolve().parent / "data"


def _read(path: Path) -> list[Record]:
    out = []
    for text in path.read_text().splitlines():
        record = parse_line(text)
        assert isinstance(record, Record), text
        out.append(record)
    return out


def test_convert_trl_stdout_capture_writes_one_canonical_event_per_log(tmp_path: Path):
    """A captured TRL run (bars, ANSI, eval and summary dicts) becomes step-per-line events."""
    out = tmp_path / "events.jsonl"
    result = run_cli("convert", str(DATA / "trl_sft_merged.txt"), "-o", str(out))
    assert 0 == result.returncode, result.stderr.decode()
    records = _read(out)
    assert [(1, "train"), (2, "train"), (2, "eval"), (3, "train"), (4, "train"), (4, "eval"),
            (4, "summary")] == [(r.step, r.kind) for r in records]
    assert 3.619 == records[0].metrics["loss"]
    assert "7 steps" in result.stderr.decode() and "0 lines skipped" in result.stderr.decode()


def test_convert_run_dir_merges_one_metric_lines_into_steps(tmp_path: Path):
    """One-metric-per-line events of a run directory come out one step per line, keys as
    written (no field map)."""
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"step": 1, "name": "train/loss", "value": 0.5},
             {"step": 1, "name": "grad_norm", "value": 1.0},
             {"step": 2, "name": "train/loss", "value": "NaN"}]
    (run / "events.rank0.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "out.jsonl"
    result = run_cli("convert", str(run), "-o", str(out))
    assert 0 == result.returncode, result.stderr.decode()
    records = _read(out)
    assert [(1, {"train/loss": 0.5, "grad_norm": 1.0}), (2, ["train/loss"])] == [
        (records[0].step, records[0].metrics), (records[1].step, list(records[1].metrics))]


def test_convert_with_regex_and_field_map_renames_keys(tmp_path: Path):
    """--regex verl reads verl's console lines; --preset/--field-map rename keys on the way."""
    log = tmp_path / "verl.log"
    log.write_bytes(b"(TaskRunner pid=1) step:1 - actor/pg_loss:0.25 - train/loss:1.5\n"
                    b"Training Progress: 50%\n"
                    b"(TaskRunner pid=1) step:2 - actor/pg_loss:0.5 - train/loss:1.25\n")
    out = tmp_path / "out.jsonl"
    result = run_cli("convert", str(log), "-o", str(out), "--regex", "verl", "--preset", "trl",
                     "--field-map", "actor/pg_loss=pg_loss")
    assert 0 == result.returncode, result.stderr.decode()
    assert [(1, {"pg_loss": 0.25, "loss": 1.5}), (2, {"pg_loss": 0.5, "loss": 1.25})] == [
        (r.step, r.metrics) for r in _read(out)]


def test_convert_reads_stdin_to_its_end(tmp_path: Path):
    """`convert -` reads the pipe once to its close."""
    out = tmp_path / "out.jsonl"
    result = run_cli("convert", "-", "-o", str(out), "--logging-steps", "5",
                     input=b"{'loss': '1', 'epoch': '0.1'}\nprose\n{'loss': '2', 'epoch': '0.2'}\n")
    assert 0 == result.returncode, result.stderr.decode()
    assert [5, 10] == [r.step for r in _read(out)]


def test_convert_replaces_an_existing_output(tmp_path: Path):
    """The output is replaced, not appended to: converting twice gives the same records (their
    times are when the printed lines were read, so those differ)."""
    out = tmp_path / "out.jsonl"
    first = convert(str(DATA / "trl_sft_merged.txt"), out)
    before = [(r.step, r.kind, r.metrics) for r in _read(out)]
    convert(str(DATA / "trl_sft_merged.txt"), out)
    assert (7, before) == (first.records, [(r.step, r.kind, r.metrics) for r in _read(out)])


def test_convert_missing_source_or_source_as_output_exit_one(tmp_path: Path):
    """A missing source, or -o naming the source itself: exit 1 with a clear message."""
    missing = run_cli("convert", str(tmp_path / "nope.log"), "-o", str(tmp_path / "o.jsonl"))
    src = tmp_path / "a.jsonl"
    src.write_text('{"step": 1, "metrics": {"loss": 1}}\n')
    same = run_cli("convert", str(src), "-o", str(src))
    assert (1, 1) == (missing.returncode, same.returncode)
    assert "no such file" in missing.stderr.decode()
    assert "overwrite the source" in same.stderr.decode()
    assert src.read_text() == '{"step": 1, "metrics": {"loss": 1}}\n'


def test_convert_help_documents_examples_and_exit_codes():
    """`trainguard convert --help` shows examples, --regex and the exit codes."""
    text = run_cli("convert", "--help").stdout.decode()
    assert "Examples" in text and "Exit codes" in text and "--regex" in text
