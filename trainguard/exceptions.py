"""trainguard's exceptions: one hierarchy, each carrying what the user needs to fix the problem.

::

    TrainguardError
    ├── ConfigError            a rule file, preset or option is wrong (path, line, field)
    │   ├── RuleSyntaxError    a condition does not parse (rule id, column)
    │   └── UnknownPackError   a rule pack or preset name that does not exist
    └── SourceError            an input cannot be opened or read at start

Foreign errors (OSError, ruamel, pydantic) are mapped to these at the boundary with
``raise ... from exc``. A malformed *line* is not an exception: it is a counted skip.
"""

from __future__ import annotations

__all__ = ["ConfigError", "RuleSyntaxError", "SourceError", "TrainguardError", "UnknownPackError"]


class TrainguardError(Exception):
    """Base of every error trainguard raises on purpose."""


class ConfigError(TrainguardError):
    """A configuration mistake: rule file, preset, field map or option."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        self.path, self.line, self.field = path, line, field
        where = ""
        if path:
            where = f"{path}:{line}: " if line else f"{path}: "
        if field:
            where += f"{field}: "
        super().__init__(where + message)


class RuleSyntaxError(ConfigError):
    """A rule condition that does not parse; ``column`` is 1-based in ``text``."""

    def __init__(self, message: str, *, text: str, column: int, rule: str | None = None,
                 path: str | None = None, line: int | None = None) -> None:
        self.text, self.column, self.rule, self.reason = text, column, rule, message
        shown, at = text, column
        if len(text) > 100:  # a huge condition: show the 80 characters around the column
            start = max(0, column - 40)
            shown, at = "..." + text[start:start + 80] + "...", column - start + 3
        pointer = f"\n    {shown}\n    {' ' * (at - 1)}^"
        label = f"rule {rule}: " if rule else ""
        super().__init__(f"{label}{message} at column {column}{pointer}", path=path, line=line,
                         field="condition")


class UnknownPackError(ConfigError):
    """A rule pack, preset or regex preset name that is not built in and not a file."""


class SourceError(TrainguardError):
    """An input that cannot be opened or read when the monitor starts."""
