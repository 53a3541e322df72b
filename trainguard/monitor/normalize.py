"""Normalization: renaming a framework's metric keys to the names rules are written against.

Field maps are YAML data in ``trainguard/presets/fields/NAME.yaml`` (``fields: {source: target}``);
``--field-map a=b`` adds single renames. Keys without a mapping pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path

from trainguard.exceptions import ConfigError, UnknownPackError

__all__ = ["FieldMap", "builtin_field_maps", "load_field_map"]


class FieldMap:
    """A key renaming applied to every record's metrics before the rules see them."""

    __slots__ = ("mapping",)

    def __init__(self, mapping: Mapping[str, str] | None = None) -> None:
        self.mapping: dict[str, str] = dict(mapping or {})

    def apply(self, metrics: dict[str, float]) -> dict[str, float]:
        """Return ``metrics`` with keys renamed; the same dict when nothing needs renaming."""
        mapping = self.mapping
        if not mapping:
            return metrics
        for key in metrics:
            if key in mapping:
                break
        else:
            return metrics
        get = mapping.get
        return {get(k, k): v for k, v in metrics.items()}

    def merged(self, other: FieldMap) -> FieldMap:
        """A map applying ``other``'s renames over this one's."""
        return FieldMap({**self.mapping, **other.mapping})


def builtin_field_maps() -> list[str]:
    """Names of the shipped field-map presets."""
    root = resources.files("trainguard.presets") / "fields"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _parse(text: str, origin: str) -> FieldMap:
    from trainguard.rules.loader import load_yaml

    data = load_yaml(text, origin)
    fields = data.get("fields") if isinstance(data, dict) else None
    if not isinstance(fields, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in fields.items()
    ):
        raise ConfigError("expected 'fields:' mapping source key -> canonical key (strings)",
                          path=origin, field="fields")
    return FieldMap({str(k): str(v) for k, v in fields.items()})


def load_field_map(specs: Iterable[str]) -> FieldMap:
    """Build one map from preset names, YAML files and ``a=b`` pairs, later ones winning."""
    result = FieldMap()
    for spec in specs:
        if "=" in spec and not Path(spec).exists():
            source, _, target = spec.partition("=")
            if not source or not target:
                raise ConfigError(f"--field-map {spec!r}: expected SOURCE=TARGET")
            result = result.merged(FieldMap({source.strip(): target.strip()}))
            continue
        path = Path(spec)
        if path.suffix in (".yaml", ".yml") or path.exists():
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"cannot read field map: {exc.strerror}", path=spec) from exc
            result = result.merged(_parse(text, spec))
            continue
        names = builtin_field_maps()
        if spec not in names:
            raise UnknownPackError(f"unknown field-map preset {spec!r}; built-in: {', '.join(names)}")
        resource = resources.files("trainguard.presets") / "fields" / f"{spec}.yaml"
        result = result.merged(_parse(resource.read_text(encoding="utf-8"), f"<preset {spec}>"))
    return result
