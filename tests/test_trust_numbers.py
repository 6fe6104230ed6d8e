"""Numbers of any length and maps of any keys (trust campaign, findings 9 and 11).

Python refuses to turn an int of more than ``sys.int_max_str_digits`` (4300) digits into
text, so every message that shows a number shows it through ``format_int``; and what the
emitter writes, the parser reads back: a map whose keys would read back as fewer keys is
refused when it is written, naming the map, instead of committing a ``state.ron`` that
no longer parses.
"""

from __future__ import annotations

import json
import math
import operator
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_ron_corpus import strict_equal
from test_ron_dumps import names, texts

import hyperstate
from hyperstate import ConfigError, HyperstateError, ParseError
from hyperstate.errors import format_int, format_path
from hyperstate.ron import MAX_INT_DIGITS, Ident, Some, Struct, TupleStruct, dumps, loads
from hyperstate.schema.model import dump_schema, load_schema
from hyperstate.schema.rewrite_rule import RenameField, RewriteRule
from hyperstate.schema.schema_checker import SchemaChecker
from hyperstate.schema.versioned import Versioned
from hyperstate.serde import from_value
from hyperstate.storage import FileEntry, Manifest
from hyperstate.tools.cli import main

HUGE = 10**5000 + 7  # past sys.int_max_str_digits: str() of it raises
HUGE_HEX = "0x" + "f" * 5000  # a literal of 6021 decimal digits
HUGE_HEX_SHOWN = "3980276840...3406309375 (6021 digits)"
# Ints on both sides of the limit, built in the strategy: hypothesis cannot show a
# strategy that holds one past it.
_nines = st.integers(MAX_INT_DIGITS - 1, 5000).map(lambda digits: 10**digits - 1)
huge_ints = st.one_of(_nines, _nines.map(operator.neg))


@pytest.fixture
def int_digits() -> Iterator[None]:
    """Puts back ``sys.int_max_str_digits`` after a test that changes it."""
    before = sys.get_int_max_str_digits()
    yield
    sys.set_int_max_str_digits(before)


# -- 9. numbers: messages ------------------------------------------------------------------


def test_format_int_shows_the_ends_and_the_length_of_a_long_int() -> None:
    assert format_int(-(10**39)) == "-1" + "0" * 39  # 40 digits: whole
    assert format_int(-HUGE) == "-1000000000...0000000007 (5001 digits)"
    for n in (10**40, 10**40 - 1, 2**200, 10**100 + 1, 9 * 10**99):
        text = str(n)
        expected = text if len(text) <= 40 else f"{text[:10]}...{text[-10:]} ({len(text)} digits)"
        assert format_int(n) == expected


def test_a_value_path_with_a_huge_int_key_formats() -> None:
    assert format_path(("m", HUGE)) == "m[1000000000...0000000007 (5001 digits)]"
    assert format_path(("m", (1, HUGE))) == "m[(1, 1000000000...0000000007 (5001 digits))]"


# -- 9. numbers: the parser ----------------------------------------------------------------


def test_a_decimal_literal_past_the_limit_is_a_located_parse_error() -> None:
    with pytest.raises(ParseError) as info:
        loads("[1,\n 2" + "0" * 5000 + "]")
    assert (info.value.line, info.value.col) == (2, 2)
    assert info.value.msg == (
        f"integer with 5001 digits is too long; at most {MAX_INT_DIGITS} decimal digits "
        "are read (write it in hex)"
    )


@pytest.mark.parametrize(
    ("text", "place", "message"),
    [
        (f"{HUGE_HEX}u8", (1, 1), f"integer {HUGE_HEX_SHOWN} out of range for u8"),
        (
            f"{{\n{HUGE_HEX}: 1,\n{HUGE_HEX}: 2}}",
            (3, 1),
            f"duplicate key {HUGE_HEX_SHOWN} in map (first at 2:1)",
        ),
        (
            f"{{({HUGE_HEX}, 1): 1, ({HUGE_HEX}, 1): 2}}",
            (1, 5014),
            f"duplicate key ({HUGE_HEX_SHOWN}, 1) in map (first at 1:2)",
        ),
    ],
    ids=["out of range", "duplicate key", "duplicate tuple key"],
)
def test_a_huge_hex_int_in_a_parse_error_is_shown_abbreviated(
    text: str, place: tuple[int, int], message: str
) -> None:
    with pytest.raises(ParseError) as info:
        loads(text)
    assert (info.value.line, info.value.col) == place
    assert info.value.msg == message


