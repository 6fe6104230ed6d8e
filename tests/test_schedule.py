"""The schedule DSL: values at and between points, printing back, and errors that point."""

from __future__ import annotations

import ast
import doctest
import math
import pickle
import sys
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import hyperstate.schedule
from hyperstate.errors import HyperstateError
from hyperstate.schedule import (
    Interpolator,
    Point,
    Schedule,
    ScheduleError,
    looks_like_schedule,
    parse,
)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)


# --- values ---------------------------------------------------------------------------


def test_lin() -> None:
    s = parse("step: 1@0 lin 3@10")
    assert s.value_at(0) == 1.0
    assert s.value_at(10) == 3.0
    assert close(s.value_at(5), 2.0)
    assert close(s.value_at(2.5), 1.5)


def test_lin_is_the_default() -> None:
    assert parse("step: 1@0 3@10").interpolators == (Interpolator("lin"),)
    assert close(parse("step: 1@0 3@10").value_at(5), 2.0)


def test_cos() -> None:
    s = parse("step: 1@0 cos 0@100")
    assert s.value_at(0) == 1.0
    assert s.value_at(100) == 0.0
    assert close(s.value_at(50), 0.5)
    assert close(s.value_at(25), 1 - (1 - math.cos(math.pi / 4)) / 2)
    # Annealing is slow at both ends, fast in the middle.
    assert s.value_at(10) > 0.97
    assert s.value_at(90) < 0.03


def test_step_holds_the_left_value_until_the_next_point() -> None:
    s = parse("step: 1@0 step 2@10 step 3@20")
    assert [s.value_at(x) for x in (0, 5, 9.999, 10, 15, 20, 25)] == [1, 1, 1, 2, 2, 3, 3]


def test_exp_is_geometric() -> None:
    s = parse("step: 1@0 exp 1e-4@4")
    assert s.value_at(0) == 1.0
    assert s.value_at(4) == 1e-4
    for x, expected in [(1, 1e-1), (2, 1e-2), (3, 1e-3)]:
        assert close(s.value_at(x), expected)
    negative = parse("step: -8@0 exp -2@2")
    assert close(negative.value_at(1), -4.0)


def test_exp_between_values_whose_ratio_overflows() -> None:
    s = parse("step: 1e-300@0 exp 1e300@2")
    assert math.isclose(s.value_at(1), 1.0, rel_tol=1e-9)
    assert s.value_at(2) == 1e300


def test_poly() -> None:
    s = parse("step: 0@0 poly(2) 1@10")
    assert s.interpolators == (Interpolator("poly", 2.0),)
    assert close(s.value_at(5), 0.25)
    assert close(s.value_at(2), 0.04)
    root = parse("step: 10@0 poly( 0.5 ) 0@100")
    assert close(root.value_at(25), 10 - 10 * 0.5)
    assert root.value_at(100) == 0.0


def test_interpolator_applies_until_the_next_is_named() -> None:
    s = parse("step: 0@0 step 1@10 2@20 lin 3@30 4@40")
    assert [i.kind for i in s.interpolators] == ["step", "step", "lin", "lin"]
    assert s.value_at(15) == 1.0
    assert close(s.value_at(35), 3.5)


def test_the_issue_example() -> None:
    s = parse("step: 3e-4@0 lin 3e-3@1000 cos 0@100000")
    assert s.x == ("step",)
    assert s.points == (Point(0, 3e-4), Point(1000, 3e-3), Point(100000, 0))
    assert close(s.value_at(500), 3e-4 + 0.5 * (3e-3 - 3e-4))
    assert close(s.value_at(1000 + 99000 / 2), 1.5e-3)
    assert s.value_at(10**9) == 0.0


def test_before_the_first_point_and_after_the_last() -> None:
    s = parse("step: 5@100 lin 7@200")
    assert s.value_at(0) == 5.0
    assert s.value_at(-1e9) == 5.0
    assert s.value_at(200) == 7.0
    assert s.value_at(1e18) == 7.0


def test_one_point_is_a_constant() -> None:
    s = parse("step: 0.1@0")
    assert s.interpolators == ()
    assert [s.value_at(x) for x in (-1, 0, 1e9)] == [0.1, 0.1, 0.1]


