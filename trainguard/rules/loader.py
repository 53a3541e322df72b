"""Loading rule packs by name or from YAML files, safely, with located error messages."""

from __future__ import annotations

import io
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from trainguard import builtin_cache
from trainguard.exceptions import ConfigError, RuleSyntaxError, UnknownPackError
from trainguard.rules.dsl import Condition, compile_condition
from trainguard.rules.models import Rule, RulePack
from trainguard.rules.timing import Timing, rule_timing

# ruamel.yaml is imported where YAML is read: a start whose built-in packs come from the cache
# (builtin_cache.py) never imports it.

#: A validated rule with the lines of its entry and of its ``condition:`` in the file.
LocatedRule = tuple[Rule, int | None, int | None]

__all__ = ["CompiledRule", "apply_overrides", "builtin_pack_names", "compile_rule", "load_pack",
           "load_rules", "load_yaml", "parse_pack"]

MAX_YAML_BYTES = 1 << 20
#: Nodes counted with aliases expanded: a rule file has a few thousand; an alias bomb reaches
#: this within milliseconds and is refused before anything walks the expanded tree.
MAX_YAML_NODES = 100_000
_SAFE_TAGS = frozenset(
    "tag:yaml.org,2002:" + t
    for t in ("str", "int", "float", "bool", "null", "map", "seq", "omap", "timestamp"))


class CompiledRule:
    """A validated :class:`Rule` with its condition compiled; what the engine runs."""

    __slots__ = ("rule", "condition", "source")

    def __init__(self, rule: Rule, condition: Condition, source: str) -> None:
        self.rule = rule
        self.condition = condition
        self.source = source

    def timing(self) -> Timing:
        """When this rule can fire (trainguard.rules.timing)."""
        return rule_timing(self.rule, self.condition.fill, self.condition.reaction)


def builtin_pack_names() -> list[str]:
    """Names of the rule packs shipped with trainguard."""
    root = resources.files("trainguard.rules") / "packs"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _children(node: Any) -> list[Any]:
    value = node.value
    if not isinstance(value, list):
        return []
    out: list[Any] = []
    for item in value:
        out.extend(item if isinstance(item, tuple) else (item,))
    return out


def _check_nodes(root: Any, path: str, limit: int) -> None:
    """Refuse object-building tags, and documents over ``limit`` nodes once aliases are expanded.

    An alias is the same node object reached twice, so the expanded size is computed once per
    distinct node (memoized, iterative post-order): a 30-level billion-laughs document costs a
    few hundred steps, not 10^30, and is refused before anything walks the expanded tree.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children = _children(node)
        if not done:
            if key in open_nodes:
                raise ConfigError("a YAML alias refers to itself (a recursive document)",
                                  path=path, line=node.start_mark.line + 1)
            open_nodes.add(key)
            tag = str(getattr(node.tag, "value", node.tag))
            if tag not in _SAFE_TAGS:
                raise ConfigError(f"YAML tag {tag!r} is not allowed: rule files are plain data "
                                  "(mappings, lists, strings, numbers, booleans)", path=path,
                                  line=node.start_mark.line + 1)
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
            continue
        size = 1 + sum(sizes.get(id(c), 0) for c in children)
        if size > limit:
            raise ConfigError(f"more than {limit} YAML nodes once aliases are expanded "
                              "(an alias bomb?); refusing to load", path=path,
                              line=node.start_mark.line + 1)
        sizes[key] = size
        open_nodes.discard(key)


def load_yaml(text: str, path: str) -> Any:
    """Parse YAML safely (plain data tags only), size- and node-capped, keeping line numbers."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"file is larger than {MAX_YAML_BYTES} bytes", path=path)
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    # The round-trip loader keeps line numbers for messages; it never builds Python objects,
    # and the tag check below refuses documents that ask for them instead of keeping them.
    yaml = YAML(typ="rt")
    try:
        root = yaml.compose(io.StringIO(text))
        if root is None:
            return None
        _check_nodes(root, path, MAX_YAML_NODES)
        return YAML(typ="rt").load(io.StringIO(text))
    except RecursionError as exc:
        raise ConfigError("YAML nested too deeply", path=path) from exc
    except YAMLError as exc:
        raise _yaml_error(exc, path) from exc


