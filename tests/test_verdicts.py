"""Verdicts you can trust, through the real CLI: a monitor that could not judge never says
clean (and says what it saw), a file is read in the format its lines show, usage errors never
exit with the alert code, --once judges the whole run, and the smaller promises of issue 11."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

TRL_LOG = (b"Loading checkpoint shards: 100%\n"
           b"{'loss': '0.6931', 'grad_norm': '1.25', 'learning_rate': '1e-05', 'epoch': '0.1'}\n"
           b" 20%|##        | 2/10 [00:01<00:04]{'loss': '0.69', 'grad_norm': '1.2', "
           b"'learning_rate': '1e-05', 'epoch': '0.2'}\n"
           b"{'loss': 'nan', 'grad_norm': '1.2', 'learning_rate': '1e-05', 'epoch': '0.3'}\n"
           b"Saving model checkpoint\n")


def _out(result: subprocess.CompletedProcess[bytes]) -> str:
    return (result.stdout + result.stderr).decode()


def _events(path: Path, rows: list[dict[str, float | str]], start: int = 1) -> None:
    with open(path, "a") as handle:
        for i, metrics in enumerate(rows, start):
            handle.write(json.dumps({"step": i, "metrics": metrics}) + "\n")


# -- blind, yet clean ----------------------------------------------------------------------------

def test_a_trl_stdout_log_given_as_a_file_is_read_as_trainer_stdout(tmp_path: Path):
    """No --regex: the file's lines show trainer stdout, so it is read as stdin would be, and
    the NaN loss fires (it was "clean: 0 events, lines skipped")."""
    log = tmp_path / "train.log"
    log.write_bytes(TRL_LOG)
    result = run_cli("monitor", str(log), "--once")
    assert result.returncode == 2, _out(result)
    assert "reads as trainer stdout" in _out(result)
    assert "common.nonfinite_loss" in _out(result)


@pytest.mark.parametrize("content", [b"", b"garbage \x00\xff\nmore garbage\n",
                                     b"Epoch 1 done.\nEverything is fine.\n" * 20])
def test_a_file_without_events_is_never_clean(tmp_path: Path, content: bytes):
    """Empty, garbage, prose only: exit 1, and the summary says nothing was judged and how
    many lines were read."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(content)
    result = run_cli("monitor", str(path), "--once")
    assert result.returncode == 1, _out(result)
    assert "nothing judged: no metric events" in _out(result)


def test_an_empty_run_directory_is_never_clean(run_dir: Path):
    """A run directory with no event file at all: exit 1, "nothing judged"."""
    result = run_cli("monitor", str(run_dir), "--once")
    assert result.returncode == 1, _out(result)
    assert "nothing judged" in _out(result)


def test_json_of_another_shape_is_never_clean(tmp_path: Path):
    """verl's file logger ({"step": N, "data": {...}}, NaN as null) read without its format:
    not clean (the skips say why); exit 1."""
    path = tmp_path / "verl.jsonl"
    path.write_text("".join(json.dumps({"step": i, "data": {"actor/pg_loss": None}}) + "\n"
                            for i in range(1, 6)))
    result = run_cli("monitor", str(path), "--once")
    assert result.returncode == 1, _out(result)


def test_metrics_no_loaded_rule_reads_mean_nothing_was_judged(tmp_path: Path):
    """Events whose metrics no loaded rule reads: exit 1, naming the metrics."""
    path = tmp_path / "events.jsonl"
    _events(path, [{"my/odd_metric": 1.0}] * 5)
    result = run_cli("monitor", str(path), "--once", "--rules", "common")
    assert result.returncode == 1, _out(result)
    assert "none of their metrics is read" in _out(result)
    assert "my/odd_metric" in _out(result)


def test_a_clean_verdict_still_says_which_metrics_no_rule_read(tmp_path: Path):
    """Judged and clean (exit 0), with a note naming the metric no rule reads."""
    path = tmp_path / "events.jsonl"
    _events(path, [{"loss": 1.0, "my/odd_metric": 1.0}] * 5)
    result = run_cli("monitor", str(path), "--once", "--rules", "common")
    assert result.returncode == 0, _out(result)
    assert "1 of 2 metrics are read by no loaded rule: my/odd_metric" in _out(result)