def test_decimal_ints_read_and_write_whatever_the_python_limit(int_digits: None) -> None:
    longest, thousand = int("9" * MAX_INT_DIGITS), int("9" * 1000)
    sys.set_int_max_str_digits(640)  # the lowest setting
    assert loads("9" * MAX_INT_DIGITS) == longest
    assert loads(f"[-{'9' * MAX_INT_DIGITS}]") == [-longest]
    assert loads(f"(a: {'9' * 1000})") == Struct(None, {"a": thousand})
    assert loads(dumps(longest)) == longest  # written in hex: Python refuses decimal
    sys.set_int_max_str_digits(0)  # no limit: Python would write decimal the parser refuses
    assert dumps(HUGE).startswith("0x")
    assert loads(dumps([HUGE, -HUGE])) == [HUGE, -HUGE]
    assert dumps(longest) == "9" * MAX_INT_DIGITS


# -- 9. numbers: typed values, overrides and versions ----------------------------------------


@dataclass
class Numbers:
    lr: float = 0.1
    name: str = ""
    by_id: dict[int, int] = field(default_factory=dict)
    widths: list[int] = field(default_factory=list)
    extra: Any = None


def test_an_integer_too_large_for_a_float_field_is_a_located_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        hyperstate.loads(Numbers, "Numbers(\n    lr: 1" + "0" * 400 + ",\n)")
    assert str(info.value) == (
        "<string>:2:9: expected float, found an integer too large for one: "
        "1000000000...0000000000 (401 digits) at lr"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            Numbers(lr=10**400),
            "expected float, found an integer too large for one: "
            "1000000000...0000000000 (401 digits) at lr",
        ),
        (
            Numbers(name=HUGE),
            "cannot write int 1000000000...0000000007 (5001 digits) as str at name",
        ),
    ],
    ids=["too large for a float", "huge int for a str"],
)
def test_writing_a_huge_int_where_it_does_not_fit_is_a_config_error(
    value: Numbers, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        hyperstate.dumps(value)
    assert str(info.value) == message


def test_a_huge_int_in_an_any_field_round_trips() -> None:
    value = Numbers(extra={HUGE: [-HUGE, 10**400]}, by_id={10**4000: 1})
    assert hyperstate.loads(Numbers, hyperstate.dumps(value)) == value


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            f"by_id[{'1' * 5000}]=1",
            "malformed override: expected an index or key of at most 4300 digits at column "
            "7, found one of 5000 digits (from override 'by_id[1111111111...1111111111 "
            "(5000 digits)]=1')",
        ),
        (
            f"by_id.{'1' * 5000}=1",
            "malformed override: expected an index or key of at most 4300 digits at column "
            "7, found one of 5000 digits (from override 'by_id.1111111111...1111111111 "
            "(5000 digits)=1')",
        ),
        (
            f"widths[-{'1' * 5000}]=1",
            "malformed override: expected an index or key of at most 4300 digits at column "
            "8, found one of 5000 digits (from override 'widths[-1111111111...1111111111 "
            "(5000 digits)]=1')",
        ),
        (
            f'by_id["{"1" * 5000}"]=1',
            "expected an int key of at most 4300 digits for by_id, found one of 5000 digits "
            "at by_id (from override 'by_id[\"1111111111...1111111111 (5000 digits)\"]=1')",
        ),
        (
            f"widths[{'1' * 4000}]=1",
            "index 1111111111...1111111111 (4000 digits) out of range for widths (length 0) "
            "at widths[1111111111...1111111111 (4000 digits)] (from override "
            "'widths[1111111111...1111111111 (4000 digits)]=1'); use 'widths+=[...]' to append",
        ),
        (
            f"extra[{'2' * 4000}]=1",
            "index 2222222222...2222222222 (4000 digits) out of range at "
            "extra[2222222222...2222222222 (4000 digits)] (from override "
            "'extra[2222222222...2222222222 (4000 digits)]=1')",
        ),
        (
            f"lr={HUGE_HEX}",
            f"expected float, found an integer too large for one: {HUGE_HEX_SHOWN} at lr "
            "(from override 'lr=0xffffffffff...ffffffffff (5000 hex digits)')",
        ),
        # A superscript two is a digit to str.isdigit, but no int.
        ("by_id.\u00b2=1", "expected an int key for by_id, found '\u00b2' at by_id"),
    ],
    ids=[
        "huge map key",
        "huge dotted key",
        "huge index",
        "huge quoted key",
        "long index",
        "long index into Any",
        "huge hex value",
        "superscript key",
    ],
)
def test_an_override_with_a_huge_number_is_a_config_error(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        hyperstate.loads(Numbers, "Numbers(extra: [1])", overrides=[override])
    assert message in str(info.value)


@dataclass
class Versioned2(Versioned):
    x: int = 0

    @classmethod
    def version(cls) -> int:
        return 2


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (HUGE_HEX, f"Versioned2 version {HUGE_HEX_SHOWN} was written by newer code"),
        ("-" + HUGE_HEX, f"Versioned2 version -{HUGE_HEX_SHOWN} is older than the oldest"),
        ("1" * 4300, "Versioned2 version 1111111111...1111111111 (4300 digits) was written by"),
    ],
    ids=["huge", "huge negative", "longest decimal"],
)
def test_a_huge_version_is_a_located_config_error(version: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        hyperstate.loads(Versioned2, f"Versioned2(\n    version: {version},\n)")
    assert str(info.value).startswith(f"<string>:2:14: {message}")


def test_a_huge_version_read_without_the_upgrade_pass_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        from_value(Versioned2, loads(f"Versioned2(version: {HUGE_HEX})"))
    assert str(info.value).startswith(
        f"Versioned2 is at version 2, found version {HUGE_HEX_SHOWN} at version"
    )


@dataclass
class Renamed(Versioned):
    y: int = 0

    @classmethod
    def version(cls) -> int:
        return 2

    @classmethod
    def upgrade_rules(cls) -> dict[int, list[RewriteRule]]:
        return {1: [RenameField(("x",), ("y",))]}


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        (HUGE_HEX, f"version of Renamed decreased from {HUGE_HEX_SHOWN} to 2"),
        # Upgraded from far below zero: only the versions that have rules are visited.
        ("-" + HUGE_HEX, "field renamed to y: x (handled by upgrade rules)"),
    ],
    ids=["huge", "huge negative"],
)
def test_a_schema_file_with_a_huge_version_is_checked(
    tmp_path: Path, version: str, expected: str
) -> None:
    path = tmp_path / "schema.ron"
    dump_schema(Versioned2, path)
    text = (
        path.read_text()
        .replace("Versioned2", "Renamed")
        .replace("version: 2", f"version: {version}")
    )
    path.write_text(text)
    report = SchemaChecker(load_schema(path), Renamed).report()
    assert expected in report