def test_as_int_rounds() -> None:
    s = parse("step: 32@0 lin 64@100")
    assert s.value_at(50, as_int=True) == 48
    assert s.value_at(1, as_int=True) == 32  # 32.32
    assert s.value_at(2, as_int=True) == 33  # 32.64
    assert type(s.value_at(2, as_int=True)) is int
    assert type(s.value_at(1000, as_int=True)) is int
    # Python's round: halves go to the even neighbour.
    half = parse("step: 0@0 5@10")
    assert half.value_at(5, as_int=True) == 2
    assert half.value_at(7, as_int=True) == 4


def test_many_points_find_their_segment() -> None:
    text = "step: " + " ".join(f"{i % 7}@{i * 10}" for i in range(1000))
    s = parse(text)
    for i in range(999):
        assert s.value_at(i * 10) == i % 7
        assert close(s.value_at(i * 10 + 5), (i % 7 + (i + 1) % 7) / 2)


# --- numbers, paths and printing back ---------------------------------------------------


@pytest.mark.parametrize(
    ("number", "value"),
    [
        ("150e6", 150e6),
        ("3e-4", 3e-4),
        ("1.5E+3", 1500.0),
        ("100_000", 100000.0),
        ("1_000.000_1", 1000.0001),
        ("1e1_0", 1e10),
        ("+2", 2.0),
        ("-2.5", -2.5),
        (".5", 0.5),
        ("5.", 5.0),
        ("0", 0.0),
    ],
)
def test_numbers(number: str, value: float) -> None:
    assert parse(f"step: {number}@0").points[0].value == value
    assert parse(f"step: 1@{number} 2@1e300").points[0].x == value


@pytest.mark.parametrize(
    "text",
    [
        "step: 3e-4@0 lin 3e-3@1000 cos 0@100000",
        "progress.samples: 1@0 exp 1e-3@150e6",
        "  step :1@0   poly(2)\t2@1_000  ",
        "step: 1 @ 0 step 2@10",
        "a.b.c_d: -1@0",
    ],
)
def test_prints_back_unchanged(text: str) -> None:
    s = parse(text)
    assert str(s) == text
    assert f"{s}" == text
    assert s.text == text
    assert repr(s) == f"Schedule({text!r})"
    assert parse(str(s)) == s
    assert pickle.loads(pickle.dumps(s)) == s


def test_nested_path() -> None:
    s = parse("progress.samples: 1@0 lin 0@150e6")
    assert s.x == ("progress", "samples")
    assert close(s.value_at(75e6), 0.5)


def test_schedules_are_frozen_and_hashable() -> None:
    s = parse("step: 1@0 2@10")
    with pytest.raises(AttributeError):
        s.text = "step: 3@0"  # type: ignore[misc]
    assert len({s, parse("step: 1@0 2@10")}) == 1
    # Equal values written differently are different texts, and print differently.
    assert parse("step: 1@0") != parse("step: 1.0@0")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("step: 3e-4@0", True),
        ("progress.samples:1@0", True),
        (" step : anything", True),
        ("step:", True),
        ("3e-4", False),
        ("", False),
        ("step", False),
        ("step 1@0", False),
        ("1step: 1@0", False),
        (".step: 1@0", False),
        ("step.: 1@0", False),
    ],
)
def test_looks_like_schedule(text: str, expected: bool) -> None:
    assert looks_like_schedule(text) is expected


# --- the property --------------------------------------------------------------------


_values = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_subnormal=False)
_interpolators = st.sampled_from(["lin", "cos", "step", "poly(0.5)", "poly(2)", "poly(3.5)"])


@st.composite
def _schedules(draw: st.DrawFn) -> tuple[str, list[float], list[float]]:
    n = draw(st.integers(min_value=2, max_value=6))
    xs = sorted(
        draw(
            st.lists(
                st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_subnormal=False),
                min_size=n,
                max_size=n,
                unique=True,
            )
        )
    )
    vs = draw(st.lists(_values, min_size=n, max_size=n))
    parts = [f"{vs[0]!r}@{xs[0]!r}"]
    for x, v in zip(xs[1:], vs[1:], strict=True):
        parts.append(f"{draw(_interpolators)} {v!r}@{x!r}")
    return "step: " + " ".join(parts), xs, vs


