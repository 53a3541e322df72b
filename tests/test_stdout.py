"""Plain trainer stdout -> records: the presets, tqdm noise, the derived TRL step, user patterns,
auto-detection, and real captured TRL output compared with the callback's events."""

from __future__ import annotations

import fcntl
import json
import math
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import ROOT, run_cli
from trainguard.events import ParseSkip, Record, decode_value, parse_line
from trainguard.exceptions import ConfigError, UnknownPackError
from trainguard.monitor.daemon import json_line_parser
from trainguard.monitor.ingest.sources import Line
from trainguard.monitor.ingest.stdout import (
    StdoutParser,
    StdoutPreset,
    builtin_stdout_presets,
    load_stdout_preset,
    make_line_parser,
)
from trainguard.monitor.ingest.stdout_text import scan_log_dict

DATA = Path(__file__).resolve().parent / "data"
TRAINER = Path(__file__).resolve().parent / "trl_stdout_trainer.py"


def _parse(lines: list[bytes], regex: str | None = None, **kw: object) -> list[object]:
    """Each line through one parser, as a source would deliver them (one stream)."""
    parser = make_line_parser(regex, **kw)  # type: ignore[arg-type]
    return [parser(Line("out", n, data)) for n, data in enumerate(lines, 1)]


def _records(lines: list[bytes], regex: str | None = None,
             **kw: object) -> list[tuple[int, str, dict[str, float]]]:
    return [(r.step, r.kind, r.metrics) for r in _parse(lines, regex, **kw)
            if isinstance(r, Record)]


# -- trl / transformers ---------------------------------------------------------------------------

def test_trl_quoted_four_digit_floats_are_numbers_at_counted_steps():
    """TRL 1.x prints floats as quoted strings; the n-th log is step n."""
    lines = [b"{'loss': '0.6931', 'grad_norm': '1.25', 'learning_rate': '1e-05', 'epoch': '0.5'}",
             b"{'loss': '0.5', 'grad_norm': '2', 'learning_rate': '1e-05', 'epoch': '1'}"]
    assert [(1, "train", {"loss": 0.6931, "grad_norm": 1.25, "learning_rate": 1e-05,
                          "epoch": 0.5}),
            (2, "train", {"loss": 0.5, "grad_norm": 2.0, "learning_rate": 1e-05, "epoch": 1.0})
            ] == _records(lines)


def test_trl_older_raw_float_form_reads_nan_and_inf():
    """Older transformers print raw floats, nan and inf unquoted; None and booleans are dropped."""
    got = _records([b"{'loss': nan, 'grad_norm': inf, 'kl': -inf, 'learning_rate': 5e-05, "
                    b"'reward': None, 'flag': True, 'num_input_tokens_seen': 1234, "
                    b"'epoch': 0.01}"], "transformers")
    (step, kind, metrics), = got
    assert (1, "train", 1234.0, 5e-05, math.inf, -math.inf) == (
        step, kind, metrics["num_input_tokens_seen"], metrics["learning_rate"],
        metrics["grad_norm"], metrics["kl"])
    assert math.isnan(metrics["loss"]) and {"reward", "flag"}.isdisjoint(metrics)


def test_tqdm_bar_and_dict_on_one_line_with_ansi_and_crlf_give_the_dict():
    """Merged stderr/stdout: bar, clear, ANSI cursor-up and the dict on one physical line."""
    bar = " 25%|\u2588\u2588\u258c       | 1/4 [00:02<00:06,  2.21s/it]".encode()
    lines = [b"\r" + bar + b"\r" + b" " * 45 + b"\r{'loss': '1.49e-08', 'epoch': '0.0625'}\r",
             b"\r" + b" " * 45 + b"\r\x1b[A{'eval_loss': '-7.404e-08', 'epoch': '0.0625'}",
             b"\r" + bar + b"\r" + bar]
    assert [(1, "train", {"loss": 1.49e-08, "epoch": 0.0625, "progress/step": 1.0,
                          "progress/total": 4.0}),
            (1, "eval", {"eval_loss": -7.404e-08, "epoch": 0.0625})] == _records(lines)


