"""Rules: the condition language, the rule models, and the built-in packs (YAML data).

Rules do no I/O beyond loading their own YAML; evaluation lives in the monitor's engine.
"""

from trainguard.rules.loader import CompiledRule, builtin_pack_names, load_pack, load_rules
from trainguard.rules.models import Action, Rule, RulePack, Severity

__all__ = ["Action", "CompiledRule", "Rule", "RulePack", "Severity", "builtin_pack_names",
           "load_pack", "load_rules"]