def test_a_clean_verdict_without_the_trainers_config_says_the_config_rules_were_blind(
        tmp_path: Path):
    """Printed logs carry no config: the warmup and temperature rules could not run, and the
    verdict says so (and how to give it); with the recorded config it says nothing of it."""
    lines = b"".join(b"{'loss': '2.5', 'grad_norm': '1', 'learning_rate': '1e-05', "
                     b"'epoch': '%.2f'}\n" % (i / 10) for i in range(1, 6))
    blind = run_cli("monitor", "-", "--once", input=lines)
    assert blind.returncode == 0, _out(blind)
    assert ("config unknown: 1 rule (common.warmup_longer_than_run) had no max_steps, "
            "warmup_ratio, warmup_steps to judge") in _out(blind)
    # A trainer recognised from its keys, 80 steps: the note outlives the pack selection.
    dpo = b"".join(b"{'loss': '0.69', 'rewards/margins': '0.1', 'rewards/accuracies': '0.6', "
                   b"'logps/chosen': '-5', 'learning_rate': '1e-05', 'epoch': '%.2f'}\n"
                   % (i / 100) for i in range(1, 81))
    detected = run_cli("monitor", "-", "--once", input=dpo)
    assert "trainer dpo (detected from the metric keys)" in _out(detected), _out(detected)
    assert "config unknown: 1 rule (common.warmup_longer_than_run)" in _out(detected)
    run = tmp_path / "run"
    run.mkdir()
    (run / "run_metadata.json").write_text(json.dumps(
        {"trainer": "sft", "config": {"max_steps": 100, "warmup_steps": 10, "warmup_ratio": 0.0}}))
    _events(run / "events.rank0.jsonl", [{"loss": 2.5, "learning_rate": 1e-5}] * 5)
    seen = run_cli("monitor", str(run), "--once")
    assert "config unknown" not in _out(seen), _out(seen)


def test_far_fewer_events_than_lines_is_reported(tmp_path: Path):
    """Two steps among 200 lines of prose: judged, but the verdict says most was not read."""
    path = tmp_path / "train.log"
    path.write_bytes(b"some prose\n" * 200 + TRL_LOG.splitlines(keepends=True)[1])
    result = run_cli("monitor", str(path), "--once", "--report", str(tmp_path / "r.json"))
    assert "few events: 1 steps from 201 lines" in _out(result)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["judged"] is True and report["lines"] == 201


def test_quiet_prints_no_degraded_lines(tmp_path: Path):
    """-q: nothing on the terminal, the exit code alone (a missing file is degraded)."""
    result = run_cli("monitor", str(tmp_path / "missing.jsonl"), "--once", "-q")
    assert (1, b"", b"") == (result.returncode, result.stdout, result.stderr)


# -- usage errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["monitor", "--bogus"], ["monitor", "x", "--poll-interval", "abc"], ["nope"],
    ["rules", "validate"], ["rules", "explain"], ["convert", "x"], ["run"],
    ["monitor", "x", "--logging-steps", "many"],
])
def test_a_usage_error_exits_1_never_the_alert_code(argv: list[str]):
    """A typo in the command line is not "the run had a critical alert" (2)."""
    result = run_cli(*argv)
    assert result.returncode == 1, _out(result)


# -- --once, --from-end ----------------------------------------------------------------------------

def test_a_second_once_on_a_run_dir_judges_the_whole_run_again(run_dir: Path):
    """--once is a batch verdict over the whole run: a second one, with other rules, reads
    every event again (it read nothing after resuming the first one's checkpoint, and said
    clean); the first one's alerts are not delivered twice."""
    _events(run_dir / "events.jsonl", [{"loss": 1.0}] * 5 + [{"loss": 1.6}] * 3)
    first = run_cli("monitor", str(run_dir), "--once", "--rules", "common")
    assert first.returncode == 0, _out(first)
    second = run_cli("monitor", str(run_dir), "--once", "--rules", "common",
                     "--alert", "loss > 1.5 -> high: loss above 1.5")
    assert second.returncode == 2, _out(second)
    assert "8 events in 8 steps" in _out(second)
    again = run_cli("monitor", str(run_dir), "--once", "--rules", "common",
                    "--alert", "loss > 1.5 -> high: loss above 1.5")
    assert again.returncode == 2, _out(again)
    alerts = (run_dir / "alerts.jsonl").read_text().splitlines()
    assert 1 == sum('"firing"' in line for line in alerts)