def _train_metrics(parser: StdoutParser, data: bytes) -> dict[str, float]:
    (record,) = [r for r in parser.parse_all("out", data) if isinstance(r, Record)]
    return record.metrics


def _bar(counter: int, total: int) -> bytes:
    return f"\r{100 * counter // total:3d}%|#    | {counter}/{total} [00:01<00:05, 3.4it/s]".encode()


CLEAR = b"\r" + b" " * 40 + b"\r"


def test_the_trainers_bar_on_a_logs_own_line_gives_the_runs_length():
    """tqdm.write clears the Trainer's bar and prints the log on the same physical line: its
    total is the run's length, kept for later logs printed without a redraw; the step given
    is the smaller of the derived step and the bar's counter."""
    parser = make_line_parser(None)
    assert isinstance(parser, StdoutParser)
    first = _train_metrics(parser, _bar(0, 20) + CLEAR + b"{'loss': '1', 'epoch': '0.1'}")
    assert (0.0, 20.0) == (first["progress/step"], first["progress/total"])
    later = _train_metrics(parser, b"{'loss': '1', 'epoch': '0.2'}")  # no redraw on its line
    assert (2.0, 20.0) == (later["progress/step"], later["progress/total"])
    ahead = _train_metrics(parser, _bar(9, 20) + CLEAR + b"{'loss': '1', 'epoch': '0.3'}")
    assert 3.0 == ahead["progress/step"]  # never past the derived step


def test_a_bar_on_no_logs_line_is_not_taken_for_the_trainers():
    """A data-preparation loop's bare bar, an evaluation's, or the Trainer's own far ahead of
    logs that a buffered stdout delivers late: none gives the run's length."""
    parser = make_line_parser(None)
    assert isinstance(parser, StdoutParser)
    assert [] == parser.parse_all("err", _bar(1000, 1000))  # a user's preprocessing loop
    assert [] == parser.parse_all("err", b"\rMap: 100%|#####| 64/64 [00:00<00:00, 9.2it/s]")
    assert [] == parser.parse_all("err", _bar(30, 5800))  # the bar, ahead of buffered logs
    assert not {"progress/step", "progress/total"} & _train_metrics(
        parser, b"{'loss': '1', 'learning_rate': '1e-09', 'epoch': '0.1'}").keys()


def test_convert_keeps_the_keys_as_printed_without_the_bars_progress():
    parser = make_line_parser(None, step_bar=False)
    assert isinstance(parser, StdoutParser)
    assert "progress/total" not in _train_metrics(
        parser, _bar(1, 20) + CLEAR + b"{'loss': '1', 'epoch': '0.1'}")


def test_eval_and_summary_dicts_sit_at_the_last_training_step():
    """eval_* dicts are eval records and the train_runtime dict a summary, neither a new step."""
    lines = [b"{'loss': '1', 'epoch': '0.1'}", b"{'loss': '1', 'epoch': '0.2'}",
             b"{'eval_loss': '2', 'epoch': '0.2'}",
             b"{'train_runtime': '3.5', 'train_loss': '1', 'epoch': '0.2'}"]
    assert [(20, "train"), (40, "train"), (40, "eval"), (40, "summary")] == [
        (step, kind) for step, kind, _ in _records(lines, logging_steps=20)]


def test_step_comes_from_the_epoch_when_steps_per_epoch_is_known():
    """With steps_per_epoch the step is round(epoch x steps_per_epoch), logs counted or not."""
    lines = [b"{'loss': '1', 'epoch': '0.25'}", b"{'loss': '1', 'epoch': '1.5'}"]
    assert [10, 60] == [s for s, _, _ in _records(lines, steps_per_epoch=40)]


