"""Compatibility path: the rule-test runner now lives in ``trainguard.monitor.engine.testing``.

``trainguard.rules.testing.run_rule_tests`` and ``replay`` were documented here; they keep working.
The names are looked up on first use, so importing ``trainguard.rules`` never imports the engine.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__: list[str] = []  # nothing to star-import: the names resolve on access

_NAMES = ("CaseResult", "builtin_test_files", "parse_series", "replay", "run_rule_tests",
           "select_rules")


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module 'trainguard.rules.testing' has no attribute {name!r}")
    return getattr(import_module("trainguard.monitor.engine.testing"), name)
