"""The monitor: sources, normalization, the rule engine, actions, the daemon loop, reports."""