def test_steps_are_counted_per_stream():
    """Two streams (two rank files) count their own logs."""
    parser = make_line_parser("trl")
    line = b"{'loss': '1', 'epoch': '0.1'}"
    got = [parser(Line(stream, 1, line)).step  # type: ignore[union-attr]
           for stream in ("a", "a", "b", "a")]
    assert [1, 2, 1, 3] == got


def test_a_printed_dict_without_epoch_is_prose_not_a_log():
    """A config dict the script prints is not a Trainer log and does not advance the step."""
    lines = [b"{'learning_rate': 0.1, 'batch_size': 8}", b"{'loss': '1', 'epoch': '0.1'}"]
    assert [None, 1] == [getattr(r, "step", r) for r in _parse(lines)]


def test_a_malformed_log_dict_is_a_counted_skip():
    """A dict cut short is a skip with a reason, not prose and not an exception."""
    result, = _parse([b"{'loss': '0.5', 'epoch': '0.5'"])
    assert isinstance(result, ParseSkip) and "bad_log_dict" == result.reason


def test_nested_and_long_string_values_are_skipped_over():
    """A list or dict value, or TRL's long-string placeholder, is not a metric; the rest is."""
    line = (b"{'loss': '0.5', 'l': [1, {'a': 2}], 'note': '[String too long to display]', "
            b"'d': {'x': (1, 2)}, \"it's\": '3', 'epoch': '1'}")
    assert [(1, "train", {"loss": 0.5, "it's": 3.0, "epoch": 1.0})] == _records([line])


_TEXT = st.text(max_size=12)
#: Metric names are printable and need no escape in a repr (escapes are kept as printed); a
#: value may hold anything.
_KEYS = st.text(min_size=1, max_size=12).filter(
    lambda k: k.isprintable() and "\\" not in k and not ("'" in k and '"' in k))
_VALUES = st.one_of(st.floats(), st.integers(), st.none(), st.booleans(), _TEXT,
                    st.floats().map(lambda v: f"{v:.4g}"), st.lists(st.integers(), max_size=3))


@given(st.dictionaries(_KEYS, _VALUES, max_size=8))
def test_every_number_of_any_printed_flat_dict_is_read(logs: dict[str, object]):
    """str(dict) of any keys and values (floats, 4-digit strings, None, booleans, strings with
    separators or braces, lists): exactly the numbers come back, keyed as printed."""
    expected = {}
    for key, value in logs.items():
        if isinstance(value, str):  # read as printed: escapes stay escapes
            number = decode_value(repr(value)[1:-1])
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        else:
            number = None
        if number is not None:
            expected[key] = repr(number)
    scanned = scan_log_dict(str(logs), 0)
    assert scanned is not None
    assert (expected, set(logs)) == ({k: repr(v) for k, v in scanned[0].items()}, scanned[1])


# -- verl, openrlhf, kv ---------------------------------------------------------------------------

def test_verl_console_line_with_ray_prefix_and_numpy_reprs():
    """verl: step:N - key:value, behind Ray's (TaskRunner pid=...) prefix; np.float64(x) read."""
    line = (b"(TaskRunner pid=2345) step:12 - actor/pg_loss:-0.0123 - "
            b"critic/score/mean:np.float64(0.5) - timing_s/gen:3.2 - actor/kl_loss:nan")
    (step, kind, metrics), = _records([line], "verl")
    assert (12, "train", -0.0123, 0.5, 3.2) == (
        step, kind, metrics["actor/pg_loss"], metrics["critic/score/mean"], metrics["timing_s/gen"])
    assert math.isnan(metrics["actor/kl_loss"])


def test_openrlhf_global_step_dict_with_log_prefix():
    """OpenRLHF: '... Global step N: {dict}' behind a logger prefix, raw floats."""
    line = ("[2025-01-01 10:00:00] INFO \u2728 Global step 7: {'policy_loss': 0.1, 'kl': 1e-05, "
            "'reward': -0.5}").encode()
    assert [(7, "train", {"policy_loss": 0.1, "kl": 1e-05, "reward": -0.5})] == _records(
        [line], "openrlhf")


