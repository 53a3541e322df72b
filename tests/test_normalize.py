"""Field maps: renames and aliases, the shipped presets, ``--field-map`` through the real CLI."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import pytest

from tests.conftest import run_cli
from trainguard.exceptions import ConfigError, UnknownPackError
from trainguard.monitor.ingest.normalize import (
    FieldMap,
    builtin_field_maps,
    load_field_map,
    parse_field_map,
)


def _rule_metrics() -> set[str]:
    """Every metric name a shipped rule reads, from its ``metric:`` and its condition."""
    names: set[str] = set()
    for pack in (resources.files("trainguard.rules") / "packs").iterdir():
        text = pack.read_text(encoding="utf-8")
        names.update(re.findall(r"^\s+metric: (\S+)", text, flags=re.M))
        for cond in re.findall(r"^\s+condition: (.+)$", text, flags=re.M):
            names.update(re.findall(r"[A-Za-z_][\w/@.-]*(?:/[\w@.-]+)+|[A-Za-z_]\w*", cond))
    return names


def test_rename_replaces_the_key_and_passes_others_through():
    """A renamed key takes the canonical name; unmapped keys are unchanged."""
    fmap = FieldMap({"actor/kl_loss": "kl"})
    assert {"kl": 0.5, "other": 1.0} == fmap.apply({"actor/kl_loss": 0.5, "other": 1.0})


def test_untouched_record_is_returned_as_is():
    """No key to rename: the same dict comes back, no copy on the hot path."""
    metrics = {"loss": 1.0}
    assert FieldMap({"a": "b"}, {"c": "d"}).apply(metrics) is metrics


def test_alias_keeps_the_source_key_and_adds_the_canonical_one():
    """An alias copies: rules on the framework key and on the canonical key both see it."""
    fmap = FieldMap(aliases={"actor/grad_norm": "grad_norm"})
    assert {"actor/grad_norm": 2.0, "grad_norm": 2.0} == fmap.apply({"actor/grad_norm": 2.0})


def test_alias_never_overwrites_a_key_logged_natively():
    """When the record already has the canonical key, that value is kept."""
    fmap = FieldMap(aliases={"actor/grad_norm": "grad_norm"})
    assert {"actor/grad_norm": 2.0, "grad_norm": 3.0} == fmap.apply(
        {"actor/grad_norm": 2.0, "grad_norm": 3.0})


def test_later_specs_win_and_pairs_combine_with_presets():
    """Preset, then SOURCE=TARGET: the pair overrides the preset's entry for that key."""
    fmap = load_field_map(["verl", "actor/kl_loss=kl_to_ref"])
    assert ("kl_to_ref", "entropy") == (fmap.mapping["actor/kl_loss"],
                                        fmap.mapping["actor/entropy"])


def test_shipped_presets_are_the_five_frameworks():
    """trl, grpo, accelerate, openrlhf and verl ship as YAML data."""
    assert ["accelerate", "grpo", "openrlhf", "trl", "verl"] == builtin_field_maps()


@pytest.mark.parametrize("name", ["accelerate", "grpo", "openrlhf", "trl", "verl"])
def test_preset_targets_are_names_rules_read(name: str):
    """Every canonical name a preset produces is read by some rule (or is the epoch)."""
    fmap = load_field_map([name])
    targets = set(fmap.mapping.values()) | set(fmap.aliases.values())
    assert set() == targets - _rule_metrics() - {"epoch"}


@pytest.mark.parametrize("name", ["accelerate", "grpo", "openrlhf", "trl", "verl"])
def test_preset_never_renames_away_a_key_a_rule_reads(name: str):
    """A framework key that a rule reads by its own name may be aliased, never renamed."""
    fmap = load_field_map([name])
    assert set() == set(fmap.mapping) & _rule_metrics()


