"""Parser behaviour the corpus does not show on its own: types, limits, ``locate``."""

from __future__ import annotations

import doctest
import math
import sys
from typing import Any

import pytest

import hyperstate.ron
import hyperstate.ron._emitter
import hyperstate.ron._parser
from hyperstate.ron import (
    MAX_DEPTH,
    Ident,
    ParseError,
    Some,
    Struct,
    TupleStruct,
    loads,
    locate,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", 1),
        ("1.0", 1.0),
        ("1e5", 1e5),
        ("1e+16", 1e16),
        ("1f32", 1.0),
        ("true", True),
        ("0x10", 16),
        ("-0.0", -0.0),
    ],
)
def test_number_types(text: str, expected: Any) -> None:
    value = loads(text)
    assert type(value) is type(expected)
    assert value == expected
    assert math.copysign(1.0, value) == math.copysign(1.0, expected)


@pytest.mark.parametrize(
    ("text", "kind"),
    [('"é"', str), ("'é'", str), ('b"e"', bytes), ('br"e"', bytes), ('r"e"', str)],
)
def test_string_kinds(text: str, kind: type) -> None:
    assert type(loads(text)) is kind


def test_chars_are_one_character_strings() -> None:
    assert loads("'\\u{1F600}'") == "\U0001f600"


def test_lone_surrogate_escapes_are_read() -> None:
    # ron-rs refuses these; hyperstate reads them so that every Python str round-trips.
    assert loads('"\\u{D800}x\\u{dfff}"') == "\ud800x\udfff"


def test_text_may_hold_lone_surrogates() -> None:
    assert loads('["\ud800"]') == ["\ud800"]


def test_unit_and_tuples() -> None:
    assert loads("()") == ()
    assert loads("(1)") == (1,)
    assert loads("(1,)") == (1,)
    assert loads("((),)") == ((),)


def test_structs_tuple_structs_and_idents() -> None:
    assert loads("A(x: 1)") == Struct("A", {"x": 1})
    assert loads("A()") == Struct("A", {})
    assert loads("A(1)") == TupleStruct("A", (1,))
    assert loads("A") == Ident("A")
    assert loads("(x: 1)") == Struct(None, {"x": 1})
    assert loads("Some(A)") == Some(Ident("A"))


def test_struct_fields_keep_their_order() -> None:
    assert list(loads("S(b: 1, a: 2, c: 3)").fields) == ["b", "a", "c"]


def test_map_keys_of_many_types() -> None:
    value = loads('{1: "int", "1": "str", (1,): "tuple", A(x: 1): "struct", B: "ident"}')
    assert list(value) == [1, "1", (1,), Struct("A", {"x": 1}), Ident("B")]