def test_kv_reads_equals_and_colon_forms_and_ignores_lines_without_a_step():
    """kv: key=value or key: value; only numbers are metrics; no step key means prose."""
    lines = [b"step=12 loss=0.53 grad_norm=1.7 lr=1e-05 name=abc",
             b"step: 13, loss: 0.5, kl: nan | time: 12:30:01",
             b"loss=0.4 without the step key", b"at step 14 all is well"]
    got = _records(lines, "kv")
    assert [(12, {"loss": 0.53, "grad_norm": 1.7, "lr": 1e-05}), (13, {"loss", "kl"})] == [
        (got[0][0], got[0][2]), (got[1][0], set(got[1][2]))]
    assert 2 == len(got)


def test_auto_detection_reads_every_preset_json_and_ignores_prose():
    """Auto: canonical JSON, OpenRLHF, TRL, verl and kv lines on one stream; prose is None."""
    lines = [b'{"step": 3, "metrics": {"loss": 1}}', b"Global step 4: {'kl': 0.5}",
             b"{'loss': '1', 'epoch': '0.1'}", b"step:5 - reward:1.5", b"step=6 loss=0.25",
             b"Loading checkpoint shards: done", b""]
    got = _parse(lines)
    assert [3, 4, 1, 5, 6, None, None] == [getattr(r, "step", r) for r in got]


def test_auto_detection_counts_broken_json_as_a_skip():
    """A line that looks like JSON but is not, and matches no preset, is a counted skip."""
    result, = _parse([b'{"step": 4, "metrics": '])
    assert "malformed_json" == result.reason  # type: ignore[union-attr]


def test_no_regex_and_no_auto_is_the_plain_json_parser():
    """regex=None, auto=False keeps the monitor's canonical JSONL parser (and its fast path)."""
    assert json_line_parser is make_line_parser(None, auto=False)


# -- user patterns (re2) ---------------------------------------------------------------------------

def test_user_pattern_named_groups_are_metrics_and_double_underscore_is_a_slash():
    """--regex 'PATTERN': step group and one group per metric; rewards__chosen -> rewards/chosen."""
    pattern = r"it (?P<step>\d+) loss (?P<loss>\S+) rc (?P<rewards__chosen>\S+)"
    assert [(7, "train", {"loss": 0.5, "rewards/chosen": -1.0})] == _records(
        [b"2025 it 7 loss 0.5 rc -1", b"no match here"], pattern)


def test_user_pattern_with_a_non_number_is_a_counted_skip():
    """A metric group that captured a non-number is a skip that names it."""
    result, = _parse([b"it 7 loss high"], r"it (?P<step>\d+) loss (?P<loss>\S+)")
    assert ("bad_value", "loss='high'") == (result.reason, result.detail)  # type: ignore[union-attr]


@pytest.mark.parametrize(("pattern", "says"), [
    (r"(?P<step>\d+) (?P<loss>\S+) \1", "re2 cannot compile"),
    (r"(?P<step>\d+)(?=x) (?P<loss>\S+)", "re2 cannot compile"),
    (r"loss (?P<loss>\S+)", "no (?P<step>...) group"),
    (r"(?P<step>\d+)", "no metric group"),
    ("trll", "not a preset name"),
])
def test_a_pattern_re2_refuses_or_without_groups_is_a_config_error(pattern: str, says: str):
    """Backreferences, lookarounds, a missing step or metric group: refused at start, clearly."""
    with pytest.raises(ConfigError) as info:
        make_line_parser(pattern)
    assert says in str(info.value)


def test_logging_steps_below_one_is_refused():
    """--logging-steps 0 is a config error naming the option."""
    with pytest.raises(ConfigError, match="--logging-steps 0"):
        make_line_parser("trl", logging_steps=0)


# -- presets as data -----------------------------------------------------------------------------

