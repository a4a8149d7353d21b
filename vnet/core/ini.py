"""The INI syntax of config.ini, read in one pass, every problem collected.

The original's format as Python's configparser read it (strict, no
interpolation, `;` and `#` comments, also after a value when a space comes
before them), but with the line of every section and key kept, so that each
problem names its line, and with problems appended to a collector instead of
raised, so that one pass finds them all: `--check` and the real start call
the same code and see the same problems. One difference: an indented line is
a line of its own, not the continuation of the value above (the format has
no multi-line values, and a continued value only failed later, obscurely).

Pure: text in, sections and problems out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from vnet.core.errors import ConfigError
from vnet.core.limits import SHOWN_MAX

# A comment starts at ; or # at the start of a line or after white space
# (configparser's inline_comment_prefixes rule): "info=a;b" keeps its ";".
_COMMENT = re.compile(r"(?:^|(?<=\s))[;#]")


def label(name: str) -> str:
    """A section or key name as a message shows it: escaped, and cut if long."""
    if len(name) <= SHOWN_MAX * 2 and name.isprintable():
        return name
    cut = name[: SHOWN_MAX * 2]
    return repr(cut)[1:-1] + ("..." if len(cut) < len(name) else "")


class Problems:
    """What is wrong with one config file: errors refuse it, warnings do not."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.errors: list[ConfigError] = []
        self.warnings: list[ConfigError] = []

    def _make(
        self, line: int | None, section: str | None, key: str | None, why: str
    ) -> ConfigError:
        return ConfigError(
            self.path,
            None if section is None else label(section),
            None if key is None else label(key),
            why,
            line,
        )

    def error(self, line: int | None, section: str | None, key: str | None, why: str) -> None:
        self.errors.append(self._make(line, section, key, why))

    def warn(self, line: int | None, section: str | None, key: str | None, why: str) -> None:
        self.warnings.append(self._make(line, section, key, why))

    def add(self, error: ConfigError) -> None:
        """An error found outside the file (a token file, a certificate)."""
        self.errors.append(error)

    def in_order(self) -> list[ConfigError]:
        """The errors in file order; those of no line (a missing section) first."""
        return sorted(self.errors, key=lambda e: e.line or 0)

    def raise_first(self) -> None:
        if self.errors:
            raise self.in_order()[0]


@dataclass(frozen=True)
class Entry:
    value: str
    line: int


@dataclass
class Section:
    name: str
    line: int
    entries: dict[str, Entry] = field(default_factory=dict)


def read_ini(text: str, problems: Problems) -> dict[str, Section]:
    """The sections of text by name, in file order.

    A section or key given twice is an error; the first one counts, so the
    rest of the file is still checked against it.
    """
    sections: dict[str, Section] = {}
    current: Section | None = None
    # Inside the body of a section given twice, or after a broken header:
    # its keys are neither checked nor reported as outside any section.
    skipping = False
    # Windows editors may start the file with a byte-order mark.
    text = text.removeprefix("\ufeff")
    for number, raw in enumerate(text.split("\n"), 1):
        comment = _COMMENT.search(raw)
        line = (raw[: comment.start()] if comment else raw).strip()
        if not line:
            continue
        if line.startswith("["):
            current, skipping = None, True
            if not line.endswith("]") or len(line) < 3:
                problems.error(number, None, None, f"{_shown(line)} is not a [SECTION] header")
                continue
            name = line[1:-1]
            first = sections.get(name)
            if first is not None:
                problems.error(
                    number, name, None, f"section appears twice (first at line {first.line})"
                )
                continue
            current, skipping = Section(name, number), False
            sections[name] = current
            continue
        if skipping:
            continue
        delimiter = _delimiter(line)
        if current is None:
            problems.error(number, None, None, "a key outside any [section]")
            skipping = True
            continue
        if delimiter < 0:
            problems.error(number, current.name, None, f"{_shown(line)} is not KEY=VALUE")
            continue
        key = line[:delimiter].strip().lower()
        if not key:
            problems.error(number, current.name, None, f"{_shown(line)} has no key before the =")
            continue
        known = current.entries.get(key)
        if known is not None:
            problems.error(
                number, current.name, key, f"key appears twice (first at line {known.line})"
            )
            continue
        current.entries[key] = Entry(line[delimiter + 1 :].strip(), number)
    return sections


def _delimiter(line: str) -> int:
    """Where the key ends: at the first = or : (both are configparser's)."""
    found = [i for i in (line.find("="), line.find(":")) if i >= 0]
    return min(found) if found else -1


def _shown(line: str) -> str:
    cut = line[:SHOWN_MAX]
    return repr(cut) + ("..." if len(cut) < len(line) else "")