def _yaml_error(exc: Any, path: str) -> ConfigError:
    """A YAML syntax error located where the mistake is: a quote or bracket left open is
    reported at the line that opened it (ruamel's context), not where the parser gave up (the
    end of the file, or the next line)."""
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context, opened = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and opened is not None and (line is None or opened.line + 1 < line):
        where = f"line {line}" if line is not None else "the end"
        what = context.removeprefix("while scanning ").removeprefix("while parsing ")
        return ConfigError(f"invalid YAML: the {what} that starts here (column "
                           f"{opened.column + 1}) is not closed: {problem} at {where}; is a "
                           "quote or bracket left open?", path=path, line=opened.line + 1)
    return ConfigError(f"invalid YAML: {problem}", path=path, line=line)


def _line_of(data: Any, loc: tuple[Any, ...]) -> int | None:
    """Best-effort source line of the pydantic error location ``loc`` in ruamel data."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    node, line = data, None
    for key in loc:
        if isinstance(node, CommentedMap) and key in node:
            try:
                line = node.lc.key(key)[0] + 1
            except (KeyError, TypeError, AttributeError):
                pass
            node = node[key]
        elif isinstance(node, CommentedSeq) and isinstance(key, int) and key < len(node):
            try:
                line = node.lc.item(key)[0] + 1
            except (KeyError, TypeError, AttributeError):
                pass
            node = node[key]
        else:
            break
    return line


def _rule_ids(data: Any, loc: tuple[Any, ...]) -> str:
    try:
        if loc[0] == "rules" and isinstance(loc[1], int):
            return f"rule {data['rules'][loc[1]].get('id', '#' + str(loc[1]))}: "
    except (IndexError, KeyError, TypeError, AttributeError):
        pass
    return ""


_RULE_FIELDS = sorted(a or n for n, f in Rule.model_fields.items() for a in [f.alias])
_PACK_FIELDS = sorted(RulePack.model_fields)
_TEXT_FIELDS = frozenset({"metric", "condition", "message", "recommendation", "reference"})


def _explain(error: Any) -> str:
    """A pydantic error as a person reads it, naming what would be valid."""
    kind, loc = error["type"], error["loc"]
    if kind == "extra_forbidden":
        valid = _RULE_FIELDS if len(loc) > 1 else _PACK_FIELDS
        return f"unknown field {loc[-1]!r}; valid fields: {', '.join(valid)}"
    if kind == "missing":
        return "missing required field"
    got = error.get("input")
    got_text = f" (got {got!r})" if isinstance(got, str | int | float | bool) else ""
    if kind == "enum":
        expected = error.get("ctx", {}).get("expected", "")
        return f"must be one of {expected}{got_text}"
    if kind == "literal_error":
        return f"must be one of {error.get('ctx', {}).get('expected', '')}{got_text}"
    msg = str(error["msg"]).removeprefix("Value error, ")
    return msg + got_text


#: One mistake in a rule file: (line, field, what is wrong).
Mistake = tuple[int | None, str | None, str]


def _validation_mistakes(exc: ValidationError, data: Any, data_for_model: Any) -> list[Mistake]:
    """Every mistake pydantic found, each with its line and field."""
    out: list[Mistake] = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        line = _line_of(data, loc if not isinstance(data, list) else loc[1:])
        field = ".".join(str(p) for p in loc)
        out.append((line, field, f"{_rule_ids(data_for_model, loc)}{_explain(error)}"))
    return out


def _mistakes_error(mistakes: list[Mistake], path: str) -> ConfigError:
    """All of a file's mistakes in one error, in line order: the first as the error's own
    location, the others one per line as ``path:line: field: text``."""
    ordered = sorted(mistakes, key=lambda m: (m[0] is None, m[0] or 0))
    first_line, first_field, first_text = ordered[0]
    lines = [first_text] + [f"{path}:{line or '?'}: " + (f"{field}: " if field else "") + text
                            for line, field, text in ordered[1:]]
    if len(ordered) > 1:
        lines.append(f"{len(ordered)} mistakes in {path}")
    return ConfigError("\n".join(lines), path=path, line=first_line, field=first_field)


def _raw_condition_mistakes(data_for_model: Any, seq: Any, skip: set[int]) -> list[Mistake]:
    """Conditions that do not compile, read from the raw entries, so that a file with other
    mistakes still gets its condition mistakes listed too (``skip``: entries already
    reported for their condition)."""
    out: list[Mistake] = []
    entries = data_for_model.get("rules") if isinstance(data_for_model, dict) else None
    if not isinstance(entries, list):
        return out
    for index, entry in enumerate(entries):
        if index in skip or not isinstance(entry, dict):
            continue
        condition, metric = entry.get("condition"), entry.get("metric")
        if not isinstance(condition, str) or not isinstance(metric, str):
            continue
        try:
            compile_condition(condition, metric, str(entry.get("id", index)))
        except RuleSyntaxError as exc:
            line = None
            try:
                line = seq[index].lc.key("condition")[0] + 1
            except (KeyError, TypeError, AttributeError, IndexError):
                pass
            rule = entry.get("id", f"#{index}")
            pointer = f"\n    {exc.text}\n    {' ' * (exc.column - 1)}^"
            out.append((line, f"rules.{index}.condition",
                        f"rule {rule}: {exc.reason} at column {exc.column}{pointer}"))
        except ConfigError as exc:
            out.append((None, f"rules.{index}.condition", str(exc)))
    return out


def parse_pack(text: str, path: str) -> list[CompiledRule]:
    """Validate and compile the rules of one YAML document (a pack, or a bare rule list).

    Every mistake is reported at once (fields, conditions, duplicate ids), each with its
    line, so a user fixes a file in one pass, not one error per run."""
    located = _parse_located(text, path)
    compiled: list[CompiledRule] = []
    mistakes: list[Mistake] = []
    errors: list[RuleSyntaxError] = []
    for index, (rule, line, cond_line) in enumerate(located):
        try:
            compiled.append(compile_rule(rule, path, cond_line, line))
        except RuleSyntaxError as exc:
            errors.append(exc)
            pointer = f"\n    {exc.text}\n    {' ' * (exc.column - 1)}^"
            mistakes.append((cond_line, f"rules.{index}.condition",
                             f"rule {rule.id}: {exc.reason} at column {exc.column}{pointer}"))
    if len(errors) == 1:
        raise errors[0]  # one mistake: its own error, with the column
    if mistakes:
        raise _mistakes_error(mistakes, path)
    return compiled


def _parse_located(text: str, path: str) -> list[LocatedRule]:
    """Validate one YAML document: each rule with its line and its condition's line."""
    from ruamel.yaml.comments import CommentedSeq

    data = load_yaml(text, path)
    if isinstance(data, list):
        data_for_model: Any = {"pack": Path(path).stem, "rules": data}
    else:
        data_for_model = data
    if not isinstance(data_for_model, dict):
        raise ConfigError("expected a mapping with 'rules:' (or a list of rules)", path=path)
    data_for_model.setdefault("pack", Path(path).stem)
    seq = data.get("rules") if isinstance(data, dict) else data
    try:
        pack = RulePack.model_validate(dict(data_for_model))
    except ValidationError as exc:
        mistakes = _validation_mistakes(exc, data, data_for_model)
        reported = {int(str(f).split(".")[1]) for _, f, _ in mistakes
                    if f and f.startswith("rules.") and f.endswith(".condition")
                    and f.split(".")[1].isdigit()}
        mistakes += _raw_condition_mistakes(data_for_model, seq, reported)
        raise _mistakes_error(mistakes, path) from exc
    located: list[LocatedRule] = []
    seen: dict[str, int | None] = {}
    for index, rule in enumerate(pack.rules):
        line = None
        if isinstance(seq, CommentedSeq):
            try:
                line = seq.lc.item(index)[0] + 1
            except (KeyError, TypeError, AttributeError):
                line = None
        if rule.id in seen:
            raise ConfigError(f"duplicate rule id {rule.id!r} (first at line {seen[rule.id]})",
                              path=path, line=line, field=f"rules.{index}.id")
        seen[rule.id] = line
        cond_line = line
        try:
            cond_line = seq[index].lc.key("condition")[0] + 1  # type: ignore[index]
        except (KeyError, TypeError, AttributeError, IndexError):
            pass
        located.append((rule, line, cond_line))
    return located


