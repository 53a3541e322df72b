"""Choosing a framework's field map from the keys a run writes, when the user names none.

A verl run written to canonical JSONL (``{"step": 3, "metrics": {"actor/pg_loss": ...}}``, or
one-metric lines with verl's names) needs the ``verl`` field map as much as verl's console
lines do (the stdout presets bring theirs, :mod:`.stdout`): without it ``actor/entropy`` is no
``entropy`` and a NaN ``actor/pg_loss`` no NaN ``loss``. :class:`AutoFieldMap` is the session's
field map when no ``--field-map`` is given; it watches the keys of the first records and picks
the map of the one framework whose own keys it sees (:data:`FRAMEWORKS`), says which and why,
and from then on is that map.

Never a series under two names: until the choice is made every record passes unchanged, so the
choice is made at the first record holding any key a candidate map would change. A key only
one framework logs (``actor/pg_loss``, ``policy_loss``) picks that framework; a key several
maps change (``lr``, ``train/loss``: TRL's and Accelerate's maps fold them too), or the keys of
two frameworks at once, pick none: the keys stay as written, as they always did. After
:data:`DETECT_RECORDS` records that no map would change, none is chosen either (the map is then
the identity, and the loop's fast paths apply).

:func:`session_field_map` is the one place ``monitor``, ``check`` and ``run`` build their
field map: ``--field-map`` (``none`` keeps every key as written) wins, then a named stdout
preset's own map (``--regex verl``), then this choice.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from trainguard.monitor.ingest.normalize import FieldMap, load_field_map

__all__ = ["DETECT_RECORDS", "FRAMEWORKS", "AutoFieldMap", "Framework", "session_field_map"]

#: Records (or one-metric blocks) looked at before the keys are taken as no framework's.
DETECT_RECORDS = 50
#: Marking keys named in the line that announces the choice.
_SHOWN = 3


@dataclass(frozen=True, slots=True)
class Framework:
    """A framework whose keys pick its field-map preset: keys (or key prefixes) it alone logs."""

    #: The field-map preset (``trainguard/presets/fields/NAME.yaml``).
    name: str
    keys: frozenset[str]
    prefixes: tuple[str, ...] = ()
    #: Prefixes its trackers add to every key (OpenRLHF's W&B ``train/``), dropped before the
    #: keys are compared.
    folded: tuple[str, ...] = ()

    def marks(self, key: str) -> bool:
        """Whether ``key`` is one only this framework logs."""
        for prefix in self.folded:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        return key in self.keys or key.startswith(self.prefixes)


#: verl: the prefixes of its actor and critic workers and ``response_length/`` (metric_utils),
#: which cover every key its field map renames or copies, and ``training/``'s two keys.
#: OpenRLHF: the PPO actor/critic status and its SFT/KTO/DPO trainers' own loss names, not
#: ``lr``, ``kl``, ``reward`` or ``entropy_loss``, which other loops log too (rules detect.py
#: reads the trainer kind from the same keys).
FRAMEWORKS: tuple[Framework, ...] = (
    Framework("verl", frozenset({"training/epoch", "training/global_step"}),
              prefixes=("actor/", "critic/", "response_length/")),
    Framework("openrlhf", frozenset({
        "policy_loss", "critic_loss", "actor_lr", "critic_lr", "actor_grad_norm",
        "critic_grad_norm", "ppo_clip_ratio", "ppo_kl", "gpt_loss", "kto_loss",
        "chosen_reward", "reject_reward", "rollout/response_length_mean"}),
        folded=("train/",)),
)


@dataclass(frozen=True, slots=True)
class _Candidate:
    """A framework with its field map loaded, and what that map changes."""

    framework: Framework
    field_map: FieldMap

    def touches(self, key: str) -> bool:
        """Whether the map would rename, copy or strip ``key``."""
        fm = self.field_map
        return key in fm.mapping or key in fm.aliases or key.startswith(fm.prefixes)


class AutoFieldMap(FieldMap):
    """The identity until the first records' keys name a framework, then its field map (see
    the module doc); ``say`` is told the choice. :attr:`chosen` names it (``None``: none, or
    not chosen yet)."""

    __slots__ = ("say", "chosen", "_frameworks", "_candidates", "_left", "_decided")

    def __init__(self, say: Callable[[str], None] | None = None,
                 frameworks: Sequence[Framework] = FRAMEWORKS,
                 records: int = DETECT_RECORDS) -> None:
        super().__init__()
        self.say = say
        self.chosen: str | None = None
        self._frameworks = tuple(frameworks)
        #: Loaded on the first record: a session that reads nothing loads no preset.
        self._candidates: tuple[_Candidate, ...] | None = None
        self._left = records
        self._decided = not self._frameworks

    @property
    def identity(self) -> bool:
        """True once the choice is made and it is no map: until then every record must come
        through :meth:`apply` (the loop skips it for an identity map)."""
        return self._decided and not self.mapping and not self.aliases and not self.prefixes

    def apply(self, metrics: dict[str, float]) -> dict[str, float]:
        """``metrics`` through the chosen map, choosing it first while it is not chosen."""
        if not self._decided:
            self._decide(metrics.keys())
        return FieldMap.apply(self, metrics)

    def _decide(self, keys: Collection[str]) -> None:
        """Choose from one record's keys, or wait for the next record (module doc)."""
        if self._candidates is None:
            self._candidates = tuple(_Candidate(fw, load_field_map([fw.name]))
                                     for fw in self._frameworks)
        marking = {c.framework.name: [k for k in keys if c.framework.marks(k)]
                   for c in self._candidates}
        hits = [c for c in self._candidates if marking[c.framework.name]]
        if len(hits) == 1:
            self._choose(hits[0], marking[hits[0].framework.name], keys)
            return
        if len(hits) > 1:
            found = "; ".join(f"{c.framework.name}'s {_listed(marking[c.framework.name])}"
                              for c in hits)
            self._finish(f"trainguard: keys of more than one framework ({found}): no field "
                         "map chosen, keys kept as written (--field-map to choose one)")
            return
        if any(c.touches(k) for c in self._candidates for k in keys):
            # A key some map changes that no framework owns (lr, train/loss): mapping it from a
            # later record on would split its series in two, so none is chosen.
            self._finish(None)
            return
        self._left -= 1
        if self._left <= 0:
            self._finish(None)

    def _choose(self, candidate: _Candidate, marking: list[str], keys: Collection[str]) -> None:
        """Become ``candidate``'s map and say so, with what it does to this record's keys."""
        fm = candidate.field_map
        FieldMap.__init__(self, fm.mapping, fm.aliases, fm.prefixes)
        name = candidate.framework.name
        self.chosen = name
        changes = _changes(fm, keys) or _changes(fm, (*fm.mapping, *fm.aliases))
        self._finish(f"trainguard: keys written as {name}'s ({_listed(marking)}): the {name} "
                     f"field map applies ({_listed(changes)}); --field-map to choose another, "
                     "--field-map none to keep the keys as written")

    def _finish(self, message: str | None) -> None:
        self._decided = True
        self._candidates = None
        if message and self.say is not None:
            self.say(message)


