"""Rules: the condition language, the rule models, and the built-in packs (YAML data).

Rules do no I/O beyond loading their own YAML; evaluation lives in the monitor's engine.
The names below are imported on first use (module ``__getattr__``), so importing one submodule
(``trainguard.rules.models``, say) does not import the loader, the YAML parser and the DSL.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainguard.rules.loader import CompiledRule, builtin_pack_names, load_pack, load_rules
    from trainguard.rules.models import Action, Rule, RulePack, Severity

__all__ = ["Action", "CompiledRule", "Rule", "RulePack", "Severity", "builtin_pack_names",
           "load_pack", "load_rules"]

_HOME = {"Action": "models", "Rule": "models", "RulePack": "models", "Severity": "models",
         "CompiledRule": "loader", "builtin_pack_names": "loader", "load_pack": "loader",
         "load_rules": "loader"}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'trainguard.rules' has no attribute {name!r}")
    return getattr(import_module(f"trainguard.rules.{home}"), name)
