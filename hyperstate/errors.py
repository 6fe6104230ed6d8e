"""The exception tree of hyperstate.

Every error says what was expected, what was found, and where. Where is kept as data on
the exception (``path``, ``line``, ``col``, ``override``) and only formatted into text
when the message is rendered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ConfigError",
    "HyperstateError",
    "Issue",
    "ParseError",
    "format_path",
]

PathSegment = str | int | object
"""A step into a value: a field name, a list index, or a map key."""


class HyperstateError(Exception):
    """Base class of every error raised by hyperstate."""


class ParseError(HyperstateError, ValueError):
    """RON text that does not parse.

    Attributes:
        path: the file the text came from, or ``"<string>"``.
        line: 1-based line of the offending spot.
        col: 1-based column of the offending spot.
        msg: what was expected and what was found.
        source_line: the text of that line, shown with a caret under the spot.
    """

    def __init__(self, msg: str, path: str, line: int, col: int, source_line: str) -> None:
        self.msg = msg
        self.path = path
        self.line = line
        self.col = col
        self.source_line = source_line
        super().__init__(str(self))

    def __str__(self) -> str:
        text = self.source_line.expandtabs(1).rstrip("\r\n")
        caret = " " * (self.col - 1) + "^"
        return f"{self.path}:{self.line}:{self.col}: {self.msg}\n    {text}\n    {caret}"

    def __reduce__(self) -> tuple[type[ParseError], tuple[str, str, int, int, str]]:
        return (type(self), (self.msg, self.path, self.line, self.col, self.source_line))


def format_path(path: Sequence[PathSegment]) -> str:
    """Render a value path as users write it: ``optimizer.betas[1]``, ``tags["a.b"]``."""
    out: list[str] = []
    for seg in path:
        if isinstance(seg, bool) or not isinstance(seg, int | str):
            # An enum key (a RON unit variant or a Python Enum member) as it is written.
            name = getattr(seg, "name", None)
            out.append(f"[{name}]" if isinstance(name, str) else f"[{seg!r}]")
        elif isinstance(seg, int):
            out.append(f"[{seg}]")
        elif seg.isidentifier():
            out.append(f".{seg}" if out else seg)
        else:
            out.append(f"[{_quote(seg)}]")
    return "".join(out) or "<root>"


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


@dataclass(frozen=True)
class Issue:
    """One problem found while turning data into typed objects.

    Attributes:
        path: where in the config the bad value is, as a tuple of segments.
        message: what was expected and what was found.
        location: ``file:line:col`` of the value, when it came from a file.
        override: the command-line override that supplied the value, if any.
        hint: a suggestion shown after the place, e.g. ``did you mean 'lr'?``.
    """

    path: tuple[PathSegment, ...]
    message: str
    location: str | None = None
    override: str | None = None
    hint: str | None = None

    def __str__(self) -> str:
        text = f"{self.message} at {format_path(self.path)}" if self.path else self.message
        if self.override is not None:
            text += f" (from override {self.override!r})"
        if self.location is not None:
            text = f"{self.location}: {text}"
        if self.hint:
            text += f"; {self.hint}"
        return text


class ConfigError(HyperstateError, ValueError):
    """Data that does not fit the config class: one or more :class:`Issue` s.

    All problems found in one load are reported together in ``issues``.
    """

    def __init__(self, issues: Sequence[Issue], context: str | None = None) -> None:
        self.issues = tuple(issues)
        self.context = context
        super().__init__(str(self))

    def __str__(self) -> str:
        head = f"{self.context}: " if self.context else ""
        if len(self.issues) == 1:
            return head + str(self.issues[0])
        lines = [f"{head}{len(self.issues)} problems:"]
        lines.extend(f"  - {issue}" for issue in self.issues)
        return "\n".join(lines)

    def __reduce__(self) -> tuple[type[ConfigError], tuple[tuple[Issue, ...], str | None]]:
        return (type(self), (self.issues, self.context))
