"""`--check`: every problem in a config file, not only the first.

Pure. The parsers stop at the first problem; to find the rest, the key (or
section) at fault is set aside and the file parsed again, until it parses
or nothing more can be set aside. A missing required key gets a stand-in
value so the rest of its section is still checked.
"""

from __future__ import annotations

import configparser
from collections.abc import Callable

from vnet.config import parse_node_config, parse_route_config
from vnet.errors import ConfigError

# Values that let a section with a missing required key be checked further.
_STAND_INS = {"ip": "127.0.0.1", "port": "1"}
_MAX_ROUNDS = 500


def _model(path: str, text: str) -> dict[str, dict[str, str]] | ConfigError:
    lenient = configparser.ConfigParser(
        inline_comment_prefixes=(";", "#"), interpolation=None, strict=False
    )
    try:
        lenient.read_string(text, source=path)
    except configparser.Error as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return ConfigError(path, None, None, first)
    return {s: dict(lenient[s]) for s in lenient.sections()}


def _render(model: dict[str, dict[str, str]]) -> str:
    out = []
    for section, values in model.items():
        out.append(f"[{section}]")
        out.extend(f"{k}={v}" for k, v in values.items())
    return "\n".join(out) + "\n"


def check(path: str, text: str, parse: Callable[[str, str], object]) -> list[ConfigError]:
    """All the problems parse() finds in text, each naming section and key."""
    problems: list[ConfigError] = []
    try:
        parse(path, text)
        return []
    except ConfigError as exc:
        first = exc
    model = _model(path, text)
    if isinstance(model, ConfigError):
        return [model]
    if first.reason in ("section appears twice", "key appears twice"):
        # Strict parsing refuses the file outright; the lenient model has
        # merged the duplicates, so the rest can still be checked.
        problems.append(first)
    for _ in range(_MAX_ROUNDS):
        try:
            parse(path, _render(model))
            break
        except ConfigError as exc:
            if any(str(exc) == str(p) for p in problems):
                break
            problems.append(exc)
            section = model.get(exc.section or "")
            if exc.section == "route" and section is None:
                model = {"route": {"ip": "127.0.0.1", "port": "7749"}, **model}
            elif section is None:
                break
            elif exc.key is None:
                del model[exc.section or ""]
            elif exc.key in _STAND_INS and (
                exc.reason == "is required" or _STAND_INS[exc.key] != section.get(exc.key)
            ):
                # A valid value instead: dropping a required key would only
                # be reported again as missing.
                section[exc.key] = _STAND_INS[exc.key]
            elif exc.key in section:
                del section[exc.key]
            else:
                break
    return problems


def check_node(path: str, text: str) -> list[ConfigError]:
    return check(path, text, parse_node_config)


def check_route(path: str, text: str) -> list[ConfigError]:
    return check(path, text, parse_route_config)