def session_field_map(field_maps: Sequence[str], regex: str | None = None,
                      say: Callable[[str], None] | None = None) -> FieldMap:
    """The field map of a ``monitor``, ``check`` or ``run`` session: ``--field-map``'s
    (``field_maps``; ``none`` for no map at all), else the named stdout preset's own map
    (``--regex verl``), else an :class:`AutoFieldMap` telling ``say`` what it chose.

    Raises :class:`~trainguard.exceptions.ConfigError` for a bad ``--field-map``."""
    specs = list(field_maps)
    if not specs and regex is not None:
        # Imported only here: re2 and the presets are not needed for a canonical JSONL file.
        from trainguard.monitor.ingest.stdout import preset_field_maps

        specs = preset_field_maps(regex, specs)
    if specs:
        return load_field_map(specs)
    return AutoFieldMap(say)


def _changes(field_map: FieldMap, keys: Collection[str]) -> list[str]:
    """What ``field_map`` does to ``keys``, one phrase a key it changes."""
    out: list[str] = []
    for key in keys:
        prefix = next((p for p in field_map.prefixes if key.startswith(p) and key != p), None)
        bare = key[len(prefix):] if prefix else key
        if bare in field_map.mapping:
            out.append(f"{key} is {field_map.mapping[bare]}")
        elif bare in field_map.aliases:
            out.append(f"{key} is also {field_map.aliases[bare]}")
        elif prefix:
            out.append(f"{key} is {bare}")
    return out


def _listed(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")
