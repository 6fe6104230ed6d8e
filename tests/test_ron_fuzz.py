"""Bad input of every kind gives a ParseError, never another exception or a hang.

Pathological inputs are parsed at two sizes, n and 4n: a linear parser takes about 4x as
long on the larger, a quadratic loop or a backtracking regex 16x or far more. The check
compares the two within one test, so a loaded machine slows both alike; no absolute time
limit is asserted.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_ron_corpus import DATA, VALID, read

from hyperstate.ron import ParseError, loads, loads_deferred, locate

CORPUS = [read(path) for path in [*VALID, *sorted((DATA / "invalid").glob("*.ron"))]]
# Characters that mean something to the parser, so random text reaches deep into it.
RON_ALPHABET = "()[]{}:,;'\"#!/*\\rbx_.+-eE0123456789afuiSomeNnTtrue \t\n\r"


def parse_or_parse_error(text: str) -> None:
    try:
        loads(text)
    except ParseError as err:
        assert err.line >= 1
        assert 1 <= err.col <= len(err.source_line) + 1


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_random_text(text: str) -> None:
    parse_or_parse_error(text)


@settings(max_examples=300, deadline=None)
@given(st.text(RON_ALPHABET, max_size=80))
def test_random_ron_like_text(text: str) -> None:
    parse_or_parse_error(text)


@st.composite
def mutated_corpus_file(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(CORPUS))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 8)))
        action = draw(st.sampled_from(["delete", "insert", "replace", "duplicate", "cut"]))
        if action == "delete":
            text = text[:i] + text[j:]
        elif action == "insert":
            text = text[:i] + draw(st.text(RON_ALPHABET, min_size=1, max_size=3)) + text[i:]
        elif action == "replace":
            text = text[:i] + draw(st.text(RON_ALPHABET, max_size=3)) + text[j:]
        elif action == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        else:
            text = text[:i]
    return text


@settings(max_examples=400, deadline=None)
@given(mutated_corpus_file())
def test_mutated_corpus_files(text: str) -> None:
    parse_or_parse_error(text)


@settings(max_examples=100, deadline=None)
@given(mutated_corpus_file())
def test_locate_on_mutated_files(text: str) -> None:
    with contextlib.suppress(ParseError):
        locate(text, [(), (0,), ("a",), ("a", 0, "b")])


# Each input at scale n (the sizes are those at n = 4, so that 4n is the scale at which
# each was first found slow).
def deferred_then_filled(text: str) -> object:
    """``loads_deferred`` of every field-like name in ``text``, each field then filled."""
    names = set(re.findall(r"(?<!\w)(\w++)\s*+:", text))
    tree, deferred = loads_deferred(text, names)
    for d in deferred.values():
        d.fill()
    return tree


@settings(max_examples=300, deadline=None)
@given(mutated_corpus_file())
def test_deferred_parse_agrees_with_the_parser(text: str) -> None:
    # Valid text gives the same tree; invalid text fails, at the latest when filled.
    try:
        expected = loads(text)
    except ParseError:
        with pytest.raises(ParseError):
            deferred_then_filled(text)
    else:
        assert repr(deferred_then_filled(text)) == repr(expected)  # repr: NaN != NaN


_RECORD_STRING = st.text(st.characters(blacklist_characters='"\\'), max_size=12)
_SPACE = st.sampled_from(["", " ", "\n    ", "\t", "\u2028"])


@st.composite
def tensor_records(draw: st.DrawFn) -> str:
    """Tensor records close to what the emitter writes, sometimes a little off."""
    sp = [draw(_SPACE) for _ in range(12)]
    dims = draw(st.lists(st.sampled_from(["0", "1", "1024", "007", "-1", "9" * 19]), max_size=3))
    shape = ", ".join(dims) + draw(st.sampled_from(["", ","]))
    name = draw(st.sampled_from(["Tensor", "Array", "Tensors"]))
    values = [draw(_RECORD_STRING) for _ in range(4)]
    last = draw(st.sampled_from(["", ",", ", ", ",\n"]))
    return (
        f'{name}({sp[0]}file{sp[1]}:{sp[2]}"{values[0]}"{sp[3]},{sp[4]}key: "{values[1]}",'
        f'{sp[5]}dtype:{sp[6]}"{values[2]}",{sp[7]}shape: ({shape}){sp[8]},{sp[9]}'
        f'checksum{sp[10]}: "{values[3]}"{last}{sp[11]})'
    )


@settings(max_examples=300, deadline=None)
@given(tensor_records())
def test_the_tensor_record_path_agrees_with_the_general_parser(record: str) -> None:
    # A comment after the parenthesis sends a record down the general path.
    general = record.replace("(", "( /**/ ", 1)
    try:
        expected = loads(f"[{general}]")
    except ParseError:
        with pytest.raises(ParseError):
            loads(f"[{record}]")
        return
    assert loads(f"[{record}]") == expected


PATHOLOGICAL: dict[str, Callable[[int], str]] = {
    "brackets": lambda n: "[" * (25_000 * n),
    "parens": lambda n: "(" * (1250 * n),
    "braces": lambda n: "{" * (1250 * n),
    "somes": lambda n: "Some(" * (250 * n),
    "struct_fields": lambda n: "(a: " * (1250 * n),
    "named_structs": lambda n: "A(" * (1250 * n),
    "map_keys": lambda n: "{(" * (1250 * n),
    "closed_deep": lambda n: "[" * (1250 * n) + "]" * (1250 * n),
    "huge_decimal": lambda n: "1" * (25_000 * n),
    "huge_negative": lambda n: "-" + "9" * (25_000 * n),
    "huge_suffixed": lambda n: "9" * (1250 * n) + "u8",
    "huge_hex": lambda n: "0x" + "f" * (25_000 * n),
    "huge_float": lambda n: "1" * (2500 * n) + ".5e" + "9" * (250 * n),
    "huge_exponent": lambda n: "1e" + "9" * (25_000 * n),
    "underscores": lambda n: "1" + "_" * (25_000 * n),
    "long_string": lambda n: '"' + "a" * (250_000 * n) + '"',
    "long_unterminated_string": lambda n: '"' + "a" * (250_000 * n),
    "long_escapes": lambda n: '"' + "\\n" * (25_000 * n) + '"',
    "unterminated_escapes": lambda n: '"' + "\\n" * (25_000 * n),
    "long_raw_string": lambda n: "r###" + '"' + '"##' * (25_000 * n),
    "many_hashes": lambda n: "r" + "#" * (25_000 * n),
    "nested_comments": lambda n: "/*" * (25_000 * n),
    "closed_nested_comments": lambda n: "/*" * (12_500 * n) + "*/" * (12_500 * n) + "1",
    "comment_slashes": lambda n: "/* " + "/" * (25_000 * n),
    "comment_stars": lambda n: "/* " + "*" * (25_000 * n),
    "line_comments": lambda n: "// //" * (12_500 * n),
    "long_list": lambda n: "[" + "1," * (50_000 * n),
    "long_word": lambda n: "a" * (250_000 * n),
    "long_raw_ident": lambda n: "r#" + "a." * (25_000 * n),
    "spaces_then_junk": lambda n: "Config(" + " " * (25_000 * n) + "@",
    "fields_then_junk": lambda n: "Config(" + "a: 1, " * (12_500 * n) + "a",
    "duplicate_at_end": lambda n: (
        "{" + ", ".join(f'"k{i}": {i}' for i in range(12_500 * n)) + ', "k0": 0}'
    ),
    "extensions": lambda n: "#![enable(" * (2500 * n),
    "backslashes": lambda n: "\\" * (25_000 * n),
    "quotes": lambda n: '"' * (25_000 * n + 1),
    "chars": lambda n: "'" * (25_000 * n),
    "nul": lambda n: "\x00" * (25_000 * n),
    # The one-match path of tensor records: long or unterminated pieces of one.
    "record_spaces": lambda n: "Tensor(" + " " * (25_000 * n) + "x",
    "record_long_key": lambda n: 'Tensor(file: "f", key: "' + "a" * (250_000 * n),
    "record_long_shape": lambda n: (
        'Tensor(file: "f", key: "k", dtype: "f", shape: (' + "1, " * (25_000 * n)
    ),
    "records": lambda n: (
        "["
        + 'Tensor(file: "f", key: "k", dtype: "f", shape: (1, 2), checksum: "c"), ' * (2_500 * n)
    ),
}


def growth(run: Callable[[str], object], small: str, large: str) -> tuple[float, float]:
    """The shortest times of ``run`` on ``small`` and on ``large``, measured in turns
    (small, large, small, ...) so that a burst of other load slows both alike."""
    best = [float("inf"), float("inf")]
    for _ in range(5):
        for i, text in enumerate((small, large)):
            start = time.perf_counter()
            run(text)
            best[i] = min(best[i], time.perf_counter() - start)
    return best[0], best[1]


@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_pathological_input_parses_in_linear_time(name: str) -> None:
    small, large = PATHOLOGICAL[name](1), PATHOLOGICAL[name](4)
    assert len(large) >= 3 * len(small)
    t_small, t_large = growth(parse_or_parse_error, small, large)
    # Linear is ~4x; quadratic 16x. The slack absorbs timer noise on the tiny ones.
    assert t_large <= 10 * t_small + 0.02, (name, t_small, t_large)


def deferred_fields(text: str) -> None:
    for opener in ("[", "{", "S(a: "):
        with contextlib.suppress(ParseError):
            deferred_then_filled("S(a: " + opener + text)


@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_pathological_deferred_field_in_linear_time(name: str) -> None:
    # The scan that skips a deferred field is a regex too: it must not backtrack.
    t_small, t_large = growth(deferred_fields, PATHOLOGICAL[name](1), PATHOLOGICAL[name](4))
    assert t_large <= 10 * t_small + 0.02, (name, t_small, t_large)


def test_mutations_start_from_the_whole_corpus() -> None:
    assert len(CORPUS) > 60
