"""The route's limits on names and addresses, stated once.

The config check (vnet.core.config) refuses a file that the route would refuse at
run time, and the route (vnet.core.registry, vnet.route.service) checks what nodes
send: both use these constants and checks, so they cannot drift apart.

Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import re

# serveids are 1-999 (0: "assign one"), as in the original.
SERVEID_MAX = 999
# Spare Accept streams a node may hold per serve ([vnet] spares): the route
# refuses more, and the config check refuses a setting above it.
SPARES_MAX = 16
# A node's name and group, a serve's name, the NAME of [serve.NAME] / [use.NAME].
NAME_MAX = 64
# A serve's free-text info.
INFO_MAX = 256
# A host name or address: DNS allows 253 characters.
HOST_MAX = 253
# How much of a bad value an error message repeats: a 10 MB name is not echoed.
SHOWN_MAX = 40

# RFC 1123 labels, plus "_" (found in real internal names and accepted by resolvers).
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def shown(value: str) -> str:
    """value as an error message repeats it: quoted, and cut if long."""
    if len(value) <= SHOWN_MAX:
        return repr(value)
    return f"{value[:SHOWN_MAX]!r}... ({len(value)} characters)"


def quoted_if_odd(value: str) -> str:
    """value as it is when it prints safely (a path, a variable's name); else shown()."""
    if value.isprintable() and len(value) <= HOST_MAX:
        return value
    return shown(value)


def text_problem(value: str, limit: int) -> str:
    """Why value is not an acceptable name or info text ("" when it is).

    Printable only: a NUL, a newline or a right-to-left override in a name
    would garble every listing and log line that shows it.
    """
    if len(value) > limit:
        return f"is longer than {limit} characters ({len(value)})"
    if not value.isprintable():
        bad = next(ch for ch in value if not ch.isprintable())
        return f"contains a control or invisible character (U+{ord(bad):04X})"
    return ""


def host_problem(value: str) -> str:
    """Why value is not an IP address or a host name ("" when it is one)."""
    if len(value) > HOST_MAX:
        return f"is longer than {HOST_MAX} characters ({len(value)}), too long for a host name"
    try:
        ipaddress.ip_address(value)
        return ""
    except ValueError:
        pass
    labels = value[:-1].split(".") if value.endswith(".") else value.split(".")
    # An all-digit last label is a mistyped address (999.1.1.1), not a name.
    if value and all(_LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit():
        return ""
    hint = " (write IPv6 addresses without brackets)" if value.startswith("[") else ""
    return f"{shown(value)} is not an IP address or host name{hint}"