@given(_schedules(), st.floats(min_value=0, max_value=1))
# Near x1 the cosine weight rounds to 1.0, and v0 + (v1 - v0) * 1.0 rounds past v1:
# value_at clamps to the segment's ends.
@example(
    (
        "step: -7.405530266080063@0 cos 6.29362753758009@1",
        [0.0, 1.0],
        [-7.405530266080063, 6.29362753758009],
    ),
    0.999999999,
)
# Adjacent floats as x: the segment is one ulp wide.
@example(("step: 1.0@1.0 cos -1.0@1.0000000000000002", [1.0, 1.0000000000000002], [1, -1]), 0.5)
def test_values_stay_between_their_points(
    schedule: tuple[str, list[float], list[float]], t: float
) -> None:
    text, xs, vs = schedule
    s = parse(text)
    assert str(s) == text
    for x, v in zip(xs, vs, strict=True):
        assert s.value_at(x) == v
    assert s.value_at(xs[0] - 1) == vs[0]
    assert s.value_at(xs[-1] + 1) == vs[-1]
    for i in range(len(xs) - 1):
        (x0, v0), (x1, v1) = (xs[i], vs[i]), (xs[i + 1], vs[i + 1])
        x = min(x0 + (x1 - x0) * t, x1)
        assert min(v0, v1) <= s.value_at(x) <= max(v0, v1)


# --- errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "col", "message"),
    [
        ("", 1, "expected a state field path such as 'step', found end of schedule"),
        ("   ", 4, "expected a state field path such as 'step', found end of schedule"),
        ("1.step: 1@0", 1, "expected a state field path such as 'step', found '1.step'"),
        # missing colon
        ("step 3e-4@0", 6, "expected ':' after the field path, found '3e-4'"),
        ("step", 5, "expected ':' after the field path, found end of schedule"),
        ("step.: 1@0", 5, "expected ':' after the field path, found '.'"),
        # no points
        ("step:", 6, "expected a value (a number), found end of schedule"),
        ("step: ", 7, "expected a value (a number), found end of schedule"),
        # bad numbers
        ("step: 3e-4x@0", 7, "expected a value (a number), found '3e-4x'"),
        ("step: 1__0@0", 7, "expected a value (a number), found '1__0'"),
        ("step: 1_@0", 7, "expected a value (a number), found '1_'"),
        ("step: 1.2.3@0", 7, "expected a value (a number), found '1.2.3'"),
        ("step: abc@0", 7, "expected a value (a number), found 'abc'"),
        ("step: inf@0", 7, "expected a value (a number), found 'inf'"),
        ("step: 1@0x10", 9, "expected an x (a number), found '0x10'"),
        ("step: 1@inf", 9, "expected an x (a number), found 'inf'"),
        ("step: 1e999@0", 7, "expected a number of magnitude at most 1.8e308, found '1e999'"),
        ("step: 1@0 2@1e400", 13, "expected a number of magnitude at most 1.8e308, found '1e400'"),
        # unknown interpolator
        (
            "step: 3e-4@0 cosx 0@100",
            14,
            "expected an interpolator (lin, cos, step, exp, poly(p)) or a value, found 'cosx'",
        ),
        (
            "step: 1@0 lin3@4",
            11,
            "expected an interpolator (lin, cos, step, exp, poly(p)) or a value, found 'lin3'",
        ),
        ("step: 1@0 lin cos 2@3", 15, "expected a value (a number), found 'cos'"),
        ("step: 1@0 lin", 14, "expected a value (a number), found end of schedule"),
        ("step: 1@0 poly 2@3", 16, "expected '(' after poly, found '2'"),
        ("step: 1@0 poly() 2@3", 16, "expected a power (a positive number), found ')'"),
        ("step: 1@0 poly(0) 2@3", 16, "expected a power (a positive number), found '0'"),
        ("step: 1@0 poly(-1) 2@3", 16, "expected a power (a positive number), found '-1'"),
        ("step: 1@0 poly(2 2@3", 18, "expected ')' after the power, found '2'"),
        ("step: 1@0 poly(2)2@3", 18, "expected a space after the interpolator, found '2'"),
        # missing @
        ("step: 3e-4 0@100", 12, "expected '@' after the value, found '0'"),
        ("step: 1@0 2", 12, "expected '@' after the value, found end of schedule"),
        ("step: 1@0 2 lin", 13, "expected '@' after the value, found 'lin'"),
        ("step: 1@", 9, "expected an x (a number), found end of schedule"),
        # points run together
        ("step: 1@2@3", 10, "expected a space after the point, found '@'"),
        ("step: 1@0\n2@3", 10, "expected a space after the point, found '\\n'"),
        # x must increase
        ("step: 1@0 2@0", 13, "expected an x greater than the previous point's 0, found '0'"),
        (
            "step: 1@10 2@20 3@1_5",
            19,
            "expected an x greater than the previous point's 20, found '1_5'",
        ),
        # exp cannot reach or cross zero
        (
            "step: 1@0 exp -1@10",
            15,
            "expected a positive value to end exp (geometric) interpolation, found '-1'",
        ),
        (
            "step: 1@0 exp 0@10",
            15,
            "expected a positive value to end exp (geometric) interpolation, found '0'",
        ),
        (
            "step: -1@0 exp 1e-3@10",
            16,
            "expected a negative value to end exp (geometric) interpolation, found '1e-3'",
        ),
        (
            "step: 0@0 exp 1@10",
            7,
            "expected a non-zero value to start exp (geometric) interpolation, found '0'",
        ),
        (
            "step: 1@0 exp 2@10 0.0@20",
            20,
            "expected a positive value to end exp (geometric) interpolation, found '0.0'",
        ),
    ],
)
def test_errors_point_at_the_bad_token(text: str, col: int, message: str) -> None:
    with pytest.raises(ScheduleError) as info:
        parse(text)
    err = info.value
    assert (err.col, err.msg, err.text) == (col, message, text)
    header, shown, caret = str(err).split("\n")
    assert header == f"schedule {_quoted(text)}: 1:{col}: {message}"
    assert caret == "    " + " " * (col - 1) + "^"
    assert shown == "    " + text.replace("\n", " ")