def compile_rule(rule: Rule, path: str = "<rule>", cond_line: int | None = None,
                 line: int | None = None) -> CompiledRule:
    """Compile one validated rule's condition; syntax errors carry the path and line."""
    try:
        condition = compile_condition(rule.condition, rule.metric, rule.id)
    except RuleSyntaxError as exc:
        raise RuleSyntaxError(exc.reason, text=exc.text, column=exc.column, rule=rule.id,
                              path=path, line=cond_line) from exc
    return CompiledRule(rule, condition, f"{path}:{line}" if line else path)


def load_pack(name_or_path: str) -> list[CompiledRule]:
    """Load a built-in pack by name, or a YAML rule file by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise ConfigError("rule file not found", path=str(path)) from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read rule file: {exc}", path=str(path)) from exc
        return parse_pack(text, str(path))
    names = builtin_pack_names()
    if name_or_path not in names:
        raise UnknownPackError(
            f"unknown rule pack {name_or_path!r}; built-in packs: {', '.join(names)} "
            "(or give the path of a YAML rule file)"
        )
    resource = resources.files("trainguard.rules") / "packs" / f"{name_or_path}.yaml"
    return _load_builtin(name_or_path, resource.read_text(encoding="utf-8"))


#: What decides a cached pack's content besides its YAML (part of the cache key).
_CACHE_CODE = ("trainguard.rules.models", "trainguard.rules.loader")


def _load_builtin(name: str, text: str) -> list[CompiledRule]:
    """A built-in pack, from the cache when its YAML and this code are unchanged."""
    path = f"<pack {name}>"
    located = _from_cache(builtin_cache.load("packs", name, text, _CACHE_CODE))
    hit = located is not None
    if located is None:
        located = _parse_located(text, path)
    compiled = [compile_rule(rule, path, cond_line, line) for rule, line, cond_line in located]
    if not hit:  # only a pack that parsed, validated and compiled is worth keeping
        builtin_cache.store("packs", name, text, _CACHE_CODE,
                            [[rule.validated_fields(), line, cond_line]
                             for rule, line, cond_line in located])
    return compiled


def _from_cache(entry: Any) -> list[LocatedRule] | None:
    """The located rules of a cache entry; None for a miss or an entry of another shape."""
    if not isinstance(entry, list):
        return None
    try:
        return [(Rule.from_validated(fields), _cached_line(line), _cached_line(cond_line))
                for fields, line, cond_line in entry]
    except (TypeError, ValueError):
        return None


def _cached_line(value: Any) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise TypeError(f"line {value!r} is not an int")


def load_rules(specs: Iterable[str]) -> list[CompiledRule]:
    """Load several packs or files; a later rule with the same id replaces an earlier one."""
    by_id: dict[str, CompiledRule] = {}
    for spec in specs:
        for compiled in load_pack(spec):
            by_id[compiled.rule.id] = compiled
    return [r for r in by_id.values() if r.rule.enabled]


def apply_overrides(rules: list[CompiledRule], overrides: Iterable[str],
                    missing_ok: bool = False) -> list[CompiledRule]:
    """Apply ``ID.FIELD=VALUE`` settings (``--set-rule``), validated through the rule model.

    VALUE is read as a YAML scalar or flow value (``5``, ``high``, ``[dpo, grpo]``, ``false``).
    An unknown rule id lists the ids loaded (or, with ``missing_ok``, is skipped: the rule may
    come with a pack added later); an unknown field lists the valid fields.
    """
    by_id = {r.rule.id: r for r in rules}
    for spec in overrides:
        target, sep, raw = spec.partition("=")
        rule_id, dot, name = target.strip().rpartition(".")
        if not sep or not dot or not rule_id or not name:
            raise ConfigError(f"--set-rule {spec!r}: expected ID.FIELD=VALUE, "
                              "e.g. common.loss_spike.for=10")
        if name not in _RULE_FIELDS or name == "id":
            raise ConfigError(f"--set-rule {spec!r}: unknown field {name!r}; valid fields: "
                              + ", ".join(f for f in _RULE_FIELDS if f != "id"))
        compiled = by_id.get(rule_id)
        if compiled is None and missing_ok:
            continue
        if compiled is None:
            raise ConfigError(f"--set-rule {spec!r}: no loaded rule has id {rule_id!r}; loaded: "
                              + ", ".join(sorted(by_id)))
        value: Any = raw.strip()
        if name not in _TEXT_FIELDS:  # numbers, booleans, lists: read as a YAML flow value
            value = load_yaml(f"v: {raw}" if raw.strip() else "v: ''", "--set-rule")["v"]
        data = compiled.rule.model_dump(by_alias=True)
        data[name] = value
        try:
            rule = Rule.model_validate(data)
        except ValidationError as exc:
            error = exc.errors()[0]
            raise ConfigError(f"--set-rule {spec!r}: {_explain(error)}",
                              field=".".join(str(p) for p in error["loc"])) from exc
        by_id[rule_id] = compile_rule(rule, f"--set-rule {spec}")
    return [r for r in by_id.values() if r.rule.enabled]