def test_from_end_skips_what_a_run_dir_already_holds(run_dir: Path):
    """--from-end on a run directory: the NaN already there is not read; a step written
    afterwards is, and the verdict is clean (it was ignored: the NaN fired)."""
    events = run_dir / "events.jsonl"
    _events(events, [{"loss": "NaN"}])
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "trainguard", "monitor", str(run_dir),
                             "--from-end", "--poll"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        time.sleep(2.0)
        _events(events, [{"loss": 1.0}], start=2)
        time.sleep(1.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, out
    assert "1 events in 1 steps" in out


# -- stdout events have a time ---------------------------------------------------------------------

def test_events_parsed_from_stdout_carry_a_time_in_record_and_convert(tmp_path: Path):
    """--record and convert write the time a printed log was read, never null."""
    log = tmp_path / "train.log"
    log.write_bytes(TRL_LOG)
    before = time.time()
    run_cli("monitor", str(log), "--once", "--record", str(tmp_path / "rec.jsonl"), "-q")
    done = run_cli("convert", str(log), "-o", str(tmp_path / "conv.jsonl"))
    assert done.returncode == 0, _out(done)
    for name in ("rec.jsonl", "conv.jsonl"):
        rows = [json.loads(x) for x in (tmp_path / name).read_text().splitlines()]
        assert len(rows) == 3
        assert all(isinstance(r["time"], float) and r["time"] >= before - 1 for r in rows), rows


# -- trainguard run and --regex verl ---------------------------------------------------------------

VERL_DRIVER = """
import time
for step in range(1, 30):
    pg = "nan" if step >= 4 else "-0.01"
    print(f"(TaskRunner pid=1234) step:{step} - actor/pg_loss:{pg} - critic/vf_loss:"
          f"np.float64(0.5) - critic/score/mean:0.5 - timing_s/step:0.1", flush=True)
    time.sleep(0.2)
"""


def test_run_adds_the_detected_trainers_pack(tmp_path: Path):
    """`trainguard run -- python verl_driver.py` (verl console lines, as verl's LocalLogger
    prints them behind Ray's prefix; verl itself is not installable here): the keys say PPO,
    ppo_safe is added, and its NaN pg_loss rule stops the command (exit 3; it was exit 0, no
    alert)."""
    driver = tmp_path / "verl_driver.py"
    driver.write_text(VERL_DRIVER)
    run_dir = tmp_path / "run"
    result = run_cli("run", "--run-dir", str(run_dir), "--", sys.executable, str(driver),
                     timeout=120)
    assert result.returncode == 3, _out(result)
    assert "adds pack ppo_safe" in _out(result)
    fired = [json.loads(x)["rule"] for x in (run_dir / "alerts.jsonl").read_text().splitlines()]
    assert "ppo.nonfinite_pg_loss" in fired


def test_regex_verl_brings_the_verl_field_map(tmp_path: Path):
    """--regex verl applies verl's field map: a NaN actor/grad_norm also feeds common's
    grad_norm rule (it went unseen with --rules common)."""
    log = tmp_path / "verl.log"
    log.write_text("".join(f"step:{s} - actor/grad_norm:{'nan' if s == 3 else 1.0} - "
                           f"actor/pg_loss:0.1\n" for s in range(1, 6)))
    result = run_cli("monitor", str(log), "--once", "--regex", "verl", "--rules", "common")
    assert result.returncode == 2, _out(result)
    assert "common.nonfinite_grad_norm" in _out(result)


# -- smaller ---------------------------------------------------------------------------------------

def test_regex_errors_show_the_pattern_as_typed_and_no_re2_hint_for_a_plain_mistake(
        tmp_path: Path):
    """A missing parenthesis: the pattern without doubled backslashes, where it went wrong, no
    talk of re2's limits; a lookahead: the re2 hint."""
    log = tmp_path / "x.log"
    log.write_text("step 1 loss 2\n")
    plain = run_cli("monitor", str(log), "--once", "--regex", r"step (?P<step>\d+ (?P<loss>\S+)")
    text = _out(plain)
    assert plain.returncode == 1
    assert r"\\d" not in text and r"\d+" in text
    assert "re2" not in text and "missing )" in text
    look = run_cli("monitor", str(log), "--once", "--regex", r"(?P<step>\d+)(?=x) (?P<loss>\S+)")
    assert "re2 cannot compile" in _out(look) and r"\\d" not in _out(look)


def test_bad_yaml_points_at_the_unclosed_quote(tmp_path: Path):
    """An unclosed quote on line 3: the error names line 3, not the end of the file."""
    path = tmp_path / "r.yaml"
    path.write_text('rules:\n  - id: a\n    metric: "loss\n    condition: x\n    severity: high\n')
    result = run_cli("rules", "validate", str(path))
    assert result.returncode == 1
    assert f"{path}:3:" in _out(result).replace("\n", "")


def test_rules_validate_lists_every_mistake(tmp_path: Path):
    """Three mistakes in three rules: all three reported, each with its line."""
    path = tmp_path / "r.yaml"
    path.write_text("rules:\n"
                    "  - {id: a, metric: loss, condition: '> > 1'}\n"
                    "  - {id: b, metric: loss, condition: 'foo((1)'}\n"
                    "  - {id: c, metric: loss, condition: '> 1', severity: huge}\n")
    result = run_cli("rules", "validate", str(path))
    text = _out(result).replace("\n", " ")
    assert result.returncode == 1
    assert "rule a:" in text and "rule b:" in text and "rule c:" in text
    assert "3 mistakes" in text


def test_the_straggler_message_calls_its_score_a_score():
    """The alert says "straggler score" (a ratio), not that it is a step time."""
    result = run_cli("rules", "show", "common.straggler")
    assert "straggler score {value}" in _out(result)
    assert "median step time is {value}" not in _out(result)


def test_docs_cite_nothing_outside_the_repository():
    """A user has only the repository: no notes kept outside it are cited (the names are built
    here from parts, so this file does not cite them either)."""
    cited = []
    for path in ROOT.rglob("*"):
        if (".venv" in path.parts or ".git" in path.parts or not path.is_file()
                or path.suffix not in (".md", ".py", ".yaml", ".yml", ".sh", ".toml")
                or path == Path(__file__)):
            continue
        text = path.read_text(errors="replace")
        for needle in ("RULE" "TESTS", "shared" "/reference", "../" "shared"):
            if needle in text:
                cited.append(f"{path.relative_to(ROOT)}: {needle}")
    assert [] == cited


def test_a_registered_json_format_gets_the_files_it_recognises(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch):
    """The hook for trackers' own JSON lines: a JsonFormat in sniff.JSON_FORMATS that
    recognises a file's head reads it (here {"step": N, "data": {...}}, null as NaN, the shape
    of verl's file logger), and a NaN loss in it fires."""
    from trainguard.events import Record
    from trainguard.monitor.ingest import sniff
    from trainguard.monitor.session import MonitorOptions, run_monitor

    def detects(obj: object) -> bool:
        return isinstance(obj, dict) and set(obj) == {"step", "data"}

    def convert(obj: dict) -> Record:  # type: ignore[type-arg]
        return Record(int(obj["step"]), {k: float("nan") if v is None else float(v)
                                         for k, v in obj["data"].items()})

    monkeypatch.setattr(sniff, "JSON_FORMATS", [sniff.JsonFormat("steps_data", detects, convert)])
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": i, "data": {"loss": None if i == 3 else 1.0}})
                            + "\n" for i in range(1, 6)))
    verdict = run_monitor(MonitorOptions(source=str(path), once=True, quiet=True,
                                         rules=["common"]))
    assert verdict.exit_code == 2
    assert ["common.nonfinite_loss"] == [a.rule for a in verdict.alerts if a.state == "firing"]
