"""Normalization: renaming a framework's metric keys to the names rules are written against.

Field maps are YAML data in ``trainguard/presets/fields/NAME.yaml``, validated at load time by
:class:`FieldMapFile`::

    description: verl PPO/GRPO keys            # optional, shown by nothing but people
    fields:                                     # renames: the source key disappears
      actor/kl_loss: kl
    aliases:                                    # copies: the source key stays as well
      actor/grad_norm: grad_norm
    strip_prefixes: [train/]                    # train/x reads as x, for every x


``strip_prefixes`` fold what trackers add to every key (transformers' reporting callbacks and
OpenRLHF log ``train/x``): the prefix is dropped, then ``fields`` and ``aliases`` apply to the
rest. ``aliases`` exist because some framework keys are read by rules under their own name *and*
stand for a canonical one (verl's ``actor/grad_norm`` feeds ``ppo_strict``'s actor/critic
balance rule and ``common``'s ``grad_norm`` rules). ``--field-map a=b`` adds single renames;
``--field-map FILE`` reads a file of the same shape; ``--field-map none`` maps nothing. Keys
without a mapping pass through unchanged. Without ``--field-map`` the session picks a
framework's map from the keys it reads (:mod:`.auto_map`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from trainguard import builtin_cache
from trainguard.exceptions import ConfigError, UnknownPackError

__all__ = ["NO_FIELD_MAP", "FieldMap", "FieldMapFile", "builtin_field_maps", "load_field_map",
           "parse_field_map"]

#: ``--field-map none``: keep every key as the source wrote it (no framework's map is chosen
#: from the keys either, :mod:`.auto_map`).
NO_FIELD_MAP = "none"


class FieldMap:
    """A key renaming (and aliasing) applied to every record's metrics before the rules see them.

    The map is compiled once: :meth:`apply` first checks whether any key of the record is
    touched at all (the common case for an unmapped framework is "no"), so the per-record cost
    of an unneeded map is one set lookup per key and no new dict.
    """

    __slots__ = ("mapping", "aliases", "prefixes", "_touched", "_plain", "_stripped")

    def __init__(self, mapping: Mapping[str, str] | None = None,
                 aliases: Mapping[str, str] | None = None,
                 prefixes: Iterable[str] = ()) -> None:
        self.mapping: dict[str, str] = dict(mapping or {})
        self.aliases: dict[str, str] = dict(aliases or {})
        self.prefixes: tuple[str, ...] = tuple(dict.fromkeys(prefixes))
        self._touched = frozenset(self.mapping) | frozenset(self.aliases)
        #: With prefixes: keys seen that need nothing, and prefixed keys -> their stripped name
        #: (learned as keys arrive: a run logs the same few dozen keys at every step).
        self._plain: set[str] = set()
        self._stripped: dict[str, str] = {}

    @property
    def identity(self) -> bool:
        """True when the map changes nothing (no renames, aliases or prefixes)."""
        return not self.mapping and not self.aliases and not self.prefixes

    def _strip(self, metrics: dict[str, float]) -> dict[str, float]:
        """``metrics`` with the prefixes dropped (a key logged without one wins)."""
        plain, stripped = self._plain, self._stripped
        if plain.issuperset(metrics):
            return metrics
        for key in metrics:
            if key in plain or key in stripped:
                continue
            prefix = next((p for p in self.prefixes if key.startswith(p) and key != p), None)
            if prefix is None:
                plain.add(key)
            else:
                stripped[key] = key[len(prefix):]
        out = {k: v for k, v in metrics.items() if k not in stripped}
        for key, value in metrics.items():
            name = stripped.get(key)
            if name is not None and name not in out:
                out[name] = value
        return out

    def apply(self, metrics: dict[str, float]) -> dict[str, float]:
        """Return ``metrics`` with keys renamed; the same dict when nothing needs renaming."""
        if self.prefixes:
            metrics = self._strip(metrics)
        touched = self._touched
        if not touched or touched.isdisjoint(metrics):
            return metrics
        # One comprehension is as fast as anything tried (a cached per-layout plan with
        # dict(zip(...)) measured the same): building the new dict is the cost.
        get = self.mapping.get
        out = {get(k, k): v for k, v in metrics.items()}
        for source, target in self.aliases.items():
            if source in metrics and target not in out:  # a key logged natively wins
                out[target] = metrics[source]
        return out

    def merged(self, other: FieldMap) -> FieldMap:
        """A map applying ``other``'s renames and aliases over this one's."""
        return FieldMap({**self.mapping, **other.mapping}, {**self.aliases, **other.aliases},
                        self.prefixes + other.prefixes)

    def __repr__(self) -> str:
        return (f"FieldMap({self.mapping!r}, aliases={self.aliases!r}, "
                f"prefixes={list(self.prefixes)!r})")


_Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class FieldMapFile(BaseModel):
    """The schema of a field-map YAML file (a preset or a user's ``--field-map FILE``)."""

    # Built on the first file validated, not at import: most starts read no field map.
    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)

    description: str = ""
    #: source key -> canonical key; the source key is replaced.
    fields: dict[_Name, _Name] = {}
    #: source key -> canonical key; the source key is kept and the canonical one added.
    aliases: dict[_Name, _Name] = {}
    #: prefixes dropped from every key that has one (``train/``), before the renames.
    strip_prefixes: list[_Name] = []


