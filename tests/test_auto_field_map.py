"""A framework's field map chosen from the keys a canonical JSONL run writes (ingest/auto_map.py).

A verl run written as canonical trainguard JSONL keeps verl's names (``actor/pg_loss``,
``actor/entropy``); without the verl map no rule reads them and the verdict was "degraded:
nothing judged". These tests pin the choice (which map, when, never a series under two names),
that an explicit ``--field-map`` wins, and, through the real CLI, that such a run is judged.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli
from tests.framework_formats import verl_step_metrics
from trainguard.monitor.ingest.auto_map import (
    DETECT_RECORDS,
    AutoFieldMap,
    session_field_map,
)
from trainguard.monitor.ingest.normalize import FieldMap


def _auto() -> tuple[AutoFieldMap, list[str]]:
    said: list[str] = []
    return AutoFieldMap(said.append), said


# -- the choice ------------------------------------------------------------------------------------

def test_verl_keys_choose_the_verl_map_at_their_first_record():
    auto, said = _auto()
    out = auto.apply({"actor/pg_loss": -0.01, "actor/entropy": 1.2, "critic/score/mean": 0.5})
    assert {"actor/pg_loss": -0.01, "loss": -0.01, "entropy": 1.2,
            "critic/score/mean": 0.5} == out
    assert "verl" == auto.chosen
    assert not auto.identity
    assert 1 == len(said) and "keys written as verl's (actor/pg_loss" in said[0]
    assert "actor/entropy is entropy" in said[0] and "--field-map none" in said[0]


def test_openrlhf_keys_choose_the_openrlhf_map_also_under_the_trackers_train_prefix():
    auto, said = _auto()
    out = auto.apply({"train/policy_loss": 0.1, "train/actor_lr": 1e-6, "train/kl": 0.01})
    assert {"policy_loss": 0.1, "loss": 0.1, "learning_rate": 1e-6, "kl": 0.01} == out
    assert "openrlhf" == auto.chosen and "openrlhf's (train/policy_loss" in said[0]


def test_one_metric_lines_choose_at_the_first_framework_key_and_earlier_names_stay_whole():
    """verl one-metric lines: ``timing_s/gen`` (no map changes it) passes while the choice
    waits; ``actor/entropy`` then chooses verl, and ``timing_s/gen`` is the same name after."""
    auto, _ = _auto()
    assert {"timing_s/gen": 1.5} == auto.apply({"timing_s/gen": 1.5})
    assert auto.chosen is None and not auto.identity  # still watching: no fast path skips it
    assert {"entropy": 1.2} == auto.apply({"actor/entropy": 1.2})
    assert {"timing_s/gen": 1.6} == auto.apply({"timing_s/gen": 1.6})


def test_keys_of_no_framework_stay_as_written_and_the_map_becomes_the_identity():
    auto, said = _auto()
    for step in range(DETECT_RECORDS):
        assert {"my_loss": float(step)} == auto.apply({"my_loss": float(step)})
    assert auto.identity and auto.chosen is None and [] == said
    # A framework's key after the choice is made stays as written too: no series changes name.
    assert {"actor/entropy": 1.0} == auto.apply({"actor/entropy": 1.0})


def test_a_key_other_maps_change_too_chooses_no_map_so_its_series_never_splits():
    """``lr`` is renamed by OpenRLHF's map but logged by other loops too: had a later
    ``policy_loss`` chosen openrlhf, ``lr`` would turn into ``learning_rate`` mid-run."""
    auto, said = _auto()
    assert {"lr": 1e-5} == auto.apply({"lr": 1e-5})
    assert auto.identity and [] == said
    assert {"lr": 1e-5, "policy_loss": 0.1} == auto.apply({"lr": 1e-5, "policy_loss": 0.1})


def test_keys_of_two_frameworks_choose_none_and_say_which():
    auto, said = _auto()
    metrics = {"actor/pg_loss": 0.1, "policy_loss": 0.2}
    assert metrics == auto.apply(dict(metrics))
    assert auto.identity and auto.chosen is None
    assert "more than one framework (verl's actor/pg_loss; openrlhf's policy_loss)" in said[0]


def test_an_explicit_field_map_or_a_named_presets_map_is_no_automatic_choice():
    assert not isinstance(session_field_map(["actor/entropy=entropy"]), AutoFieldMap)
    none = session_field_map(["none"])
    assert not isinstance(none, AutoFieldMap) and none.identity
    verl = session_field_map([], regex="verl")
    assert not isinstance(verl, AutoFieldMap) and verl.mapping["actor/entropy"] == "entropy"
    assert isinstance(session_field_map([]), AutoFieldMap)
    assert isinstance(session_field_map([], regex="kv"), AutoFieldMap)  # kv names no map
    assert isinstance(session_field_map([]), FieldMap)


# -- through the real CLI --------------------------------------------------------------------------

def _verl_collapse_steps(steps: int = 30) -> list[dict[str, Any]]:
    """A verl GRPO run going wrong as such runs do: the policy's entropy collapses from step 10
    (halving a step) and ``actor/pg_loss`` is NaN at step 25; floats as json writes them."""
    out = []
    for step in range(1, steps + 1):
        metrics = {k: float(v) for k, v in verl_step_metrics(step, critic=False).items()}
        metrics["actor/entropy"] = 1.2 if step < 10 else max(1.2 * 0.5 ** (step - 9), 1e-5)
        if step == 25:
            metrics["actor/pg_loss"] = math.nan
        out.append(metrics)
    return out


def _write_steps(path: Path, steps: list[dict[str, Any]]) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for step, metrics in enumerate(steps, 1):  # json writes NaN, which the parser reads
            handle.write(json.dumps({"step": step, "metrics": metrics}) + "\n")
    return path


def _fired(alerts: Path) -> set[str]:
    if not alerts.exists():
        return set()
    return {a["rule"] for a in map(json.loads, alerts.read_text().splitlines())
            if not a["message"].startswith("resolved")}


def test_monitor_judges_a_canonical_verl_run_and_says_which_map_it_chose(tmp_path: Path):
    events = _write_steps(tmp_path / "events.jsonl", _verl_collapse_steps())
    alerts = tmp_path / "alerts.jsonl"
    result = run_cli("monitor", str(events), "--once", "--alerts", str(alerts))
    err = result.stderr.decode() + result.stdout.decode()
    assert 2 == result.returncode, err
    assert {"common.nonfinite_loss", "grpo.entropy_collapse"} <= _fired(alerts), err
    assert "keys written as verl's" in err and "the verl field map applies" in err
    assert "nothing judged" not in err


def test_monitor_judges_verl_one_metric_lines(tmp_path: Path):
    events = tmp_path / "events.jsonl"
    with open(events, "w", encoding="utf-8") as handle:
        for step, metrics in enumerate(_verl_collapse_steps(), 1):
            for name in ("timing_s/gen", "actor/pg_loss", "actor/entropy", "critic/score/mean"):
                handle.write(json.dumps({"step": step, "name": name,
                                         "value": metrics[name]}) + "\n")
    alerts = tmp_path / "alerts.jsonl"
    result = run_cli("monitor", str(events), "--once", "--alerts", str(alerts))
    err = result.stderr.decode() + result.stdout.decode()
    assert 2 == result.returncode, err
    assert {"common.nonfinite_loss", "grpo.entropy_collapse"} <= _fired(alerts), err


def test_check_judges_a_canonical_verl_run(tmp_path: Path):
    events = _write_steps(tmp_path / "events.jsonl", _verl_collapse_steps())
    result = run_cli("check", str(events), "--json")
    runs = json.loads(result.stdout)
    assert 2 == result.returncode, result.stderr.decode()
    assert {"common.nonfinite_loss", "grpo.entropy_collapse"} <= {
        a["rule"] for a in runs[0]["alerts"]}


def test_run_judges_canonical_verl_lines_the_command_prints(tmp_path: Path):
    events = _write_steps(tmp_path / "events.jsonl", _verl_collapse_steps())
    script = f"import sys; sys.stdout.buffer.write(open({str(events)!r}, 'rb').read())"
    result = run_cli("run", "--run-dir", str(tmp_path / "run"), "--",
                     sys.executable, "-c", script, timeout=120)
    err = result.stderr.decode() + result.stdout.decode()
    assert "common.nonfinite_loss" in _fired(tmp_path / "run" / "alerts.jsonl"), err
    assert "keys written as verl's" in err


@pytest.mark.parametrize("field_map", ["none", "actor/grad_norm=grad_norm"])
def test_an_explicit_field_map_wins_over_the_keys(tmp_path: Path, field_map: str):
    """With ``--field-map`` the verl map is not chosen: the NaN ``actor/pg_loss`` is no
    ``loss`` and the collapsing ``actor/entropy`` no ``entropy``, so neither rule fires."""
    events = _write_steps(tmp_path / "events.jsonl", _verl_collapse_steps())
    alerts = tmp_path / "alerts.jsonl"
    result = run_cli("monitor", str(events), "--once", "--alerts", str(alerts),
                     "--field-map", field_map)
    err = result.stderr.decode() + result.stdout.decode()
    assert not {"common.nonfinite_loss", "grpo.entropy_collapse"} & _fired(alerts), err
    assert "keys written as" not in err


def test_keys_of_no_framework_are_kept_and_said_to_be_unjudged(tmp_path: Path):
    events = _write_steps(tmp_path / "events.jsonl",
                          [{"my/loss": 1.0, "my/entropy": 0.5} for _ in range(5)])
    result = run_cli("monitor", str(events), "--once")
    err = result.stderr.decode() + result.stdout.decode()
    assert 1 == result.returncode, err  # degraded: nothing judged, as before
    assert "nothing judged" in err and "my/entropy" in err and "keys written as" not in err
