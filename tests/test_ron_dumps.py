"""The emitter: its exact layout, and ``loads(dumps(v))`` giving back ``v``."""

from __future__ import annotations

import copy
import enum
import math
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_ron_corpus import DATA, read, strict_equal

from hyperstate.ron import MAX_DEPTH, Ident, Some, Struct, TupleStruct, dumps, loads, locate
from hyperstate.ron._parser import _value

DESIGN_EXAMPLE = """\
Config(
    version: 2,
    optimizer: OptimizerConfig(
        lr: 0.003,
        betas: (0.9, 0.98),
    ),
    schedule_lr: "step: 3e-4@0 cos 0.0@100000",
    tags: {
        "a": 1,
    },
    maybe: None,
)"""

FULL_STYLE = """\
Config(
    version: 2,
    optimizer: OptimizerConfig(
        lr: 0.003,
        betas: (0.9, 0.98),
    ),
    schedule_lr: "step: 3e-4@0 cos 0.0@100000",
    tags: {
        "a": 1,
    },
    maybe: None,
    layers: [1, 2, 3],
    blocks: [
        Block(
            width: 3,
        ),
    ],
)"""


@pytest.mark.parametrize("text", [DESIGN_EXAMPLE, FULL_STYLE])
def test_design_text_round_trips_byte_for_byte(text: str) -> None:
    assert dumps(loads(text)) == text


def test_design_example_file_matches_design_md() -> None:
    assert read(DATA / "valid" / "design_example.ron") == DESIGN_EXAMPLE


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "None"),
        (True, "true"),
        (False, "false"),
        (0, "0"),
        (-17, "-17"),
        (2**100, "1267650600228229401496703205376"),
        (0.1, "0.1"),
        (1e-05, "1e-05"),
        (-0.0, "-0.0"),
        (1e16, "1e+16"),
        (2.0, "2.0"),
        (math.inf, "inf"),
        (-math.inf, "-inf"),
        (math.nan, "NaN"),
        ("", '""'),
        ("ünï ✓ 😀", '"ünï ✓ 😀"'),
        ('a"b\\c', '"a\\"b\\\\c"'),
        ("a\nb\tc\rd", '"a\\nb\\tc\\rd"'),
        ("\x00\x1b\x7f\x85", '"\\u{0}\\u{1B}\\u{7F}\\u{85}"'),
        ("\ud800", '"\\u{D800}"'),
        ("\u2028", '"\\u{2028}"'),
        (b"", 'b""'),
        (b'ab"\\\x00\xff\n', 'b"ab\\"\\\\\\x00\\xFF\\x0A"'),
        (Ident("Relu"), "Relu"),
        (Some(1), "Some(1)"),
        (Some(Some(None)), "Some(Some(None))"),
        ((), "()"),
        ((1,), "(1,)"),
        ((1, "a", None), '(1, "a", None)'),
        ([], "[]"),
        ({}, "{}"),
        ([1, 2, 3], "[1, 2, 3]"),
        (Struct("Empty", {}), "Empty()"),
        (TupleStruct("Point", (1, 2)), "Point(1, 2)"),
        (TupleStruct("Wrapper", (1,)), "Wrapper(1)"),
    ],
)
def test_scalar_and_inline_forms(value: Any, text: str) -> None:
    assert dumps(value) == text
    assert strict_equal(loads(text), value)


def test_struct_layout() -> None:
    value = Struct(
        "Outer",
        {
            "inner": Struct(None, {"a": 1}),
            "opt": Some(Struct("Inner", {"b": [1]})),
            "map": {(1, 2): Struct("K", {"x": [1]}), "s": {}},
            "ts": TupleStruct("T", (1, Struct("S", {"c": 2}))),
            "tuple": ([1], 2),
        },
    )
    assert dumps(value) == (
        "Outer(\n"
        "    inner: (\n"
        "        a: 1,\n"
        "    ),\n"
        "    opt: Some(Inner(\n"
        "        b: [1],\n"
        "    )),\n"
        "    map: {\n"
        "        (1, 2): K(\n"
        "            x: [1],\n"
        "        ),\n"
        '        "s": {},\n'
        "    },\n"
        "    ts: T(\n"
        "        1,\n"
        "        S(\n"
        "            c: 2,\n"
        "        ),\n"
        "    ),\n"
        "    tuple: (\n"
        "        [1],\n"
        "        2,\n"
        "    ),\n"
        ")"
    )


def test_map_keys_are_written_on_one_line() -> None:
    key = (Struct("P", {"x": (1, 2), "y": Some(())}), TupleStruct("T", ((1,), Ident("A"))))
    value = {key: 1, Struct(None, {"a": 1}): 2}
    assert dumps(value) == "{\n    (P(x: (1, 2), y: Some(())), T((1,), A)): 1,\n    (a: 1): 2,\n}"
    assert strict_equal(loads(dumps(value)), value)