def test_nesting_up_to_the_limit_parses() -> None:
    assert MAX_DEPTH == 128
    value = loads("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    for _ in range(MAX_DEPTH - 1):
        value = value[0]
    assert value == []


@pytest.mark.parametrize(
    "opener", ["[", "(", "{", "Some(", "A(", "(a: ", "A(a: ", "{1: ", "{(", "Some(("]
)
def test_nesting_past_the_limit_is_a_parse_error(opener: str) -> None:
    with pytest.raises(ParseError, match="nesting deeper than 128 levels"):
        loads(opener * 200)


def _stack_depth() -> int:
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1  # type: ignore[assignment]
    return depth


@pytest.mark.parametrize(
    "text",
    [
        "[" * MAX_DEPTH + "]" * MAX_DEPTH,
        "A(a: " * MAX_DEPTH + "1" + ")" * MAX_DEPTH,
        "A(" * MAX_DEPTH + ")" * MAX_DEPTH,
        "Some(" * MAX_DEPTH + "1" + ")" * MAX_DEPTH,
        "{1: " * MAX_DEPTH + "1" + "}" * MAX_DEPTH,
        "{" + "(" * (MAX_DEPTH - 1) + "1" + ",)" * (MAX_DEPTH - 1) + ": 1}",
        "A(a: " * 1000,
    ],
    ids=["lists", "structs", "tuple_structs", "somes", "maps", "map_keys", "too_deep"],
)
def test_deepest_documents_need_little_stack(text: str) -> None:
    # A few frames per level of nesting: a caller that is itself deep in its stack still
    # gets a value or a ParseError, never a RecursionError.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(_stack_depth() + 450)
    try:
        loads(text)
    except ParseError as err:
        assert "nesting deeper" in err.msg
    finally:
        sys.setrecursionlimit(limit)


def test_too_deep_error_points_at_the_opening_bracket() -> None:
    with pytest.raises(ParseError) as info:
        loads("(a: " * 128 + "[1]" + ")" * 128)
    assert (info.value.line, info.value.col) == (1, 4 * 128 + 1)


def test_huge_decimal_int_is_a_parse_error_not_a_value_error_from_int() -> None:
    with pytest.raises(ParseError, match="too long"):
        loads("9" * 5000)


def test_huge_hex_int_is_read() -> None:
    assert loads("0x" + "f" * 2000) == 16**2000 - 1


def test_unknown_extension_names_the_known_ones() -> None:
    with pytest.raises(ParseError) as info:
        loads("#![enable(implicit_sum)] 1")
    assert "implicit_some" in info.value.msg


def test_extensions_do_not_change_the_value() -> None:
    assert loads("#![enable(implicit_some)]\n(a: 1)") == loads("(a: 1)")


def test_path_names_the_source() -> None:
    with pytest.raises(ParseError) as info:
        loads("[", path="conf/train.ron")
    assert str(info.value).startswith("conf/train.ron:1:2: ")
    assert info.value.path == "conf/train.ron"


def test_column_counts_characters_not_bytes() -> None:
    with pytest.raises(ParseError) as info:
        loads('["日本語", @]')
    assert info.value.col == 9


def test_duplicate_found_by_the_fast_path_names_the_first_place() -> None:
    text = "Outer(\n    inner: Inner(\n        a: 1,\n        b: 2,\n        a: 3,\n    ),\n)"
    with pytest.raises(ParseError) as info:
        loads(text)
    assert info.value.msg == "duplicate field 'a' in struct 'Inner' (first at 3:9)"
    assert (info.value.line, info.value.col) == (5, 9)


def test_duplicate_raw_field_counts_as_the_same_field() -> None:
    with pytest.raises(ParseError, match="duplicate field 'type'"):
        loads("(r#type: 1, r#type: 2)")


def test_equal_map_keys_of_different_types_are_duplicates() -> None:
    # Python dicts hold one of 1, 1.0 and true; the text must not silently drop one.
    with pytest.raises(ParseError, match="duplicate key"):
        loads("{1: 'a', 1.0: 'b'}")


# -- locate ---------------------------------------------------------------------------

CONFIG = """\
Config(
    version: 2,
    optimizer: OptimizerConfig(
        lr: 0.003,
        betas: (0.9, 0.98),
    ),
    tags: {
        "a": 1,
        (1, 2): Point(3, 4),
    },
    maybe: Some(Inner(x: [10, 20])),
    list: [
        Block(width: 3),
    ],
)"""


@pytest.mark.parametrize(
    ("path", "where"),
    [
        ((), (1, 1)),
        (("version",), (2, 14)),
        (("optimizer",), (3, 16)),
        (("optimizer", "lr"), (4, 13)),
        (("optimizer", "betas"), (5, 16)),
        (("optimizer", "betas", 1), (5, 22)),
        (("tags", "a"), (8, 14)),
        (("tags", (1, 2)), (9, 17)),
        (("tags", (1, 2), 1), (9, 26)),
        (("maybe",), (11, 12)),
        (("maybe", "x"), (11, 26)),
        (("maybe", "x", 1), (11, 31)),
        (("list", 0, "width"), (13, 22)),
    ],
)
def test_locate_finds_values(path: tuple[Any, ...], where: tuple[int, int]) -> None:
    assert locate(CONFIG, [path]) == {path: where}


@pytest.mark.parametrize(
    ("path", "where"),
    [
        (("missing",), (1, 1)),
        (("optimizer", "eps"), (3, 16)),
        (("optimizer", "betas", 7), (5, 16)),
        (("tags", "zzz"), (7, 11)),
        (("tags", (9, 9)), (7, 11)),
        (("list", 0, "height", 3), (13, 9)),
        (("version", "deeper"), (2, 14)),
        (("list", True), (12, 11)),
    ],
)
def test_locate_stops_at_the_deepest_existing_value(
    path: tuple[Any, ...], where: tuple[int, int]
) -> None:
    assert locate(CONFIG, [path]) == {path: where}


def test_locate_many_paths_at_once() -> None:
    paths = [("version",), ("optimizer", "lr"), ("nope",)]
    assert locate(CONFIG, paths) == {
        ("version",): (2, 14),
        ("optimizer", "lr"): (4, 13),
        ("nope",): (1, 1),
    }


def test_locate_sees_through_comments_and_extensions() -> None:
    text = "#![enable(implicit_some)]\n// c\n(\n    /* a */ a: /* b */ [ /* c */ 1, 2],\n)"
    assert locate(text, [(), ("a",), ("a", 1)]) == {
        (): (3, 1),
        ("a",): (4, 24),
        ("a", 1): (4, 37),
    }


def test_locate_inside_empty_containers_and_unit() -> None:
    text = "(a: A(), b: (), c: [], d: {})"
    assert locate(text, [("a", "x"), ("b", 0), ("c", 0), ("d", 1)]) == {
        ("a", "x"): (1, 5),
        ("b", 0): (1, 13),
        ("c", 0): (1, 20),
        ("d", 1): (1, 27),
    }


@pytest.mark.parametrize(
    ("path", "where"),
    [
        (("version",), (2, 5)),
        (("optimizer",), (3, 5)),
        (("optimizer", "lr"), (4, 9)),
        (("tags", "a"), (8, 9)),
        (("tags", (1, 2)), (9, 9)),
        (("maybe", "x"), (11, 23)),  # through Some(..)
        (("optimizer", "betas", 1), (5, 22)),  # a tuple item is its own key
        (("list", 0, "width"), (13, 15)),
    ],
)
def test_locate_at_key_finds_field_names_and_map_keys(
    path: tuple[Any, ...], where: tuple[int, int]
) -> None:
    assert locate(CONFIG, [path], at_key=True) == {path: where}


@pytest.mark.parametrize(
    ("path", "where"),
    [
        ((), (1, 1)),  # the root has no key: its value
        (("optimizer", "eps"), (3, 16)),  # the struct that lacks the field, as without at_key
        (("tags", "zzz"), (7, 11)),
    ],
)
def test_locate_at_key_falls_back_to_the_deepest_existing_value(
    path: tuple[Any, ...], where: tuple[int, int]
) -> None:
    assert locate(CONFIG, [path], at_key=True) == {path: where}


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("Config(lr: 0.1, bach: 3)", (1, 17)),  # the regex fast path, mid-line
        ("Config(lr: 0.1, /* c */ bach /* d */ : 3)", (1, 25)),  # the slow path, comments
        ("Config(lr: 0.1, r#bach: 3)", (1, 17)),  # a raw identifier, at its `r#`
        ("Config(lr: 0.1, /* c */ r#bach: 3)", (1, 25)),
        ('{"lr": 0.1, /* c */ "bach": 3}', (1, 21)),
    ],
)
def test_locate_at_key_on_one_line(text: str, where: tuple[int, int]) -> None:
    assert locate(text, [("bach",)], at_key=True) == {("bach",): where}


def test_locate_raises_parse_errors() -> None:
    with pytest.raises(ParseError) as info:
        locate("[1,", [(0,)], path="x.ron")
    assert str(info.value).startswith("x.ron:1:4: ")


@pytest.mark.parametrize(
    "module", [hyperstate.ron, hyperstate.ron._parser, hyperstate.ron._emitter]
)
def test_docstring_examples(module: Any) -> None:
    result = doctest.testmod(module, raise_on_error=False, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0
