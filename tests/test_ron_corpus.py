"""The RON corpus: valid files with the values they must give, invalid ones with the
first line of the error they must raise.

``valid/NAME.ron`` goes with ``valid/NAME.expected``, a Python expression over
``Struct, TupleStruct, Ident, Some, inf, nan``; ``invalid/NAME.ron`` goes with
``invalid/NAME.err`` holding ``LINE:COL: message``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from hyperstate.ron import Ident, ParseError, Some, Struct, TupleStruct, dumps, loads

DATA = Path(__file__).parent / "data" / "ron"
VALID = sorted((DATA / "valid").glob("*.ron"))
INVALID = sorted((DATA / "invalid").glob("*.ron"))


def strict_equal(a: Any, b: Any) -> bool:
    """Equality that also checks types, as ``==`` takes ``1 == 1.0 == True``.

    NaN equals NaN, ``-0.0`` differs from ``0.0``, and dicts must list the same items in
    the same order, since the emitter writes them in that order.
    """
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(map(strict_equal, a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            strict_equal(ka, kb) and strict_equal(va, vb)
            for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    if isinstance(a, Struct):
        return strict_equal(a.name, b.name) and strict_equal(a.fields, b.fields)
    if isinstance(a, TupleStruct):
        return strict_equal(a.name, b.name) and strict_equal(a.items, b.items)
    if isinstance(a, Some):
        return strict_equal(a.value, b.value)
    if isinstance(a, Ident):
        return strict_equal(a.name, b.name)
    return bool(a == b)


def read(path: Path) -> str:
    # Bytes decoded by hand: read_text() would turn the \r\n of crlf_tabs.ron into \n.
    return path.read_bytes().decode("utf-8")


def expected_value(path: Path) -> Any:
    names = {
        "Struct": Struct,
        "TupleStruct": TupleStruct,
        "Ident": Ident,
        "Some": Some,
        "inf": math.inf,
        "nan": math.nan,
        "__builtins__": {},
    }
    return eval(path.with_suffix(".expected").read_text(encoding="utf-8"), names)


def test_strict_equal_tells_types_apart() -> None:
    assert strict_equal([1, 2.0, "a"], [1, 2.0, "a"])
    assert not strict_equal(1, 1.0)
    assert not strict_equal(1, True)
    assert not strict_equal(0.0, -0.0)
    assert strict_equal(math.nan, math.nan)
    assert not strict_equal((1,), [1])
    assert not strict_equal({"a": 1, "b": 2}, {"b": 2, "a": 1})
    assert not strict_equal(Struct("A", {"x": 1}), Struct("A", {"x": 1.0}))
    assert not strict_equal(Struct(None, {}), Struct("A", {}))
    assert not strict_equal(Some(1), Some(True))
    assert not strict_equal(TupleStruct("T", (1,)), TupleStruct("T", (1.0,)))
    assert not strict_equal(Ident("A"), Ident("B"))


def test_corpus_is_complete() -> None:
    assert len(VALID) >= 30
    assert len(INVALID) >= 25
    for path in VALID:
        assert path.with_suffix(".expected").exists(), path.name
    for path in INVALID:
        assert path.with_suffix(".err").exists(), path.name
    pairs = [*(DATA / "valid").glob("*.expected"), *(DATA / "invalid").glob("*.err")]
    for path in pairs:
        assert path.with_suffix(".ron").exists(), path.name


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_file_parses_to_expected_value(path: Path) -> None:
    value = loads(read(path), path=str(path))
    expected = expected_value(path)
    assert strict_equal(value, expected), f"{value!r}\n!=\n{expected!r}"


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_file_survives_dumps(path: Path) -> None:
    value = loads(read(path))
    assert strict_equal(loads(dumps(value)), value)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_file_raises_expected_error(path: Path) -> None:
    expected = path.with_suffix(".err").read_text(encoding="utf-8").rstrip("\n")
    where, msg = expected.split(": ", 1)
    line, col = map(int, where.split(":"))
    with pytest.raises(ParseError) as info:
        loads(read(path), path=path.name)
    err = info.value
    assert str(err).splitlines()[0] == f"{path.name}:{expected}"
    assert (err.path, err.line, err.col, err.msg) == (path.name, line, col, msg)


def test_error_shows_the_line_with_a_caret() -> None:
    text = "Config(\n    lr: 0.1,\n    wd: @,\n)"
    with pytest.raises(ParseError) as info:
        loads(text, path="config.ron")
    assert str(info.value) == (
        "config.ron:3:9: expected a value, found '@'\n        wd: @,\n            ^"
    )
    assert info.value.source_line == "    wd: @,"


def test_error_at_end_of_input_points_past_the_last_line() -> None:
    with pytest.raises(ParseError) as info:
        loads("Config(\n    lr: 0.1,\n")
    assert str(info.value) == (
        "<string>:3:1: expected a field name or ')' to close struct 'Config' opened at 1:7,"
        " found end of input\n    \n    ^"
    )


def test_parse_error_is_a_value_error() -> None:
    with pytest.raises(ValueError) as info:
        loads("[1, 2)")
    assert isinstance(info.value, ParseError)