def test_every_shipped_preset_and_alias_loads():
    """trl, transformers, verl, openrlhf, openrlhf_tqdm and kv are shipped and validate."""
    assert {"kv", "openrlhf", "openrlhf_tqdm", "openrlhf-tqdm", "trl", "transformers",
            "verl"} == set(builtin_stdout_presets())
    assert load_stdout_preset("transformers") is load_stdout_preset("trl")
    with pytest.raises(UnknownPackError, match="built-in: kv, openrlhf"):
        load_stdout_preset("nope")


def test_public_api_is_pinned():
    """The names the stdout modules export."""
    from trainguard.monitor import convert
    from trainguard.monitor.ingest import stdout, stdout_text
    assert (["AUTO_ORDER", "PROGRESS_METRICS", "StdoutParser", "StdoutPreset",
             "builtin_stdout_presets",
             "load_stdout_preset", "make_line_parser", "preset_field_maps"],
            ["decode_token", "scan_log_dict", "segments", "trainer_bar"],
            ["ConvertResult", "convert"]) == (
        sorted(stdout.__all__), sorted(stdout_text.__all__), sorted(convert.__all__))


def test_a_preset_missing_its_pair_pattern_is_refused():
    """A pairs preset needs a pair pattern; the model says which field is wrong."""
    with pytest.raises(ValueError, match="needs a 'pair' pattern"):
        StdoutPreset.model_validate({"name": "x", "description": "d", "format": "pairs",
                                     "contains": "step", "step": "key"})


# -- captured TRL stdout vs the callback's events ------------------------------------------------

def _callback_records(path: Path) -> list[tuple[int, str, dict[str, float]]]:
    """The callback's events, rounded as TRL prints them (4 significant digits), total_flos
    dropped (the Trainer does not print it)."""
    out = []
    for text in path.read_text().splitlines():
        record = parse_line(text)
        assert isinstance(record, Record)
        out.append((record.step, record.kind, {k: float(f"{v:.4g}") for k, v in
                                               record.metrics.items() if k != "total_flos"}))
    return out


def _stdout_records(data: bytes, logging_steps: int = 1) -> list[tuple[int, str,
                                                                         dict[str, float]]]:
    parser = make_line_parser("trl", logging_steps=logging_steps)
    assert isinstance(parser, StdoutParser)
    out = []
    for n, line in enumerate(data.split(b"\n"), 1):
        for r in parser.parse_all("out", line):
            assert isinstance(r, Record), r
            # The step bar's progress/* are what the console adds; the callback records the
            # config instead (run_metadata.json).
            out.append((r.step, r.kind, {k: v for k, v in r.metrics.items()
                                         if not k.startswith("progress/")}))
    return out


def test_committed_trl_capture_parses_to_the_callbacks_events():
    """tests/data: a real SFT run's merged stdout+stderr gives the callback's events, rounded."""
    expected = _callback_records(DATA / "trl_sft_events.jsonl")
    assert ["train", "train", "eval", "train", "train", "eval", "summary"] == [
        k for _, k, _ in expected]
    assert expected == _stdout_records((DATA / "trl_sft_merged.txt").read_bytes())


