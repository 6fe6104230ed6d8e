"""The exception tree of hyperstate.

Every error says what was expected, what was found, and where. Where is kept as data on
the exception (``path``, ``line``, ``col``, ``override``) and only formatted into text
when the message is rendered.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "BlobError",
    "ConfigError",
    "ConvertError",
    "DistributedError",
    "HyperstateError",
    "Issue",
    "ParseError",
    "Preempted",
    "ScheduleError",
    "StateError",
    "StorageError",
    "format_int",
    "format_path",
    "format_value",
]

PathSegment = str | int | object
"""A step into a value: a field name, a list index, or a map key."""

ValuePath = tuple[PathSegment, ...]
"""Where a value is inside a config or state: ``("optimizer", "betas", 1)``."""


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


def format_path(where: Sequence[PathSegment]) -> str:
    """Render a value path as users write it: ``optimizer.betas[1]``, ``tags["a.b"]``.

    >>> format_path(("optimizer", "betas", 1))
    'optimizer.betas[1]'
    >>> format_path(("tags", "a.b"))
    'tags["a.b"]'
    """
    out: list[str] = []
    for seg in where:
        if isinstance(seg, bool) or not isinstance(seg, int | str):
            # An enum key (a RON unit variant or a Python Enum member) as it is written.
            name = getattr(seg, "name", None)
            out.append(f"[{name}]" if isinstance(name, str) else f"[{format_value(seg)}]")
        elif isinstance(seg, int):
            out.append(f"[{format_int(int(seg))}]")
        elif seg.isidentifier():
            out.append(f".{seg}" if out else seg)
        else:
            out.append(f"[{_quote(seg)}]")
    return "".join(out) or "<root>"


# Long numbers in an override shown by a message are abbreviated, as format_int does.
_long_number = re.compile(r"0[xX][0-9A-Fa-f_]{41,}|[0-9]{41,}")


def _abbreviate(m: re.Match[str]) -> str:
    text = m[0]
    hex_prefix, digits = (text[:2], text[2:]) if text[1:2] in "xX" else ("", text)
    kind = "hex digits" if hex_prefix else "digits"
    head, tail = digits[:_END_DIGITS], digits[-_END_DIGITS:]
    return f"{hex_prefix}{head}...{tail} ({len(digits)} {kind})"


# Ints of more digits are shown by their first and last digits and their length.
_WHOLE_DIGITS = 40
_END_DIGITS = 10
_LOG10_2 = 0.30102999566398120


def format_int(value: int) -> str:
    """An integer as a message shows it: whole up to 40 digits, else abbreviated.

    Python refuses to write ints of more than ``sys.get_int_max_str_digits()`` digits
    (``str`` raises), and a message is no place for thousands of digits anyway.

    >>> format_int(-1234)
    '-1234'
    >>> format_int(7 * 10**50 + 1)
    '7000000000...0000000001 (51 digits)'
    """
    magnitude = -value if value < 0 else value
    if magnitude < 10**_WHOLE_DIGITS:
        return int.__repr__(value)
    # 2**(bits-1) <= magnitude < 2**bits: the estimate is the count or one short of it.
    digits = int((magnitude.bit_length() - 1) * _LOG10_2) + 1
    power = 10 ** (digits - 1)
    while power > magnitude:  # guards against rounding in the estimate
        digits -= 1
        power //= 10
    while power * 10 <= magnitude:
        digits += 1
        power *= 10
    head = magnitude // (power // 10 ** (_END_DIGITS - 1))
    tail = magnitude % 10**_END_DIGITS
    sign = "-" if value < 0 else ""
    return f"{sign}{head}...{tail:0{_END_DIGITS}d} ({digits} digits)"


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, for a message of ours: at most 300
    characters, and "" when it has none (or ``str`` fails, as for a ``KeyError`` of an
    int too long to print)."""
    try:
        text = str(error).strip()
    except Exception:
        text = ""
    first = text.splitlines()[0] if text else ""
    return first if len(first) <= 300 else first[:300] + "..."