def test_bad_field_map_names_file_line_and_field(tmp_path: Path):
    """A non-string target and an unknown top-level key: both located, first one first."""
    path = tmp_path / "bad.yaml"
    path.write_text("fields:\n  a: b\n  c: 3\ncopies:\n  x: y\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_field_map([str(path)])
    assert (str(path), 3, "fields.c") == (info.value.path, info.value.line, info.value.field)
    assert f"{path}:4: copies: unknown key" in str(info.value)


def test_self_mapping_is_refused_with_its_line():
    """``loss: loss`` is a mistake worth pointing at, not a silent no-op."""
    with pytest.raises(ConfigError) as info:
        parse_field_map("fields:\n  loss: loss\n", "m.yaml")
    assert ("m.yaml", 2, "fields.loss") == (info.value.path, info.value.line, info.value.field)


def test_unknown_preset_lists_the_built_in_ones():
    """A typo in a preset name names the presets that exist."""
    with pytest.raises(UnknownPackError) as info:
        load_field_map(["vrel"])
    assert "built-in: accelerate, grpo, openrlhf, trl, verl" in str(info.value)


def test_half_pair_is_refused():
    """``--field-map a=`` says what shape is expected."""
    with pytest.raises(ConfigError) as info:
        load_field_map(["a="])
    assert "expected SOURCE=TARGET" in str(info.value)


# -- end to end through the real CLI -------------------------------------------------------------

# (preset, extra CLI args, a healthy step's metrics, the key that turns NaN, the rule that fires)
_CASES = [
    ("verl", [], {"actor/pg_loss": 0.1, "actor/grad_norm": 1.0, "critic/grad_norm": 1.0},
     "actor/grad_norm", "common.nonfinite_grad_norm"),
    ("openrlhf", [], {"policy_loss": 0.1, "actor_lr": 1e-6, "actor_grad_norm": 1.0,
                      "critic_grad_norm": 1.0}, "actor_grad_norm", "common.nonfinite_grad_norm"),
    ("accelerate", [], {"train_loss": 1.0, "lr": 1e-4}, "train_loss", "common.nonfinite_loss"),
    ("trl", [], {"train/loss": 1.0, "train/grad_norm": 1.0}, "train/loss",
     "common.nonfinite_loss"),
    ("grpo", ["--rules", "grpo_safe"], {"train/kl": 0.01, "train/reward": 0.5}, "train/kl",
     "grpo.nonfinite_kl"),
]


def _run(tmp_path: Path, healthy: dict[str, float], bad_key: str,
         *args: str) -> tuple[int, list[str], str]:
    path = tmp_path / "events.jsonl"
    alerts = tmp_path / "alerts.jsonl"
    alerts.unlink(missing_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for step in range(1, 4):
            metrics = dict(healthy)
            if step == 3:
                metrics[bad_key] = "NaN"
            handle.write(json.dumps({"step": step, "metrics": metrics}) + "\n")
    result = run_cli("monitor", str(path), "--once", "--alerts", str(alerts), *args)
    text = alerts.read_text() if alerts.exists() else ""
    fired = [json.loads(x)["rule"] for x in text.splitlines()]
    return result.returncode, fired, result.stderr.decode()


@pytest.mark.parametrize(("preset", "extra", "healthy", "bad_key", "rule"), _CASES,
                         ids=[c[0] for c in _CASES])
def test_cli_field_map_preset_fires_a_rule_on_framework_keys(
        tmp_path: Path, preset: str, extra: list[str], healthy: dict[str, float],
        bad_key: str, rule: str):
    """``--field-map PRESET``: a NaN under the framework's key fires the canonical rule."""
    code, fired, err = _run(tmp_path, healthy, bad_key, "--field-map", preset, *extra)
    assert (2, [rule]) == (code, fired), err


def test_cli_field_map_none_keeps_the_framework_key_so_nothing_fires(tmp_path: Path):
    """The control: the same verl file with ``--field-map none`` (no map, not even the one its
    keys would choose, test_auto_field_map.py) raises no grad_norm alert."""
    code, fired, err = _run(tmp_path, _CASES[0][2], "actor/grad_norm", "--field-map", "none")
    assert (0, []) == (code, fired), err


def test_cli_field_map_pair_renames(tmp_path: Path):
    """``--field-map my_loss=loss``: a NaN under the user's own key fires the loss rule."""
    code, fired, err = _run(tmp_path, {"my_loss": 1.0}, "my_loss", "--field-map", "my_loss=loss")
    assert (2, ["common.nonfinite_loss"]) == (code, fired), err


def test_cli_field_map_file_renames(tmp_path: Path):
    """``--field-map FILE.yaml`` with renames and aliases works like a preset."""
    fmap = tmp_path / "mine.yaml"
    fmap.write_text("fields:\n  my_loss: loss\naliases:\n  my_gn: grad_norm\n", encoding="utf-8")
    code, fired, err = _run(tmp_path, {"my_loss": 1.0, "my_gn": 1.0}, "my_gn",
                            "--field-map", str(fmap))
    assert (2, ["common.nonfinite_grad_norm"]) == (code, fired), err


def test_cli_bad_field_map_file_is_located_exit_one(tmp_path: Path):
    """A bad field-map file: exit 1, file, line and field on stderr, no traceback."""
    fmap = tmp_path / "bad.yaml"
    fmap.write_text("fields:\n  my_loss: [loss]\n", encoding="utf-8")
    code, fired, err = _run(tmp_path, {"my_loss": 1.0}, "my_loss", "--field-map", str(fmap))
    assert (1, []) == (code, fired)
    assert f"{fmap}:2: fields.my_loss: Input should be a valid string" in err
    assert "Traceback" not in err