def builtin_field_maps() -> list[str]:
    """Names of the shipped field-map presets."""
    root = resources.files("trainguard.presets") / "fields"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _explain(error: Any) -> str:
    if error["type"] == "extra_forbidden":
        return f"unknown key; expected one of {', '.join(sorted(FieldMapFile.model_fields))}"
    if error["type"] == "dict_type":
        return "expected a mapping of source key -> canonical key"
    got = error.get("input")
    got_text = f" (got {got!r})" if isinstance(got, str | int | float | bool) else ""
    return str(error["msg"]).removeprefix("Value error, ") + got_text


def parse_field_map(text: str, origin: str) -> FieldMap:
    """Validate one field-map document; every mistake is reported with its line and field."""
    from trainguard.rules.loader import _line_of, load_yaml

    data = load_yaml(text, origin)
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping with 'fields:' (source key -> canonical key)",
                          path=origin)
    try:
        model = FieldMapFile.model_validate(
            {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
             for k, v in data.items()})
    except ValidationError as exc:
        messages: list[str] = []
        first: tuple[int | None, str] | None = None
        for error in exc.errors():
            loc = tuple(error["loc"])
            # A bad value is located at its key; a bad key (a number) at the enclosing map.
            loc = loc[:2] if loc and loc[0] in ("fields", "aliases") else loc
            line, field = _line_of(data, loc), ".".join(str(p) for p in loc)
            if first is None:
                first = (line, field)
                messages.append(_explain(error))
            else:
                messages.append(f"{origin}:{line or '?'}: {field}: {_explain(error)}")
        assert first is not None
        raise ConfigError("\n".join(messages), path=origin, line=first[0],
                          field=first[1]) from exc
    for section in ("fields", "aliases"):
        for source, target in getattr(model, section).items():
            if source == target:
                raise ConfigError(f"{source!r} is mapped to itself; remove the entry",
                                  path=origin, line=_line_of(data, (section, source)),
                                  field=f"{section}.{source}")
    return FieldMap(model.fields, model.aliases, model.strip_prefixes)


def load_field_map(specs: Iterable[str]) -> FieldMap:
    """Build one map from preset names, YAML files and ``a=b`` pairs, later ones winning."""
    result = FieldMap()
    for spec in specs:
        if "=" in spec and not Path(spec).exists():
            source, _, target = spec.partition("=")
            if not source.strip() or not target.strip():
                raise ConfigError(f"--field-map {spec!r}: expected SOURCE=TARGET "
                                  "(e.g. --field-map actor/kl_loss=kl)")
            result = result.merged(FieldMap({source.strip(): target.strip()}))
            continue
        path = Path(spec)
        if path.suffix in (".yaml", ".yml") or path.exists():
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"cannot read field map: {exc.strerror}", path=spec) from exc
            except UnicodeDecodeError as exc:
                raise ConfigError("field map is not UTF-8 text", path=spec) from exc
            result = result.merged(parse_field_map(text, spec))
            continue
        if spec == NO_FIELD_MAP:
            continue  # no map: a choice of its own, which the automatic one never overrides
        names = builtin_field_maps()
        if spec not in names:
            raise UnknownPackError(f"unknown field-map preset {spec!r}; built-in: "
                                   f"{', '.join(names)}; or {NO_FIELD_MAP}, a YAML file or "
                                   "SOURCE=TARGET")
        resource = resources.files("trainguard.presets") / "fields" / f"{spec}.yaml"
        result = result.merged(_builtin_field_map(spec, resource.read_text(encoding="utf-8")))
    return result


#: What decides a cached preset's content besides its YAML (part of the cache key).
_CACHE_CODE = ("trainguard.monitor.ingest.normalize",)


def _builtin_field_map(name: str, text: str) -> FieldMap:
    """A field-map preset, from the cache when its YAML and this module are unchanged."""
    cached = builtin_cache.load("fields", name, text, _CACHE_CODE)
    if (isinstance(cached, dict) and all(_is_str_map(cached.get(k)) for k in ("fields", "aliases"))
            and isinstance(cached.get("prefixes"), list)
            and all(isinstance(p, str) for p in cached["prefixes"])):
        return FieldMap(cached["fields"], cached["aliases"], cached["prefixes"])
    field_map = parse_field_map(text, f"<preset {name}>")
    builtin_cache.store("fields", name, text, _CACHE_CODE,
                        {"fields": field_map.mapping, "aliases": field_map.aliases,
                         "prefixes": list(field_map.prefixes)})
    return field_map


def _is_str_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str)
                                           for k, v in value.items())