def format_value(value: object) -> str:
    """``repr(value)`` for a message, with the ints in it written by :func:`format_int`.

    >>> format_value(("a", [1.5, 10**60]))
    "('a', [1.5, 1000000000...0000000000 (61 digits)])"
    """
    return _format_value(value, set())


def _format_value(value: object, open_ids: set[int]) -> str:
    if type(value) is int:
        return format_int(value)
    if type(value) is dict:
        if id(value) in open_ids:  # a container that holds itself, shown as repr does
            return "{...}"
        open_ids.add(id(value))
        inner = ", ".join(
            f"{_format_value(k, open_ids)}: {_format_value(v, open_ids)}" for k, v in value.items()
        )
        open_ids.discard(id(value))
        return "{" + inner + "}"
    if type(value) is list or type(value) is tuple:
        if id(value) in open_ids:
            return "[...]"
        open_ids.add(id(value))
        inner = ", ".join(_format_value(item, open_ids) for item in value)
        open_ids.discard(id(value))
        if type(value) is list:
            return "[" + inner + "]"
        return "(" + inner + ("," if len(value) == 1 else "") + ")"
    try:
        return repr(value)
    except ValueError:  # an int past sys.int_max_str_digits inside some other object
        return f"<{type(value).__name__}>"


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


@dataclass(frozen=True)
class Issue:
    """One problem found while turning data into typed objects.

    Attributes:
        path: where in the config the bad value is, as a tuple of segments.
        message: what was expected and what was found.
        location: ``file:line:col`` of the value, when it came from a file; of its field
            name or map key when ``about_key`` is set.
        override: the command-line override that supplied the value, if any.
        hint: a suggestion shown after the place, e.g. ``did you mean 'lr'?``.
        about_key: the problem is the field name or map key at ``path`` (an unknown
            field, a key of the wrong type), not the value under it.
    """

    path: tuple[PathSegment, ...]
    message: str
    location: str | None = None
    override: str | None = None
    hint: str | None = None
    about_key: bool = False

    def __str__(self) -> str:
        text = f"{self.message} at {format_path(self.path)}" if self.path else self.message
        if self.override is not None:
            text += f" (from override {_long_number.sub(_abbreviate, self.override)!r})"
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


class StateError(HyperstateError):
    """A state cannot be saved or restored (e.g. a stateful field with no object to load into).

    Attributes:
        msg: what was expected and what was found.
        at: where the value stands, when known: its ``state.ron:line:col`` and path.
    """

    def __init__(self, msg: str, at: str | None = None) -> None:
        self.msg = msg
        self.at = at
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.at}: {self.msg}" if self.at else self.msg

    def __reduce__(self) -> tuple[type[StateError], tuple[str, str | None]]:
        return (type(self), (self.msg, self.at))


class StorageError(HyperstateError):
    """A storage operation failed: which operation, on which file, and why.

    Attributes:
        operation: what was being done (``"write"``, ``"commit"``, ``"read manifest"``...).
        url: the file or directory, as a URL or local path.
        reason: what went wrong.
    """

    def __init__(self, operation: str, url: str, reason: str) -> None:
        self.operation = operation
        self.url = url
        self.reason = reason
        super().__init__(str(self))

    @property
    def path(self) -> str:
        """The name earlier releases used for :attr:`url`."""
        return self.url

    def __str__(self) -> str:
        return f"{self.operation} {self.url}: {self.reason}"

    def __reduce__(self) -> tuple[type[StorageError], tuple[str, str, str]]:
        return (type(self), (self.operation, self.url, self.reason))


class BlobError(HyperstateError):
    """A blob file or a reference to one that cannot be written or read as it is.

    Attributes:
        msg: what was expected and what was found.
        file: the blob file (as the checkpoint names it), when known.
        key: the entry in that file, when known.
        at: where the record that refers to it stands, when known: its
            ``state.ron:line:col`` and value path.
    """

    def __init__(
        self, msg: str, file: str | None = None, key: str | None = None, at: str | None = None
    ) -> None:
        self.msg = msg
        self.file = file
        self.key = key
        self.at = at
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file or ""
        if self.key is not None:
            where = f"{where} entry {self.key!r}".strip()
        text = f"{where}: {self.msg}" if where else self.msg
        return f"{self.at}: {text}" if self.at else text

    def __reduce__(
        self,
    ) -> tuple[type[BlobError], tuple[str, str | None, str | None, str | None]]:
        return (type(self), (self.msg, self.file, self.key, self.at))


