"""What changed between two NodeConfigs, for the console's `reload`.

Pure. The node applies the result: it starts what was added, stops what was
removed, restarts what changed and leaves the rest (and its open
connections) alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from vnet.core.config import NodeConfig

# [vnet] keys that matter only when the node starts.
START_ONLY = frozenset({"terminal", "startserve", "startuse"})


class _Keyed(Protocol):
    @property
    def key(self) -> str: ...
    @property
    def active(self) -> bool: ...


@dataclass(frozen=True)
class SectionDiff:
    """Changes among the [serve.*] (or [use.*]) sections, by name."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    # Something other than active changed: stop the old one, start the new.
    changed: tuple[str, ...] = ()
    # Only active changed: open or close, nothing to restart.
    toggled: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed or self.toggled)


@dataclass(frozen=True)
class ConfigDiff:
    serves: SectionDiff
    uses: SectionDiff
    # "[section] key" entries that need the node restarted to take effect.
    needs_restart: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.serves or self.uses or self.needs_restart)


def _sections(old: Sequence[_Keyed], new: Sequence[_Keyed]) -> SectionDiff:
    before = {s.key: s for s in old}
    after = {s.key: s for s in new}
    added = tuple(k for k in after if k not in before)
    removed = tuple(k for k in before if k not in after)
    changed: list[str] = []
    toggled: list[str] = []
    unchanged: list[str] = []
    for key in (k for k in after if k in before):
        a, b = before[key], after[key]
        if a == b:
            unchanged.append(key)
        elif dataclasses.replace(a, active=b.active) == b:  # type: ignore[type-var]
            toggled.append(key)
        else:
            changed.append(key)
    return SectionDiff(added, removed, tuple(changed), tuple(toggled), tuple(unchanged))


def _fields_changed(section: str, old: object, new: object, skip: frozenset[str]) -> list[str]:
    return [
        f"[{section}] {f.name}"
        for f in dataclasses.fields(old)  # type: ignore[arg-type]
        if f.name not in skip and getattr(old, f.name) != getattr(new, f.name)
    ]


def diff(old: NodeConfig, new: NodeConfig) -> ConfigDiff:
    return ConfigDiff(
        serves=_sections(old.serves, new.serves),
        uses=_sections(old.uses, new.uses),
        needs_restart=tuple(
            _fields_changed("route", old.route, new.route, frozenset())
            + (["[route] routes"] if old.routes != new.routes else [])
            + _fields_changed("vnet", old.vnet, new.vnet, START_ONLY)
        ),
    )