def _trainer_command(kind: str, tmp_path: Path, model: str, extra: list[str]) -> list[str]:
    return [sys.executable, str(TRAINER), kind, model, str(tmp_path / "out"),
            "--run-dir", str(tmp_path / "run"), *extra]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1",
                PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def _capture(command: list[str], mode: str) -> bytes:
    """Run ``command``; stdout alone (bar on a separate stderr), stdout+stderr through one pipe,
    or both on a 120-column pty (lines end in \\r\\n)."""
    if mode == "separate":
        done = subprocess.run(command, capture_output=True, env=_env(), timeout=240, check=False)
        assert 0 == done.returncode, done.stderr.decode()[-2000:]
        assert b"it/s]" in done.stderr  # the bar went to stderr
        return done.stdout
    if mode == "merged":
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=_env(), timeout=240, check=False)
        assert 0 == done.returncode, done.stdout.decode()[-2000:]
        return done.stdout
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(command, stdout=slave, stderr=slave, env=_env())
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(master, 1 << 16)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(master)
    assert 0 == proc.wait(timeout=240)
    return b"".join(chunks)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One tiny Llama saved once for these trainer runs."""
    from tests.tiny_trl import build_tiny_model
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.mark.slow
@pytest.mark.trl
@pytest.mark.parametrize(("kind", "mode", "extra", "logging_steps"), [
    ("sft", "separate", ["--eval-steps", "2"], 1),
    ("sft", "merged", ["--eval-steps", "2"], 1),
    ("sft", "pty", ["--eval-steps", "2"], 1),
    ("grpo", "merged", ["--logging-steps", "2", "--max-steps", "6"], 2),
])
def test_real_trl_stdout_parses_to_the_callbacks_events(kind: str, mode: str, extra: list[str],
                                                        logging_steps: int, tiny_model: str,
                                                        tmp_path: Path):
    """A real trainer's printed dicts, however captured, equal the callback's events at the
    same steps, to the 4 significant digits printed."""
    pytest.importorskip("trl")
    data = _capture(_trainer_command(kind, tmp_path, tiny_model, extra), mode)
    expected = _callback_records(tmp_path / "run" / "events.rank0.jsonl")
    assert "summary" == expected[-1][1] and len(expected) >= 3
    assert expected == _stdout_records(data, logging_steps)


# -- end to end through the CLI ------------------------------------------------------------------

def test_monitor_regex_on_a_pipe_fires_a_rule():
    """`trainguard monitor - --regex PATTERN`: the user's pattern feeds the rules; exit 2."""
    data = b"epoch 0 it 1 loss 0.9\nsome prose\nepoch 0 it 2 loss nan\n"
    result = run_cli("monitor", "-", "--regex", r"it (?P<step>\d+) loss (?P<loss>\S+)",
                     input=data)
    err = result.stderr.decode()
    assert 2 == result.returncode, err
    assert "common.nonfinite_loss" in err and "step 2" in err and "0 lines skipped" in err


def test_monitor_stdin_auto_detects_trl_dicts_without_counting_prose(tmp_path: Path):
    """Piped TRL output without --regex: dicts read, the NaN fires, prose is not a skip."""
    report = tmp_path / "report.json"
    data = ((DATA / "trl_sft_merged.txt").read_bytes()
            + b"{'loss': 'nan', 'grad_norm': 'nan', 'epoch': '0.625'}\n")
    result = run_cli("monitor", "-", "--report", str(report), input=data)
    assert 2 == result.returncode, result.stderr.decode()
    alerts = json.loads(report.read_text())
    assert ({}, 8) == (alerts["parse_skips"], alerts["records"])


def test_monitor_with_a_bad_pattern_exits_one_with_a_clear_message():
    """A pattern re2 refuses: exit 1, one line naming the problem, no traceback."""
    result = run_cli("monitor", "-", "--regex", r"(?P<step>\d+) (?P<loss>\S+) \1", input=b"")
    err = result.stderr.decode()
    assert 1 == result.returncode and "re2 cannot compile" in err and "Traceback" not in err


def test_monitor_file_with_regex_trl_derives_steps_from_logging_steps(tmp_path: Path):
    """`monitor FILE --regex trl --logging-steps 10 --once`: the third printed log is step 30."""
    log = tmp_path / "train.log"
    log.write_bytes(b"{'loss': '1', 'epoch': '0.1'}\r\n{'loss': '1', 'epoch': '0.2'}\r\n"
                    b"\r 30%|###   | 3/10\r{'loss': 'nan', 'epoch': '0.3'}\r\n")
    result = run_cli("monitor", str(log), "--once", "--regex", "trl", "--logging-steps", "10")
    err = result.stderr.decode()
    assert 2 == result.returncode, err
    assert "loss is NaN at step 30" in err.replace("\n", " ")