def test_list_goes_multiline_past_80_characters() -> None:
    fits = [10**8] * 6 + [10**11]
    assert dumps(fits) == "[" + ", ".join(map(str, fits)) + "]"
    assert len(dumps(fits)) == 80
    too_long = [10**8] * 6 + [10**12]
    assert dumps(too_long) == "[\n" + "".join(f"    {i},\n" for i in too_long) + "]"


def test_list_of_structs_is_multiline() -> None:
    assert dumps([Struct("B", {"w": 3}), 1]) == "[\n    B(\n        w: 3,\n    ),\n    1,\n]"


@pytest.mark.parametrize(
    ("name", "written"),
    [
        ("plain_1", "plain_1"),
        ("true", "r#true"),
        ("None", "r#None"),
        ("Some", "r#Some"),
        ("inf", "r#inf"),
        ("NaN", "r#NaN"),
        ("a.b-c+d", "r#a.b-c+d"),
        ("1st", "r#1st"),
        ("größe", "größe"),
    ],
)
def test_names_that_are_not_plain_identifiers_are_raw(name: str, written: str) -> None:
    assert dumps(Ident(name)) == written
    assert dumps(Struct(name, {name: 1})) == f"{written}(\n    {written}: 1,\n)"
    assert loads(dumps(Struct(name, {name: TupleStruct(name, (1,))}))) == Struct(
        name, {name: TupleStruct(name, (1,))}
    )


@pytest.mark.parametrize("name", ["", "a b", 'q"', "x/y", "a:b"])
def test_names_that_cannot_be_written_are_a_value_error(name: str) -> None:
    with pytest.raises(ValueError, match="cannot be written"):
        dumps(Struct(None, {name: 1}))


@pytest.mark.parametrize("value", [{1, 2}, object(), 1j, bytearray(b"x"), [frozenset()]])
def test_unsupported_types_are_a_type_error_naming_the_type(value: Any) -> None:
    inner = value[0] if isinstance(value, list) else value
    with pytest.raises(TypeError, match=type(inner).__name__):
        dumps(value)


def test_field_names_must_be_strings() -> None:
    with pytest.raises(TypeError, match="int"):
        dumps(Struct("S", {1: 2}))  # type: ignore[dict-item]


def test_too_deep_values_and_cycles_are_a_value_error() -> None:
    deep: list[Any] = []
    for _ in range(MAX_DEPTH):
        deep = [deep]
    with pytest.raises(ValueError, match="nesting deeper"):
        dumps(deep)
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(ValueError, match="nesting deeper"):
        dumps(cycle)
    with pytest.raises(ValueError, match="nesting deeper"):
        dumps({_deep_tuple(): 1})


def _deep_tuple() -> tuple[Any, ...]:
    value: tuple[Any, ...] = ()
    for _ in range(MAX_DEPTH + 1):
        value = (value, 1)
    return value


def _nest(levels: int, inner: Any, wrap: Any) -> Any:
    for _ in range(levels):
        inner = wrap(inner)
    return inner


@pytest.mark.parametrize(
    "build",
    [
        lambda n: _nest(n - 1, [], lambda v: [v]),
        lambda n: _nest(n, 1, Some),
        lambda n: _nest(n - 1, (), Some),
        lambda n: _nest(n - 1, (), lambda v: [v]),
        lambda n: _nest(n - 1, Some(1), lambda v: (v,)),
        lambda n: _nest(n - 1, Struct("A", {}), lambda v: Struct(None, {"a": v})),
        lambda n: {_nest(n - 2, (1,), lambda v: (v,)): 1},
    ],
    ids=["lists", "somes", "unit_in_somes", "unit_in_lists", "some_in_tuples", "structs", "key"],
)
def test_values_nested_to_the_limit_are_written_and_deeper_ones_refused(build: Any) -> None:
    # The emitter counts brackets as the parser does: what it writes, loads() reads.
    deepest = build(MAX_DEPTH)
    assert strict_equal(loads(dumps(deepest)), deepest)
    with pytest.raises(ValueError, match="nesting deeper"):
        dumps(build(MAX_DEPTH + 1))


def test_a_some_that_holds_itself_is_a_value_error() -> None:
    loop = Some(None)
    loop.value = loop
    with pytest.raises(ValueError, match="nesting deeper"):
        dumps(loop)


def test_subclasses_of_builtins_are_written_as_their_base() -> None:
    class Color(enum.IntEnum):
        RED = 3

    class Name(str):
        pass

    assert dumps([Color.RED, Name("x"), True]) == '[3, "x", true]'


def test_huge_ints_are_written_in_hex_and_read_back() -> None:
    big = 7**10000  # beyond sys.int_max_str_digits
    assert dumps(big).startswith("0x")
    assert loads(dumps(-big)) == -big


