"""Hyperparameter schedules: a small DSL that a number field of a config can hold.

A schedule names a numeric state field and a list of points ``value@x``, joined by
interpolators::

    step: 3e-4@0 lin 3e-3@1000 cos 0@100000

reads "as ``state.step`` goes from 0 to 1000, go linearly from 3e-4 to 3e-3, then
anneal along a cosine to 0 at step 100000". An interpolator applies to every gap until
the next one is named; before any is named it is ``lin``. Before the first point the
first value holds, after the last point the last value holds.

=============  ==============================================================
interpolator   value at fraction ``t`` of the way from ``v0@x0`` to ``v1@x1``
=============  ==============================================================
``lin``        ``v0 + (v1 - v0) * t``
``cos``        ``v0 + (v1 - v0) * (1 - cos(pi * t)) / 2``
``step``       ``v0`` (held until ``x1``)
``exp``        ``v0 * (v1 / v0) ** t``; both values non-zero, of the same sign
``poly(p)``    ``v0 + (v1 - v0) * t ** p``, ``p > 0``
=============  ==============================================================

A :class:`Schedule` keeps the text it was parsed from and prints back unchanged, so a
config saved with a schedule shows the schedule, not the value it had at that step.

>>> lr = parse("step: 3e-4@0 lin 3e-3@1000 cos 0@100000")
>>> lr.value_at(500)
0.00165
>>> str(lr)
'step: 3e-4@0 lin 3e-3@1000 cos 0@100000'

The module is the "schedules" layer: it imports only the standard library and
:mod:`hyperstate.errors`, and knows nothing of configs or state.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from math import cos, exp, isfinite, log, pi
from typing import Literal, NamedTuple, overload

from hyperstate.errors import ScheduleError

__all__ = [
    "Interpolator",
    "Point",
    "Schedule",
    "ScheduleError",
    "looks_like_schedule",
    "parse",
]


class Point(NamedTuple):
    """One point of a schedule: the value ``value`` at ``x``."""

    x: float
    value: float


class Interpolator(NamedTuple):
    """How a schedule goes from one point to the next.

    ``kind`` is ``"lin"``, ``"cos"``, ``"step"``, ``"exp"`` or ``"poly"``; ``p`` is the
    power of ``poly`` (1.0 for the others).
    """

    kind: str
    p: float = 1.0


_LIN = Interpolator("lin")
_INTERPOLATORS = {name: Interpolator(name) for name in ("lin", "cos", "step", "exp")}
_EXPECTED_INTERPOLATOR = "expected an interpolator (lin, cos, step, exp, poly(p)) or a value"

# Segment kinds as small ints: value_at dispatches on them on every training step.
_K_LIN, _K_COS, _K_STEP, _K_EXP, _K_POLY, _K_EXP_LOG = range(6)
_KIND_CODES = {"lin": _K_LIN, "cos": _K_COS, "step": _K_STEP, "exp": _K_EXP, "poly": _K_POLY}
# (kind, x0, x1 - x0, v0, v1 - v0, low, high, arg), where arg is p for poly, v1 / v0 for
# exp, and log(|v1| / |v0|) for exp_log.
_Segment = tuple[int, float, float, float, float, float, float, float]


@dataclass(frozen=True, repr=False)
class Schedule:
    """A parsed schedule. Make one with :func:`parse`.

    Attributes:
        text: the text it was parsed from; ``str(schedule)`` gives it back unchanged.
        x: the path of the state field it follows, e.g. ``("progress", "samples")``.
        points: the points, with strictly increasing ``x``; at least one.
        interpolators: ``interpolators[i]`` goes from ``points[i]`` to ``points[i + 1]``.

    >>> s = parse("progress.samples: 1@0 step 2@150e6")
    >>> s.x, s.points
    (('progress', 'samples'), (Point(x=0.0, value=1.0), Point(x=150000000.0, value=2.0)))
    >>> s.interpolators
    (Interpolator(kind='step', p=1.0),)
    >>> s
    Schedule('progress.samples: 1@0 step 2@150e6')
    """

    text: str
    x: tuple[str, ...]
    points: tuple[Point, ...]
    interpolators: tuple[Interpolator, ...]
    # Derived from points and interpolators once, for value_at.
    _xs: tuple[float, ...] = field(init=False, compare=False)
    _segments: tuple[_Segment, ...] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        points, interpolators = self.points, self.interpolators
        if not points or len(interpolators) != len(points) - 1:
            raise ValueError(
                f"a schedule needs at least one point and one interpolator between each two "
                f"points, got {len(points)} points and {len(interpolators)} interpolators"
            )
        segments: list[_Segment] = []
        for (x0, v0), (x1, v1), (kind, p) in zip(
            points[:-1], points[1:], interpolators, strict=True
        ):
            code, arg = _KIND_CODES[kind], p
            if code == _K_EXP:
                arg = v1 / v0
                if arg == 0 or not isfinite(arg):
                    # The ratio of values far apart leaves the float range; logs do not.
                    code, arg = _K_EXP_LOG, log(abs(v1)) - log(abs(v0))
            segments.append((code, x0, x1 - x0, v0, v1 - v0, min(v0, v1), max(v0, v1), arg))
        object.__setattr__(self, "_xs", tuple(x for x, _ in points))
        object.__setattr__(self, "_segments", tuple(segments))

    @overload
    def value_at(self, x: float, as_int: Literal[False] = False) -> float: ...
    @overload
    def value_at(self, x: float, as_int: Literal[True]) -> int: ...
    @overload
    def value_at(self, x: float, as_int: bool) -> int | float: ...

    def value_at(self, x: float, as_int: bool = False) -> float:
        """The value at ``x``; rounded to an ``int`` (Python's ``round``) if ``as_int``.

        Takes O(log n) in the number of points, so it can run on every training step.

        >>> s = parse("step: 0@0 cos 1@100 step 10@200 15@300")
        >>> s.value_at(-5), s.value_at(100), s.value_at(250), s.value_at(1000)
        (0.0, 1.0, 10.0, 15.0)
        >>> round(s.value_at(50), 6)
        0.5
        >>> s.value_at(80, as_int=True)
        1
        """
        xs = self._xs
        i = bisect_right(xs, x)
        if i == 0:
            v = self.points[0].value
        elif i == len(xs):
            v = self.points[-1].value
        else:
            kind, x0, dx, v0, dv, low, high, arg = self._segments[i - 1]
            if kind == _K_STEP:
                v = v0
            else:
                t = (x - x0) / dx
                if kind == _K_LIN:
                    v = v0 + dv * t
                elif kind == _K_COS:
                    v = v0 + dv * ((1.0 - cos(pi * t)) * 0.5)
                elif kind == _K_POLY:
                    v = v0 + dv * t**arg
                elif kind == _K_EXP:
                    v = v0 * arg**t
                else:
                    v = v0 * exp(arg * t)
                # Rounding must not carry a value past either end of its segment.
                if v < low:
                    v = low
                elif v > high:
                    v = high
        return round(v) if as_int else v

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Schedule({self.text!r})"

    def __reduce__(self) -> tuple[Callable[[str], Schedule], tuple[str]]:
        return (parse, (self.text,))


# The parser: small functions over (src, pos) that return (pos, value), in the style of
# tomllib. Schedules are one line; whitespace is spaces and tabs.
_IDENT = r"[^\W\d]\w*"
_PATH = rf"{_IDENT}(?:\.{_IDENT})*"
_D = r"[0-9](?:_?[0-9])*"
_SPACE = frozenset(" \t")
_skip_space: Callable[[str, int], re.Match[str]] = re.compile(r"[ \t]*").match  # type: ignore[assignment]
_path = re.compile(_PATH).match
_looks_like = re.compile(rf"[ \t]*{_PATH}[ \t]*:").match
# Python's decimal int and float literals, with a sign; a letter, digit, "_" or "."
# right after one makes the whole token a bad number.
_number = re.compile(rf"[+-]?(?:{_D}(?:\.(?:{_D})?)?|\.{_D})(?:[eE][+-]?{_D})?(?![\w.])").match
_word = re.compile(_IDENT).match
# What an error quotes as "found ...": a whole word or number, else one character.
_token = re.compile(r"[\w.+-]+|\S").match


def looks_like_schedule(text: str) -> bool:
    """Whether ``text`` is meant as a schedule: a field path, then ``:``.

    Cheap, and says nothing about the rest; :func:`parse` checks that.

    >>> looks_like_schedule("step: 3e-4@0 cos 0@1000"), looks_like_schedule("3e-4")
    (True, False)
    """
    return _looks_like(text) is not None


def parse(text: str) -> Schedule:
    """Parse ``"<x>: <value>@<x0> [interpolator] <value>@<x1> ..."`` into a :class:`Schedule`.

    Raises :class:`ScheduleError` pointing at the first bad token.

    >>> parse("step: 1@0 exp 1e-2@1_000").value_at(500)
    0.1
    >>> parse("step: 1@10 2@5")
    Traceback (most recent call last):
    ...
    hyperstate.errors.ScheduleError: schedule "step: 1@10 2@5": 1:14: expected an x greater than the previous point's 10, found '5'
        step: 1@10 2@5
                     ^
    """  # noqa: E501
    src = text
    pos = _skip_space(src, 0).end()
    m = _path(src, pos)
    if m is None:
        raise _error(src, pos, "expected a state field path such as 'step'")
    x_path = tuple(m.group().split("."))
    pos = _skip_space(src, m.end()).end()
    if not src.startswith(":", pos):
        raise _error(src, pos, "expected ':' after the field path")
    pos = _skip_space(src, pos + 1).end()

    pos, value_pos, x_pos, point = _point(src, pos)
    points = [point]
    interpolators: list[Interpolator] = []
    interpolator = _LIN
    end = len(src)
    while pos < end:
        if src[pos] not in _SPACE:
            raise _error(src, pos, "expected a space after the point")
        pos = _skip_space(src, pos).end()
        if pos == end:
            break
        if _word(src, pos) is not None:
            pos, interpolator = _interpolator(src, pos)
        prev_value_pos, prev_x_pos, prev = value_pos, x_pos, point
        pos, value_pos, x_pos, point = _point(src, pos)
        if point.x <= prev.x:
            previous = _number(src, prev_x_pos).group()  # type: ignore[union-attr]
            raise _error(src, x_pos, f"expected an x greater than the previous point's {previous}")
        if interpolator.kind == "exp":
            _check_exp(src, prev_value_pos, prev.value, value_pos, point.value)
        points.append(point)
        interpolators.append(interpolator)
    return Schedule(text, x_path, tuple(points), tuple(interpolators))


def _point(src: str, pos: int) -> tuple[int, int, int, Point]:
    """``value@x``; returns the end, where the value and the x start, and the point."""
    value_pos = pos
    pos, value = _parse_number(src, pos, "expected a value (a number)")
    pos = _skip_space(src, pos).end()
    if not src.startswith("@", pos):
        raise _error(src, pos, "expected '@' after the value")
    x_pos = _skip_space(src, pos + 1).end()
    pos, x = _parse_number(src, x_pos, "expected an x (a number)")
    return pos, value_pos, x_pos, Point(x, value)


def _interpolator(src: str, pos: int) -> tuple[int, Interpolator]:
    m = _word(src, pos)
    assert m is not None  # the caller saw a word here
    name = m.group()
    found = _INTERPOLATORS.get(name)
    if found is not None:
        pos = m.end()
    elif name == "poly":
        pos = _skip_space(src, m.end()).end()
        if not src.startswith("(", pos):
            raise _error(src, pos, "expected '(' after poly")
        p_pos = _skip_space(src, pos + 1).end()
        pos, p = _parse_number(src, p_pos, "expected a power (a positive number)")
        if p <= 0:
            raise _error(src, p_pos, "expected a power (a positive number)")
        pos = _skip_space(src, pos).end()
        if not src.startswith(")", pos):
            raise _error(src, pos, "expected ')' after the power")
        pos += 1
        found = Interpolator("poly", p)
    else:
        raise _error(src, pos, _EXPECTED_INTERPOLATOR)
    if pos < len(src) and src[pos] not in _SPACE:
        raise _error(src, pos, "expected a space after the interpolator")
    return _skip_space(src, pos).end(), found


def _parse_number(src: str, pos: int, expected: str) -> tuple[int, float]:
    m = _number(src, pos)
    if m is None:
        raise _error(src, pos, expected)
    value = float(m.group())
    if not isfinite(value):
        raise _error(src, pos, "expected a number of magnitude at most 1.8e308")
    return m.end(), value


def _check_exp(src: str, pos0: int, v0: float, pos1: int, v1: float) -> None:
    # Geometric interpolation multiplies by a constant ratio: it cannot reach or cross 0.
    if v0 == 0:
        raise _error(src, pos0, "expected a non-zero value to start exp (geometric) interpolation")
    if v1 == 0 or (v0 > 0) != (v1 > 0):
        sign = "positive" if v0 > 0 else "negative"
        raise _error(src, pos1, f"expected a {sign} value to end exp (geometric) interpolation")


def _error(src: str, pos: int, expected: str) -> ScheduleError:
    """The one way the parser fails: what was expected, and what stands at ``pos``."""
    if pos >= len(src):
        found = "end of schedule"
    else:
        m = _token(src, pos)
        found = repr(m.group() if m is not None else src[pos])
    return ScheduleError(f"{expected}, found {found}", src, pos + 1)