# -- 9. numbers: the command line ------------------------------------------------------------


def _checkpoint(run: Path, size: int | str, dim: str) -> Path:
    """A committed checkpoint whose COMMITTED gives state.ron ``size`` bytes (written as
    it is) and whose state.ron has a tensor of shape ``(dim,)``."""
    ckpt = run / "step-000000000001"
    ckpt.mkdir(parents=True)
    (ckpt / "state.ron").write_text(
        "State(\n"
        "    step: 1,\n"
        '    w: Tensor(file: "blobs/rank-00000.safetensors", key: "w", dtype: "float32", '
        f'shape: ({dim},), checksum: "xxh3-64:0000000000000000"),\n'
        ")\n"
    )
    entries = {"state.ron": FileEntry(7, "xxh3-64:0000000000000000")}
    manifest = Manifest(number=1, files=entries, created="2026-01-01T00:00:00+00:00")
    (ckpt / "COMMITTED").write_text(manifest.dumps().replace("size: 7", f"size: {size}"))
    return ckpt


@pytest.mark.parametrize("size", ["1" + "0" * 400, HUGE_HEX], ids=["401 digits", "6021 digits"])
def test_a_committed_size_past_any_file_is_a_malformed_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], size: str
) -> None:
    ckpt = _checkpoint(tmp_path, size, "2")
    assert main(["ls", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoints"] == []  # skipped, with a warning
    for command in (["verify", str(ckpt)], ["show", str(ckpt)]):
        assert main(command) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert "expected File(size: <int in [0, 2**63)>, ...), found " in line
        assert "digits)" in line


@pytest.mark.parametrize(
    ("dim", "shown"),
    [("1" + "0" * 400, "1000000000...0000000000 (401 digits)"), (HUGE_HEX, HUGE_HEX_SHOWN)],
    ids=["401 digits", "6021 digits"],
)
def test_show_takes_a_shape_past_any_tensor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dim: str, shown: str
) -> None:
    ckpt = _checkpoint(tmp_path, 7, dim)
    assert main(["show", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert f"w: Tensor float32[{shown}] " in out and "digits) B" in out
    assert main(["show", str(ckpt), "w"]) == 0
    assert capsys.readouterr().out.startswith(f"w: Tensor float32[{shown}] ")
    assert main(["show", str(ckpt), "--json"]) == 0
    tensor = json.loads(capsys.readouterr().out)["state"]["w"]["__tensor__"]
    assert tensor["shape"] == [10**400 if shown.endswith("(401 digits)") else shown]


def test_show_labels_a_huge_int_map_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.ron"
    path.write_text(f"Config(m: {{{HUGE_HEX}: 1, 2: 3}})\n")
    assert main(["show", str(path)]) == 0
    assert f"    {HUGE_HEX_SHOWN}: 1\n" in capsys.readouterr().out
    assert main(["show", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"config": {"m": {HUGE_HEX_SHOWN: 1, "2": 3}}}


# -- 11. what the emitter writes, the parser reads back ---------------------------------------


def test_two_nan_keys_are_refused_when_written_naming_the_map() -> None:
    value = Struct("State", {"extra": Some({math.nan: 1, float("nan"): 2, 0.5: 3})})
    with pytest.raises(ConfigError) as info:
        dumps(value)
    assert str(info.value) == (
        "expected map keys that read back as distinct keys, found 2 written as NaN (NaN "
        "equals nothing, not even NaN, so no text tells such keys apart) at extra"
    )
    assert info.value.issues[0].path == ("extra",)


@pytest.mark.parametrize(
    ("keys", "text"),
    [
        ([(float("nan"), 1), (float("nan"), 1)], "(NaN, 1)"),
        ([-math.nan, math.nan], "NaN"),
        ([Some(float("nan")), Some(float("nan"))], "Some(NaN)"),
        ([Struct(None, {}), ()], "()"),  # an empty unnamed struct is written as unit
        ([TupleStruct("T", ()), Struct("T", {})], "T()"),
    ],
    ids=["nan in tuples", "nan of either sign", "nan in Some", "unit", "empty tuple struct"],
)
def test_keys_written_alike_are_refused(keys: list[Any], text: str) -> None:
    mapping = {key: n for n, key in enumerate(keys)}
    assert len(mapping) == 2
    with pytest.raises(ConfigError) as info:
        dumps({"a": [mapping]})
    assert f"found 2 written as {text}" in str(info.value)
    assert info.value.issues[0].path == ("a", 0)


@pytest.mark.parametrize(
    "text", ["{NaN: 1, -NaN: 2}", "{-NaN: 1, -NaN: 2}", "{Some(NaN): 1, Some(+NaN): 2}"]
)
def test_the_parser_reads_nan_keys_as_one_key_as_they_are_written(text: str) -> None:
    with pytest.raises(ParseError, match="duplicate key"):
        loads(text)


def test_a_state_with_two_nan_keys_is_not_committed(tmp_path: Path) -> None:
    @dataclass
    class State:
        step: int = 0
        extra: Any = None

    manager = hyperstate.StateManager(Numbers, State, lambda c: State(), None, tmp_path, "step")
    manager.state.step = 1
    manager.state.extra = {float("nan"): 1, float("nan"): 2}
    with pytest.raises(HyperstateError, match=r"found 2 written as NaN .* at extra"):
        manager.step()
    manager.state.extra = {float("nan"): 1}  # one NaN key: a map that reads back
    manager.checkpoint()
    manager.close()
    resumed = hyperstate.StateManager(Numbers, State, lambda c: State(), None, tmp_path, "step")
    assert strict_equal(resumed.state.extra, {math.nan: 1})
    resumed.close()


# -- 11. round trips, found by the suite ----------------------------------------------------

# Keys of every kind. Half of them are keys written alike (a new NaN object each time,
# so a map holds several; unit and the empty structs), so that maps of them are common:
# dumps either writes a map that reads back, or refuses it.
lookalike_keys = st.one_of(
    st.builds(float, st.sampled_from(["nan", "-nan"])),
    st.sampled_from([(), Struct(None, {}), Struct("T", {}), TupleStruct("T", ())]),
)
key_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    huge_ints,
    st.just(2**64),
    st.floats(),
    st.sampled_from([-0.0, math.inf]),
    texts,
    st.binary(max_size=4),
    names.map(Ident),
    lookalike_keys,
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
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    huge_ints,
    st.just(2**64),
    st.floats(),
    st.sampled_from([math.nan, -math.nan, -0.0, math.inf]),
    texts,
    st.binary(max_size=8),
    names.map(Ident),
    st.sampled_from([(), Struct(None, {}), Struct("T", {}), TupleStruct("T", ())]),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(keys, children, max_size=4),
        st.dictionaries(lookalike_keys, children, min_size=2, max_size=3),
        st.builds(Struct, names, st.dictionaries(names, children, max_size=3)),
        children.map(Some),
    ),
    max_leaves=20,
)


def _written_alike(value: Any) -> bool:
    """Whether some map in ``value`` has two keys with one text."""
    if isinstance(value, Some):
        return _written_alike(value.value)
    if isinstance(value, Struct):
        return any(map(_written_alike, value.fields.values()))
    if isinstance(value, list | tuple):
        return any(map(_written_alike, value))
    if isinstance(value, dict):
        key_texts = [dumps(key) for key in value]
        return len(set(key_texts)) < len(key_texts) or any(map(_written_alike, value.values()))
    return False


def _as_read(value: Any) -> Any:
    """``value`` as it reads back: the two values without text of their own (see
    ``dumps``) become what their text reads as."""
    if isinstance(value, Some):
        return Some(_as_read(value.value))
    if isinstance(value, Struct):
        if value.name is None and not value.fields:
            return ()
        return Struct(value.name, {k: _as_read(v) for k, v in value.fields.items()})
    if isinstance(value, TupleStruct):
        if not value.items:
            return Struct(value.name, {})
        return TupleStruct(value.name, _as_read(value.items))
    if isinstance(value, list):
        return [_as_read(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_as_read(item) for item in value)
    if isinstance(value, dict):
        return {_as_read(k): _as_read(v) for k, v in value.items()}
    return value


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
@example({math.nan: 1, float("nan"): 2})  # NaN != NaN: two keys, one text
@example({(): 1, Struct(None, {}): 2})  # both written ()
@example({Some(-math.nan): [HUGE]})  # a lone NaN key reads back; a huge int in hex
@example({-0.0: 1, 1: "\x00\u2028"})  # -0.0 keeps its sign; escapes
def test_dumps_then_loads_gives_the_value_back_or_dumps_refuses(value: Any) -> None:
    try:
        text = dumps(value)
    except HyperstateError as e:
        assert _written_alike(value), e
        return
    assert strict_equal(loads(text), _as_read(value)), text


@dataclass
class Holder:
    extra: Any = None
    by_id: dict[int, float] = field(default_factory=dict)


plain_keys = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        huge_ints,
        st.builds(float, st.sampled_from(["nan", "-nan"])),
        st.just(-0.0),
        st.floats(),
        st.text(),
    ),
    lambda children: st.lists(children, max_size=3).map(tuple),
    max_leaves=3,
)
plain = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        huge_ints,
        st.floats(),
        st.text(),
        st.binary(max_size=4),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(plain_keys, children, max_size=3),
        st.dictionaries(st.builds(float, st.just("nan")), children, min_size=2, max_size=2),
    ),
    max_leaves=12,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plain, st.dictionaries(st.integers(), st.floats(), max_size=3))
@example({math.nan: 1.0, float("nan"): 2.0}, {})
@example({(1, math.nan): -0.0, 2**70: [HUGE]}, {-(2**70): math.nan, HUGE: math.inf})
def test_typed_dumps_then_loads_gives_the_config_back_or_dumps_refuses(
    extra: Any, by_id: dict[int, float]
) -> None:
    value = Holder(extra, by_id)
    try:
        text = hyperstate.dumps(value)
    except ConfigError as e:
        assert "read back as distinct keys" in str(e)
        assert e.issues[0].path[:1] == ("extra",)
        return
    back = hyperstate.loads(Holder, text)
    assert strict_equal(back.extra, extra), text
    assert strict_equal(back.by_id, by_id), text
