"""Rule selection in a monitoring session: the detected trainer's pack joins `common`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainguard.monitor.session import MonitorOptions, run_monitor
from trainguard.rules import detect

#: What TRL's DPOTrainer logs besides the loss (trl.md), enough for detection.
DPO_KEYS = {k: 0.1 for k in ("rewards/chosen", "rewards/rejected", "rewards/margins",
                             "rewards/accuracies", "logps/chosen", "logps/rejected")}

PACK = """\
pack: fake_dpo
rules:
  - id: fake.dpo_loss_high
    trainers: [dpo]
    metric: loss
    condition: "> 0.6"
    severity: high
  - id: fake.grpo_only
    trainers: [grpo]
    metric: loss
    condition: "> 0.6"
    severity: high
"""


def test_detected_trainer_pack_is_added_and_filtered(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    """DPO keys: the dpo pack's rules run from the detecting record on, its grpo rule does not."""
    pack = tmp_path / "fake_dpo.yaml"
    pack.write_text(PACK)
    monkeypatch.setitem(detect.DEFAULT_PACKS, "dpo", str(pack))
    events = tmp_path / "e.jsonl"
    events.write_text("".join(json.dumps({"step": i, "metrics": {"loss": 0.69, **DPO_KEYS}}) + "\n"
                              for i in range(1, 4)))
    verdict = run_monitor(MonitorOptions(source=str(events), once=True, quiet=True))
    assert [("fake.dpo_loss_high", 1)] == [(a.rule, a.step) for a in verdict.alerts]


def test_set_rule_reaches_rules_of_the_detected_pack(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    """--set-rule for a rule of a pack added later applies once that pack is added."""
    pack = tmp_path / "fake_dpo.yaml"
    pack.write_text(PACK)
    monkeypatch.setitem(detect.DEFAULT_PACKS, "dpo", str(pack))
    events = tmp_path / "e.jsonl"
    events.write_text("".join(json.dumps({"step": i, "metrics": {"loss": 0.69, **DPO_KEYS}}) + "\n"
                              for i in range(1, 4)))
    verdict = run_monitor(MonitorOptions(source=str(events), once=True, quiet=True,
                                         set_rules=["fake.dpo_loss_high.for=3"]))
    assert [("fake.dpo_loss_high", 3)] == [(a.rule, a.step) for a in verdict.alerts]