def _quoted(text: str) -> str:
    return '"' + text.replace("\n", "\\n") + '"'


def test_error_message_from_the_brief() -> None:
    with pytest.raises(ScheduleError) as info:
        parse("step: 3e-4@0 cosx 0@100")
    assert str(info.value) == (
        'schedule "step: 3e-4@0 cosx 0@100": 1:14: expected an interpolator '
        "(lin, cos, step, exp, poly(p)) or a value, found 'cosx'\n"
        "    step: 3e-4@0 cosx 0@100\n"
        "                 ^"
    )


def test_error_is_a_value_error_and_pickles() -> None:
    with pytest.raises(ScheduleError) as info:
        parse("step: 1@0 exp 0@1")
    err = info.value
    assert isinstance(err, HyperstateError)
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert (type(again), again.msg, again.text, again.col) == (
        ScheduleError,
        err.msg,
        err.text,
        err.col,
    )
    assert str(again) == str(err)


def test_tabs_and_quotes_keep_the_caret_in_place() -> None:
    with pytest.raises(ScheduleError) as info:
        parse('step:\t1@0 "x"')
    lines = str(info.value).split("\n")
    assert lines[0].startswith('schedule "step:\\t1@0 \\"x\\"": 1:11: ')
    assert lines[1] == '    step: 1@0 "x"'
    assert lines[2] == "    " + " " * 10 + "^"


def test_schedule_checks_its_parts() -> None:
    with pytest.raises(ValueError, match="at least one point"):
        Schedule("step:", ("step",), (), ())


# --- the module ----------------------------------------------------------------------


def test_docstring_examples() -> None:
    result = doctest.testmod(hyperstate.schedule, raise_on_error=False, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0


def test_imports_only_the_standard_library_and_errors() -> None:
    source = Path(hyperstate.schedule.__file__).read_text()
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    allowed = {"hyperstate.errors"}
    assert all(
        name in allowed or name.split(".")[0] in sys.stdlib_module_names for name in imported
    ), imported