def test_unnamed_empty_struct_and_empty_tuple_struct_lose_their_kind() -> None:
    # Documented: RON has no text of their own for these two.
    assert loads(dumps(Struct(None, {}))) == ()
    assert loads(dumps(TupleStruct("T", ()))) == Struct("T", {})


# -- round trip ------------------------------------------------------------------------

names = st.one_of(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,7}", fullmatch=True),
    st.sampled_from(["true", "false", "None", "Some", "inf", "NaN", "r", "b", "br", "_"]),
    st.from_regex(r"[A-Za-z0-9_.+-]{1,6}", fullmatch=True),
    st.from_regex(r"[^\W\d]\w{0,4}", fullmatch=True),
)
texts = st.one_of(
    st.text(),
    # Every code point, lone surrogates and control characters included.
    st.text(st.characters(exclude_categories=())),
)
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(),
)
# NaN never equals itself, so a map can hold several NaN keys but no text can say which
# is which; keys leave it out.
key_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    texts,
    st.binary(max_size=8),
    names.map(Ident),
)
scalars = st.one_of(
    st.none(), st.booleans(), numbers, texts, st.binary(max_size=16), names.map(Ident)
)
keys = st.recursive(
    key_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3).map(tuple),
        st.builds(TupleStruct, names, st.lists(children, min_size=1, max_size=3).map(tuple)),
        children.map(Some),
    ),
    max_leaves=4,
)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(keys, children, max_size=4),
        st.builds(Struct, names, st.dictionaries(names, children, max_size=4)),
        st.builds(Struct, st.none(), st.dictionaries(names, children, min_size=1, max_size=4)),
        st.builds(TupleStruct, names, st.lists(children, min_size=1, max_size=4).map(tuple)),
        children.map(Some),
    )


values = st.recursive(scalars, _containers, max_leaves=25)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
@example(-0.0)  # the sign of zero must survive
@example(1e16)  # repr gives "1e+16": no '.', must still read back as a float
@example(5e-324)  # smallest subnormal
@example("\x00")  # control character, written as \u{0}
@example("\ud800\udc00")  # two lone surrogates must stay two, not pair up
@example("\\u{41}")  # text that looks like an escape
@example((1,))  # a 1-tuple needs its trailing comma
@example(((),))  # unit inside a 1-tuple
@example(Ident("None"))  # keyword names are written raw
@example(Struct("Some", {"true": TupleStruct("inf", (1,))}))  # keyword struct, field, variant
@example(Struct(None, {"a": Some(Struct("b", {}))}))  # unnamed struct, Some around a struct
@example({(1, 2): [], "k": {}})  # tuple keys and empty containers
@example(2**64)  # past every Rust integer type
@example(-(10**5000))  # past sys.int_max_str_digits: written in hex
@example([math.inf, -math.inf, math.nan])  # special floats
@example(b'\x00\xff"\\')  # bytes that need escapes
def test_dumps_then_loads_gives_the_value_back(value: Any) -> None:
    text = dumps(value)
    assert strict_equal(loads(text), value), text
    assert dumps(loads(text)) == text


@settings(max_examples=50, deadline=None)
@given(values)
def test_dumps_is_deterministic(value: Any) -> None:
    # Equal trees built separately give the same bytes, with no trailing newline.
    text = dumps(value)
    assert dumps(copy.deepcopy(value)) == text
    assert not text.endswith("\n")


@settings(max_examples=100, deadline=None)
@given(
    values,
    st.sampled_from(["\n// note\n", " /* a /* nested */ b */\n", "\x0c\u2028\n", "\r\n\t", "\n\n"]),
)
def test_comments_and_whitespace_at_line_breaks_do_not_change_the_value(
    value: Any, gap: str
) -> None:
    # dumps escapes newlines inside strings, so every "\n" in its output is layout.
    assert strict_equal(loads(dumps(value).replace("\n", gap)), value)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    yield prefix, value
    while isinstance(value, Some):
        value = value.value
    if isinstance(value, Struct):
        children: Iterable[tuple[Any, Any]] = value.fields.items()
    elif isinstance(value, dict):
        children = value.items()
    elif isinstance(value, TupleStruct):
        children = enumerate(value.items)
    elif isinstance(value, list | tuple):
        children = enumerate(value)
    else:
        return
    for seg, child in children:
        yield from _paths(child, (*prefix, seg))


@settings(max_examples=100, deadline=None)
@given(values)
def test_locate_points_at_the_text_of_each_value(value: Any) -> None:
    text = dumps(value)
    found = dict(_paths(value))
    places = locate(text, list(found))
    line_starts = [0] + [i + 1 for i, char in enumerate(text) if char == "\n"]
    for path, (line, col) in places.items():
        offset = line_starts[line - 1] + col - 1
        _, parsed = _value(text, offset, 0, None)
        assert strict_equal(parsed, found[path]), path
