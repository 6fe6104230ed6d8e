"""Bad input of every kind gives a ParseError, never another exception or a hang.

The time limit is a guard against exponential regex backtracking or quadratic loops,
not a benchmark: every input here parses in milliseconds.
"""

from __future__ import annotations

import contextlib
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_ron_corpus import DATA, VALID, read

from hyperstate.ron import ParseError, loads, locate

TIME_LIMIT_S = 5.0

CORPUS = [read(path) for path in [*VALID, *sorted((DATA / "invalid").glob("*.ron"))]]
# Characters that mean something to the parser, so random text reaches deep into it.
RON_ALPHABET = "()[]{}:,;'\"#!/*\\rbx_.+-eE0123456789afuiSomeNnTtrue \t\n\r"


def parse_or_parse_error(text: str) -> None:
    start = time.perf_counter()
    try:
        loads(text)
    except ParseError as err:
        assert err.line >= 1
        assert 1 <= err.col <= len(err.source_line) + 1
    assert time.perf_counter() - start < TIME_LIMIT_S


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


PATHOLOGICAL = {
    "brackets": "[" * 100_000,
    "parens": "(" * 5000,
    "braces": "{" * 5000,
    "somes": "Some(" * 1000,
    "struct_fields": "(a: " * 5000,
    "named_structs": "A(" * 5000,
    "map_keys": "{(" * 5000,
    "closed_deep": "[" * 5000 + "]" * 5000,
    "huge_decimal": "1" * 100_000,
    "huge_negative": "-" + "9" * 100_000,
    "huge_suffixed": "9" * 5000 + "u8",
    "huge_hex": "0x" + "f" * 100_000,
    "huge_float": "1" * 10_000 + ".5e" + "9" * 1000,
    "huge_exponent": "1e" + "9" * 100_000,
    "underscores": "1" + "_" * 100_000,
    "long_string": '"' + "a" * 1_000_000 + '"',
    "long_unterminated_string": '"' + "a" * 1_000_000,
    "long_escapes": '"' + "\\n" * 100_000 + '"',
    "unterminated_escapes": '"' + "\\n" * 100_000,
    "long_raw_string": "r###" + '"' + '"##' * 100_000,
    "many_hashes": "r" + "#" * 100_000,
    "nested_comments": "/*" * 100_000,
    "closed_nested_comments": "/*" * 50_000 + "*/" * 50_000 + "1",
    "comment_slashes": "/* " + "/" * 100_000,
    "comment_stars": "/* " + "*" * 100_000,
    "line_comments": "// //" * 50_000,
    "long_list": "[" + "1," * 200_000,
    "long_word": "a" * 1_000_000,
    "long_raw_ident": "r#" + "a." * 100_000,
    "spaces_then_junk": "Config(" + " " * 100_000 + "@",
    "fields_then_junk": "Config(" + "a: 1, " * 50_000 + "a",
    "duplicate_at_end": "{" + ", ".join(f'"k{i}": {i}' for i in range(50_000)) + ', "k0": 0}',
    "extensions": "#![enable(" * 10_000,
    "backslashes": "\\" * 100_000,
    "quotes": '"' * 100_001,
    "chars": "'" * 100_000,
    "nul": "\x00" * 100_000,
}


@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_pathological_input(name: str) -> None:
    parse_or_parse_error(PATHOLOGICAL[name])


def test_mutations_start_from_the_whole_corpus() -> None:
    assert len(CORPUS) > 60