class ScheduleError(HyperstateError, ValueError):
    """A schedule string that does not parse.

    Attributes:
        msg: what was expected and what was found.
        text: the whole schedule string.
        col: 1-based column of the offending token in ``text``.
    """

    def __init__(self, msg: str, text: str, col: int) -> None:
        self.msg = msg
        self.text = text
        self.col = col
        super().__init__(str(self))

    def __str__(self) -> str:
        shown = self.text.translate(_ONE_COLUMN)
        caret = " " * (self.col - 1) + "^"
        return f"{_quote_schedule(self.text)}: 1:{self.col}: {self.msg}\n    {shown}\n    {caret}"

    def __reduce__(self) -> tuple[type[ScheduleError], tuple[str, str, int]]:
        return (type(self), (self.msg, self.text, self.col))


# Control characters shown as one space under the header, so the caret lines up.
_ONE_COLUMN = {c: " " for c in range(32)}
_QUOTE_ESCAPES = {ord("\\"): "\\\\", ord('"'): '\\"', ord("\n"): "\\n", ord("\t"): "\\t"}


def _quote_schedule(text: str) -> str:
    return 'schedule "' + text.translate(_QUOTE_ESCAPES) + '"'


class DistributedError(HyperstateError):
    """A step failed on some rank(s); raised on every rank.

    Attributes:
        step: the name of the step.
        failures: the error message of each failed rank, by rank.
        context: what the step was part of (e.g. ``checkpoint <url>``).
    """

    def __init__(self, step: str, failures: dict[int, str], context: str = "") -> None:
        self.step = step
        self.failures = dict(failures)
        self.context = context
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.context}: " if self.context else ""
        if not self.failures:
            return f"{where}step {self.step!r} failed"
        parts = [f"rank {r} failed at step {self.step!r}: {m}" for r, m in self.failures.items()]
        return where + "; ".join(parts)

    def __reduce__(self) -> tuple[type[DistributedError], tuple[str, dict[int, str], str]]:
        return (type(self), (self.step, self.failures, self.context))


class ConvertError(HyperstateError):
    """A file that cannot be imported or exported as asked, or a field path not found."""


class Preempted(HyperstateError, SystemExit):
    """The run was told to stop (SIGTERM or SIGINT) and committed its last step first.

    ``StateManager.step()`` raises it, on every rank together, once the checkpoint of the
    current step is committed, so that the script's ``finally`` and ``with`` blocks run.
    It is also a :class:`SystemExit` whose ``code`` is ``128 + signum``: left uncaught, the
    process ends with that exit status (143 for SIGTERM, 130 for SIGINT), the status a
    shell reports for a process the signal ended, with no traceback, after ``finally``
    blocks and ``atexit`` handlers ran.

    Attributes:
        signum: the number of the signal that asked the run to stop.
        number: the checkpoint that holds the last step, or None when there is none (no
            ``checkpoint_dir``, or no step taken yet).
        path: that checkpoint's directory (URL or local path), or None.
    """

    def __init__(self, signum: int, number: int | None = None, path: str | None = None) -> None:
        self.signum = signum
        self.number = number
        self.path = path
        super().__init__(str(self))
        self.code = 128 + signum

    def __str__(self) -> str:
        try:
            name = f"{signal.Signals(self.signum).name} (signal {self.signum})"
        except ValueError:
            name = f"signal {self.signum}"
        if self.path is None:
            saved = "without a checkpoint (no checkpoint_dir, or no step taken yet)"
        else:
            saved = f"after committing checkpoint {self.number} at {self.path}"
        return f"stopped by {name} {saved}; exit status {128 + self.signum}"

    def __reduce__(self) -> tuple[type[Preempted], tuple[int, int | None, str | None]]:
        return (type(self), (self.signum, self.number, self.path))
