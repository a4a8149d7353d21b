"""Writing a NodeConfig back as config.ini, for the console's `save`.

Pure. Sections and keys are rendered from the dataclasses' fields, so keys
that the config learns later are written too; the original's keys come first,
in the original's order, and other keys only when they differ from their
default. checked() proves a config survives the round trip through
parse_node_config before anything is written or changed.

What the node does not model (a route's [group.NAME] sections or its
[route] token keys, in a file shared with the route) is carried over from
the file being replaced, so saving never drops another program's settings.
Comments are not kept.
"""

from __future__ import annotations

import configparser
import dataclasses
from collections.abc import Mapping
from typing import Any

from vnet.core.config import NodeConfig, parse_node_config
from vnet.core.errors import ConfigError

# The original README's key order; other fields follow in declaration order.
_ORDER: dict[str, tuple[str, ...]] = {
    "route": ("ip", "port", "routes"),
    "vnet": (
        "name",
        "group",
        "terminal",
        "startserve",
        "startuse",
        "allow_unserve",
        "unserve_remote",
        "unserve_num",
    ),
    "serve": ("serveid", "type", "ip", "port", "name", "info", "active"),
    "use": ("serveid", "ip", "port", "active"),
}
# Fields of NodeConfig that are about the file, not in it.
_NOT_SECTIONS = frozenset({"path", "warnings", "routes"})
# Fields of a serve or use section that name the section instead.
_SECTION_KEY = "key"

Extras = dict[str, dict[str, str]]


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _section_lines(kind: str, record: Any) -> list[str]:
    values = {
        f.name: (getattr(record, f.name), f)
        for f in dataclasses.fields(record)
        if f.name != _SECTION_KEY
    }
    order = [k for k in _ORDER.get(kind, ()) if k in values]
    order += [k for k in values if k not in order]
    lines = []
    for key in order:
        value, spec = values[key]
        if value is None:
            continue  # e.g. a use's port: "the serve's own"
        if key not in _ORDER.get(kind, ()) and value == _default(spec):
            continue
        if key == "serveid":
            lines.append(f"serveid={value:03d}")
        else:
            lines.append(f"{key}={_text(value)}")
    return lines


def _default(spec: dataclasses.Field[Any]) -> object:
    if spec.default is not dataclasses.MISSING:
        return spec.default
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return dataclasses.MISSING


def _sections(config: NodeConfig) -> dict[str, list[str]]:
    """Section name -> its key=value lines, in file order."""
    out: dict[str, list[str]] = {}
    for spec in dataclasses.fields(config):
        if spec.name in _NOT_SECTIONS:
            continue
        value = getattr(config, spec.name)
        if dataclasses.is_dataclass(value):
            out[spec.name] = _section_lines(spec.name, value)
        elif isinstance(value, tuple):
            kind = spec.name.removesuffix("s")  # serves -> [serve.KEY]
            for record in value:
                out[f"{kind}.{getattr(record, _SECTION_KEY)}"] = _section_lines(kind, record)
    if config.routes:
        # Not a section of its own: a key of [route], as the file has it.
        out["route"].append("routes=" + ", ".join(r.address for r in config.routes))
    return out


def extras_of(text: str) -> Extras:
    """What a file holds that a NodeConfig does not: kept when saving over it.

    Raw values, inline comments removed. A file that does not parse has no
    extras to keep (save then simply replaces it).
    """
    parser = configparser.ConfigParser(
        inline_comment_prefixes=(";", "#"), interpolation=None, strict=False
    )
    try:
        parser.read_string(text)
    except configparser.Error:
        return {}
    modelled = _modelled_keys()
    extras: Extras = {}
    for section in parser.sections():
        kind = section.partition(".")[0]
        if kind in ("serve", "use"):
            continue  # the node owns every serve and use: deleted ones stay deleted
        known = modelled.get(section, frozenset())
        kept = {k: v for k, v in parser[section].items() if k not in known}
        if kept:
            extras[section] = kept
    return extras


def _modelled_keys() -> dict[str, frozenset[str]]:
    from vnet.core.config import RouteEndpoint, VnetConfig

    return {
        "route": frozenset(f.name for f in dataclasses.fields(RouteEndpoint)) | {"routes"},
        "vnet": frozenset(f.name for f in dataclasses.fields(VnetConfig)),
    }


def render(config: NodeConfig, extras: Mapping[str, Mapping[str, str]] | None = None) -> str:
    """config.ini text for config, plus extras (sections/keys to carry over)."""
    sections = _sections(config)
    extras = extras or {}
    for name, kept in extras.items():
        lines = sections.setdefault(name, [])
        have = {line.partition("=")[0] for line in lines}
        lines.extend(f"{k}={v}" for k, v in kept.items() if k not in have)
    blocks = ["\n".join([f"[{name}]", *lines]) for name, lines in sections.items()]
    return "\n\n".join(blocks) + "\n"


def checked(config: NodeConfig) -> NodeConfig:
    """config, once it is known to read back as itself; else ConfigError."""
    text = render(config)
    again = parse_node_config(config.path, text)
    if again != config:
        raise ConfigError(config.path, None, None, "would not read back as it is now")
    return config
