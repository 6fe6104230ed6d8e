"""RON text -> plain value tree.

Hand-written recursive descent in the style of ``tomllib``: small functions over
``(src, pos)`` that return ``(pos, value)``. Speed comes from doing little per token:
compiled regexes take whole tokens (and, for struct fields, the whitespace around
them) in one match, strings without escapes are sliced out with ``str.find``, and the
first character of a value picks its parser.

Positions are only computed when something goes wrong. Internally errors carry a
string offset (:class:`_Failure`); :func:`loads` turns that into line and column.
:func:`locate` runs the same parser with ``spans`` set, which makes every container
record where its children start.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from math import inf, nan
from typing import Any

from hyperstate import _gc
from hyperstate.errors import ParseError, format_int, format_value
from hyperstate.ron._values import Ident, Some, Struct, TupleStruct, Value

__all__ = [
    "EXTENSIONS",
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "Deferred",
    "loads",
    "loads_deferred",
    "locate",
]

MAX_DEPTH = 128
"""Deepest nesting of brackets that :func:`loads` accepts.

The parser recurses a few frames per level; the limit keeps it far from Python's
recursion limit whatever the input, and no hand-written config comes close to it.
"""

MAX_INT_DIGITS = 4300
"""Most decimal digits an integer literal may have; longer ones are written in hex.

Python's own limit (``sys.int_max_str_digits``, 4300 by default): beyond it ``str()``
of an int raises and its conversion grows quadratic. :func:`~hyperstate.ron.dumps` writes
longer ints in hex, which has no limit, so every int it writes reads back.
"""

EXTENSIONS = frozenset(
    {"explicit_struct_names", "implicit_some", "unwrap_newtypes", "unwrap_variant_newtypes"}
)
"""Names accepted in ``#![enable(...)]``."""

# Maps id(container) to where its children start: a list of offsets for lists, tuples
# and tuple structs, {field or key: (key offset, value offset)} for structs and maps.
_Spans = dict[int, Any]

# Whitespace as ron-rs defines it (Rust's Pattern_White_Space).
_WS = r"[ \t\n\r\x0b\x0c\x85\u200e\u200f\u2028\u2029]"
# A block comment with no nested "/*" inside; nested ones go through _skip_nested.
# Written as an unrolled loop so a failed match backtracks in linear time.
_BLOCK = r"/\*[^*/]*(?:(?:\*(?!/)|/(?!\*))[^*/]*)*\*/"
# It matches everywhere (possibly nothing), which the annotation records for mypy.
_skip_ws: Callable[[str, int], re.Match[str]] = re.compile(  # type: ignore[assignment]
    rf"(?:{_WS}+|//[^\n]*|{_BLOCK})*"
).match
_comment_mark = re.compile(r"/\*|\*/").search

_IDENT = r"[^\W\d]\w*"
_RAW_IDENT = r"[\w.+-]+"
_ident = re.compile(_IDENT).match
_raw_ident = re.compile(_RAW_IDENT).match
# `name:` with whitespace around it, the common way a struct field starts. Whitespace
# and name characters are disjoint, which keeps backtracking linear when it fails.
_FIELD = rf"{_WS}*(?:({_IDENT})|r#({_RAW_IDENT})){_WS}*:{_WS}*"
_field = re.compile(_FIELD).match
# The same after the comma that ends the previous field: one match per field.
_next_field = re.compile(rf"{_WS}*,{_FIELD}").match
# Punctuation with the whitespace around it, for when no comment stands there.
_colon = re.compile(rf"{_WS}*:{_WS}*").match
_comma = re.compile(rf"{_WS}*,{_WS}*").match
_close_paren = re.compile(rf"{_WS}*(?:,{_WS}*)?\)").match

# A tensor record as the emitter writes it (``Tensor(file: "...", key: "...", dtype:
# "...", shape: (...), checksum: "...")``), read with one match: a state of 10,000
# tensors is mostly these. Anything else (a comment, another field, an escape, a number
# written another way) takes the general path, which gives the same value.
_DIM = r"(?:0|[1-9][0-9]{0,17})"
_record = re.compile(
    rf'\({_WS}*file{_WS}*:{_WS}*"([^"\\]*)"{_WS}*,{_WS}*key{_WS}*:{_WS}*"([^"\\]*)"'
    rf'{_WS}*,{_WS}*dtype{_WS}*:{_WS}*"([^"\\]*)"{_WS}*,{_WS}*shape{_WS}*:{_WS}*'
    rf'\(({_DIM}(?:, {_DIM})*,?)?\){_WS}*,{_WS}*checksum{_WS}*:{_WS}*"([^"\\]*)"'
    rf"{_WS}*(?:,{_WS}*)?\)"
).match

_D = r"[0-9]+(?:_[0-9]+)*"
# Decimal ints and floats without suffix; group 1 takes part only for floats.
_decimal = re.compile(rf"[+-]?{_D}(\.(?:{_D})?(?:[eE][+-]?{_D})?|[eE][+-]?{_D})?(?![\w.])").match
# Every number form, used when _decimal does not match; what may follow is checked
# separately so that a failed match still tells how much was a valid number.
_number = re.compile(
    rf"""
    (?P<sign>[+-])?
    (?:
        0x(?P<hex>[0-9A-Fa-f]+(?:_[0-9A-Fa-f]+)*)
      | 0o(?P<oct>[0-7]+(?:_[0-7]+)*)
      | 0b(?P<bin>[01]+(?:_[01]+)*)
      | (?P<dec>(?:{_D}(?:\.(?:{_D})?)?|\.{_D})(?:[eE][+-]?{_D})?)
    )
    (?P<suffix>[iu](?:8|16|32|64|128|size)|f32|f64)?
    """,
    re.VERBOSE,
).match
# What an error message quotes as "found '...'": a whole word or number if there is one.
_word = re.compile(r"[+-]?[\w.]+(?:[eE][+-][\w.]*)?").match

_NUMBER_START = frozenset("0123456789+-.")
_CLOSERS = frozenset(")]}")
# First characters of values that cannot be field names.
_VALUE_STARTS = frozenset("0123456789+-.\"'([{")
# First characters of whitespace or a comment.
_SPACE_STARTS = frozenset(" \t\n\r\x0b\x0c\x85\u200e\u200f\u2028\u2029/")
_CONSTANTS: dict[str, Value] = {
    "true": True,
    "false": False,
    "None": None,
    "inf": inf,
    "NaN": nan,
}
_STRING_PREFIXES = frozenset({"r", "b", "br"})
_INT_RANGES = {
    f"{sign}{bits}": (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    if sign == "i"
    else (0, (1 << bits) - 1)
    for sign in "iu"
    for bits in (8, 16, 32, 64, 128)
}
_INT_RANGES["isize"] = _INT_RANGES["i64"]
_INT_RANGES["usize"] = _INT_RANGES["u64"]
_ESCAPES = {
    "\\": "\\",
    '"': '"',
    "'": "'",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "0": "\0",
    "b": "\b",
    "f": "\f",
    "/": "/",
}
_word_char = re.compile(r"[\w.]").match
_plain: Callable[[str, int], re.Match[str]] = re.compile(r'[^"\\]*').match  # type: ignore[assignment]
_hex2 = re.compile(r"[0-9A-Fa-f]{2}").match
_unicode_escape = re.compile(r"\{([0-9A-Fa-f]{1,6})\}").match
# Decimal texts this short convert whatever sys.int_max_str_digits is set to (its lowest
# setting is sys.int_info.str_digits_check_threshold); longer ones go through _int10.
_SAFE_DIGITS = 640


class _Failure(Exception):
    """A parse error at a string offset; :func:`_to_parse_error` adds line and column."""

    def __init__(self, pos: int, msg: str) -> None:
        super().__init__(msg)
        self.pos = pos
        self.msg = msg


def loads(text: str, path: str = "<string>") -> Value:
    """Parse one RON document into a plain value tree.

    ``path`` only names the source in error messages. Raises
    :class:`~hyperstate.errors.ParseError` with line, column and what was expected.

    >>> loads('Config(lr: 0.1, betas: (0.9, 0.98), act: Relu)')
    Struct('Config', {'lr': 0.1, 'betas': (0.9, 0.98), 'act': Ident('Relu')})
    """
    try:
        with _gc.paused():
            return _document(text, None)[1]
    except _Failure as failure:
        raise _to_parse_error(text, path, failure) from None


def loads_deferred(
    text: str, fields: Collection[str], path: str = "<string>"
) -> tuple[Value, dict[str, Deferred]]:
    """:func:`loads`, leaving the values of some top-level struct fields unparsed.

    When the document is a struct, the value of each field named in ``fields`` that is
    a list, a map, a struct, a tuple struct or a ``Some(..)`` is only skipped over (a
    scan that follows brackets, strings and comments, much faster than parsing). The
    tree holds an empty container of the right kind in its place, and the returned
    dict maps the field to a :class:`Deferred` that fills that container in place when
    asked. Other values, and documents that are not structs, are parsed as usual.

    Syntax errors inside a deferred value are raised by :meth:`Deferred.fill`, with the
    line and column in ``text``; unbalanced brackets are found by the scan already.

    >>> tree, deferred = loads_deferred("S(a: 1, b: [1, 2])", ["b"])
    >>> tree.fields["b"], list(deferred)
    ([], ['b'])
    >>> deferred["b"].fill()
    >>> tree.fields["b"]
    [1, 2]
    """
    deferrer = _Deferrer(text, frozenset(fields), path)
    try:
        with _gc.paused():
            value = _deferring_document(text, deferrer)
    except _Failure as failure:
        raise _to_parse_error(text, path, failure) from None
    return value, deferrer.taken


class Deferred:
    """The unparsed text of one value left out by :func:`loads_deferred`.

    Attributes:
        value: the empty container that stands for the value in the tree.
    """

    __slots__ = ("_close", "_end", "_filled", "_open", "_path", "_src", "_start", "value")

    def __init__(
        self, src: str, path: str, start: int, end: int, value: Value, close: tuple[Any, ...]
    ) -> None:
        self._src = src
        self._path = path
        self._start = start
        self._end = end
        self._close = close  # (struct name, its '(' offset) for the "expected ','" error
        self._filled = False
        self.value = value

    def fill(self) -> None:
        """Parse the text into :attr:`value` (once; later calls do nothing).

        Raises:
            ParseError: the text is not a valid value, with line and column in the
                whole document.
        """
        if self._filled:
            return
        src = self._src
        try:
            pos, parsed = _value(src, self._start, 1, None)
            if pos != self._end:
                name, open_pos = self._close
                raise _unclosed(src, _skip(src, pos), "',' or", ")", _struct_what(name), open_pos)
        except _Failure as failure:
            raise _to_parse_error(src, self._path, failure) from None
        hollow = self.value
        kind = type(hollow)
        if kind is not type(parsed):  # pragma: no cover - the scan decides as _value does
            raise AssertionError(f"deferred {kind.__name__} parsed as {type(parsed).__name__}")
        if kind is list:
            hollow.extend(parsed)
        elif kind is dict:
            hollow.update(parsed)
        elif kind is Struct:
            hollow.fields.update(parsed.fields)
        elif kind is TupleStruct:
            hollow.items = parsed.items
        else:
            hollow.value = parsed.value
        self._filled = True


def locate(
    text: str,
    paths: Iterable[tuple[Any, ...]],
    path: str = "<string>",
    *,
    at_key: bool = False,
) -> dict[tuple[Any, ...], tuple[int, int]]:
    """Find where values start in RON text, as 1-based ``(line, col)``.

    Each path is a tuple of struct field names, list/tuple indexes and map keys;
    ``Some(..)`` is passed through. A path that leads nowhere gives the place of the
    deepest value that exists along it, so an error about a missing field can point at
    the struct that lacks it. With ``at_key``, a path that leads to a value gives the
    place of its field name or map key instead (a list item is its own key), for errors
    about the name itself, such as an unknown field. Meant for error reporting: it
    parses ``text`` again.

    >>> locate('Config(\\n    lr: 0.1,\\n)', [("lr",), ("wd",)])
    {('lr',): (2, 9), ('wd',): (1, 1)}
    >>> locate('Config(lr: 0.1, bach: 3)', [("bach",)], at_key=True)
    {('bach',): (1, 17)}
    """
    spans: _Spans = {}
    try:
        root_pos, root = _document(text, spans)
    except _Failure as failure:
        raise _to_parse_error(text, path, failure) from None
    return _find(text, root_pos, root, spans, paths, at_key)


def _find(
    text: str,
    root_pos: int,
    root: Value,
    spans: _Spans,
    paths: Iterable[tuple[Any, ...]],
    at_key: bool,
) -> dict[tuple[Any, ...], tuple[int, int]]:
    found: dict[tuple[Any, ...], tuple[int, int]] = {}
    for value_path in paths:
        node, pos = root, root_pos
        key_pos = pos
        for seg in value_path:
            while isinstance(node, Some):
                node = node.value
            child = _child(node, seg, spans)
            if child is None:
                break
            node, key_pos, pos = child
        else:
            if at_key and value_path:
                pos = key_pos
        found[tuple(value_path)] = _line_col(text, pos)
    return found


def _child(node: Value, seg: Any, spans: _Spans) -> tuple[Value, int, int] | None:
    """The child ``seg`` of ``node`` with where its key and its value start."""
    if isinstance(node, Struct):
        if isinstance(seg, str) and seg in node.fields:
            return node.fields[seg], *spans[id(node)][seg]
        return None
    if isinstance(node, dict):
        try:
            if seg in node:
                return node[seg], *spans[id(node)][seg]
        except (TypeError, KeyError):
            pass
        return None
    items = node.items if isinstance(node, TupleStruct) else node
    if (
        isinstance(items, list | tuple)
        and isinstance(seg, int)
        and not isinstance(seg, bool)
        and 0 <= seg < len(items)
    ):
        pos = spans[id(node)][seg]
        return items[seg], pos, pos
    return None


# -- errors ---------------------------------------------------------------------------


def _line_col(src: str, pos: int) -> tuple[int, int]:
    line_start = src.rfind("\n", 0, pos) + 1
    return src.count("\n", 0, pos) + 1, pos - line_start + 1


def _to_parse_error(src: str, path: str, failure: _Failure) -> ParseError:
    pos = min(failure.pos, len(src))
    line, col = _line_col(src, pos)
    line_start = pos - col + 1
    line_end = src.find("\n", pos)
    source_line = src[line_start : len(src) if line_end < 0 else line_end]
    return ParseError(failure.msg, path, line, col, source_line)


def _at(src: str, pos: int) -> str:
    """``line:col`` of an offset, for messages that point at a second place."""
    line, col = _line_col(src, pos)
    return f"{line}:{col}"


def _found(src: str, pos: int) -> str:
    """Describe what stands at ``pos``, for "expected X, found Y"."""
    if pos >= len(src):
        return "end of input"
    char = src[pos]
    if char == '"':
        return "a string"
    m = _word(src, pos)
    if m is not None:
        word = m[0]
        return repr(word if len(word) <= 30 else word[:27] + "...")
    return repr(char)


def _expected(src: str, pos: int, what: str) -> _Failure:
    return _Failure(pos, f"expected {what}, found {_found(src, pos)}")


# -- whitespace and comments ----------------------------------------------------------


def _skip(src: str, pos: int) -> int:
    """Skip whitespace and comments, nested block comments included."""
    pos = _skip_ws(src, pos).end()
    if src.startswith("/*", pos):
        return _skip_nested(src, pos)
    return pos


def _skip_nested(src: str, pos: int) -> int:
    """Finish skipping where the regex stopped: at a nested block comment.

    Returns ``pos`` unchanged when no comment starts there, so the caller reports
    the stray character.
    """
    while src.startswith("/*", pos):
        start = pos
        depth = 1
        pos += 2
        while depth:
            m = _comment_mark(src, pos)
            if m is None:
                raise _Failure(start, "unterminated block comment starting here")
            depth += 1 if m[0] == "/*" else -1
            pos = m.end()
        pos = _skip_ws(src, pos).end()
    return pos


# -- document -------------------------------------------------------------------------


def _document(src: str, spans: _Spans | None) -> tuple[int, Value]:
    # Some editors start UTF-8 files with a byte order mark; it is not part of the text.
    pos = _skip(src, 1 if src.startswith("\ufeff") else 0)
    if src.startswith("#", pos):
        pos = _extensions(src, pos)
    start = pos
    pos, value = _value(src, pos, 0, spans)
    pos = _skip(src, pos)
    if pos < len(src):
        raise _expected(src, pos, "end of input after the value")
    return start, value


def _extensions(src: str, pos: int) -> int:
    while src.startswith("#", pos):
        pos = _punct(src, _skip(src, pos + 1), "!", "'!' after '#'")
        pos = _punct(src, _skip(src, pos), "[", "'[' after '#!'")
        pos = _skip(src, pos)
        m = _ident(src, pos)
        if m is None or m[0] != "enable":
            raise _expected(src, pos, "'enable' in '#![...]'")
        pos = _punct(src, _skip(src, m.end()), "(", "'(' after 'enable'")
        while True:
            pos = _skip(src, pos)
            if src.startswith(")", pos):
                break
            m = _ident(src, pos)
            if m is None:
                raise _expected(src, pos, "an extension name or ')'")
            if m[0] not in EXTENSIONS:
                known = ", ".join(sorted(EXTENSIONS))
                raise _Failure(pos, f"unknown extension {m[0]!r}; known extensions: {known}")
            pos = _skip(src, m.end())
            if src.startswith(",", pos):
                pos += 1
            elif not src.startswith(")", pos):
                raise _expected(src, pos, "',' or ')' after an extension name")
        pos = _punct(src, _skip(src, pos + 1), "]", "']' to close '#![enable(...)'")
        pos = _skip(src, pos)
    return pos


def _punct(src: str, pos: int, char: str, what: str) -> int:
    if not src.startswith(char, pos):
        raise _expected(src, pos, what)
    return pos + 1


# -- deferred values -----------------------------------------------------------------

# The parts of a value that may hold brackets which do not count: strings, raw strings,
# chars and comments, each taken whole. Runs of other characters go in one step.
# Possessive quantifiers keep a failed match from backtracking.
_ATOM = (
    r"""[^"'/()\[\]{}br]++"""
    r'|(?<!\w)b?r(?P<hashesN>#*+)"(?s:.*?)"(?P=hashesN)'
    r'|"(?:[^"\\]++|\\.)*+"'
    r"|'(?:[^'\\\n]|\\(?:u\{[0-9A-Fa-f]*\}|.))'"
    r"|//[^\n]*+"
    rf"|{_BLOCK}"
    r"|/(?![/*])"
    r"|[br]"
)
# Brackets nested this deep are followed by the regex; deeper values are parsed.
_SCAN_DEPTH = 12


def _balanced(levels: int) -> str:
    """A regex for text whose brackets nest at most ``levels`` deep and are balanced."""
    body = ""
    for level in range(levels):
        atom = _ATOM.replace("hashesN", f"hashes{level}")
        body = f"(?:{atom}|[(\\[{{]{body}[)\\]}}])*+" if body else f"(?:{atom})*+"
    return body


# A whole bracketed value from its opening bracket: the brackets are only counted,
# not paired by kind; the parse that fills the value checks the rest.
_bracketed = re.compile(rf"[(\[{{]{_balanced(_SCAN_DEPTH)}[)\]}}]", re.DOTALL).match


class _Deferrer:
    """What :func:`loads_deferred` needs while it parses: the fields to leave out."""

    __slots__ = ("fields", "path", "src", "taken")

    def __init__(self, src: str, fields: frozenset[str], path: str) -> None:
        self.src = src
        self.fields = fields
        self.path = path
        self.taken: dict[str, Deferred] = {}

    def take(
        self, src: str, pos: int, key: str, name: str | None, open_pos: int
    ) -> tuple[int, Value]:
        """Skip the value of field ``key`` at ``pos``, or parse it if it cannot be deferred."""
        hollow: Value = None
        bracket = pos
        char = src[pos : pos + 1]
        if char == "[":
            hollow = []
        elif char == "{":
            hollow = {}
        elif char == "(":
            if _field(src, pos + 1) is not None:
                hollow = Struct(None, {})
        else:
            m = _ident(src, pos)
            if m is not None and m[0] not in _CONSTANTS and m[0] not in _STRING_PREFIXES:
                word = m[0]
                bracket = _skip(src, m.end())
                if not src.startswith("(", bracket):
                    pass
                elif word == "Some":
                    hollow = Some(None)
                elif _field(src, bracket + 1) is not None:
                    hollow = Struct(word, {})
                elif not src.startswith(")", _skip(src, bracket + 1)):
                    inner = _skip(src, bracket + 1)
                    if src[inner : inner + 1] in _VALUE_STARTS or _field_start(src, inner) is None:
                        hollow = TupleStruct(word, ())
        end = None if hollow is None else _laid_out_end(src, pos, bracket)
        if end is None and hollow is not None:
            scanned = _bracketed(src, bracket)
            end = None if scanned is None else scanned.end()
        if end is None:  # a scalar, a tuple, or too deep or unusual for the scan
            return _value(src, pos, 1, None)
        self.taken[key] = Deferred(src, self.path, pos, end, hollow, (name, open_pos))
        return end, hollow


# Bytes that tell where a value ends, once escapes, chars and raw-string hashes are
# ruled out: quotes, brackets, and the characters that start comments.
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"()[]{}/*')
_CLOSER_OF = {"(": ")", "[": "]", "{": "}"}
_spaces: Callable[[str, int], re.Match[str]] = re.compile(" *").match  # type: ignore[assignment]


def _laid_out_end(src: str, pos: int, bracket: int) -> int | None:
    """Where the bracketed value at ``bracket`` ends, if the text is laid out as written.

    The emitter closes a multi-line value on a line of its own, indented like the line
    the value starts on: that line is found with string searches, and the text up to it
    is checked to be one balanced group. Without escapes, chars, raw-string hashes and
    comments, quotes pair up in order, so bytes-level filters do that check in C.
    None when the guess fails or the check cannot tell; the caller scans instead.
    """
    line = src.rfind("\n", 0, pos) + 1
    close = _CLOSER_OF[src[bracket]]
    closer = "\n" + _spaces(src, line)[0] + close
    found = bracket
    for _ in range(64):  # the closing character is rare in big values: memchr finds it
        found = src.find(close, found + 1)
        if found < 0:
            return None
        if src.startswith(closer, found + 1 - len(closer)):
            break
    else:
        found = src.find(closer, found) + len(closer) - 1
        if found < len(closer) - 1:
            return None
    end = found + 1
    text = src[bracket:end]
    if "\\" in text or "'" in text or "#" in text:
        return None
    skeleton = text.encode("utf-8", "surrogatepass").translate(None, _NOT_STRUCTURE)
    if b"//" in skeleton or b"/*" in skeleton:
        return None  # maybe a comment (or a string with "//" in it)
    skeleton = skeleton.replace(b"/", b"").replace(b"*", b"").replace(b'""', b"")
    if b'"' in skeleton:
        return None  # a string holds a bracket
    inner = skeleton[1:-1]
    while inner:
        shorter = inner.replace(b"()", b"").replace(b"[]", b"").replace(b"{}", b"")
        if len(shorter) == len(inner):
            return None
        inner = shorter
    return end


def _deferring_document(src: str, deferrer: _Deferrer) -> Value:
    """:func:`_document` for :func:`loads_deferred`: the top-level struct defers fields."""
    pos = _skip(src, 1 if src.startswith("\ufeff") else 0)
    if src.startswith("#", pos):
        pos = _extensions(src, pos)
    name: str | None = None
    bracket = pos
    m = _ident(src, pos)
    if m is not None:
        name = m[0]
        bracket = _skip(src, m.end())
    first = _field(src, bracket + 1) if src.startswith("(", bracket) else None
    if first is None or name in _CONSTANTS or name in _STRING_PREFIXES or name == "Some":
        return _document(src, None)[1]
    pos, value = _struct(src, bracket, name, first, 1, None, deferrer)
    pos = _skip(src, pos)
    if pos < len(src):
        raise _expected(src, pos, "end of input after the value")
    return value


def _value(src: str, pos: int, depth: int, spans: _Spans | None) -> tuple[int, Value]:
    """Parse the value that starts exactly at ``pos`` (whitespace already skipped).

    ``depth`` counts the brackets open around it.
    """
    try:
        char = src[pos]
    except IndexError:
        raise _expected(src, pos, "a value") from None
    if char in _NUMBER_START:
        m = _decimal(src, pos)
        if m is not None:
            text = m[0]
            if m.lastindex:
                return m.end(), float(text)
            if len(text) <= _SAFE_DIGITS:
                return m.end(), int(text)
        return _number_slow(src, pos)
    if char == '"':
        end = src.find('"', pos + 1)
        if end > 0:
            text = src[pos + 1 : end]
            if "\\" not in text:
                return end + 1, text
        return _string(src, pos, pos, False)
    if char == "(":
        return _paren(src, pos, depth, spans)
    if char == "[":
        if depth >= MAX_DEPTH:
            raise _too_deep(pos)
        return _items(src, pos, _skip_ws(src, pos + 1).end(), "]", "list", depth + 1, spans)
    if char == "{":
        return _map(src, pos, depth, spans)
    m = _ident(src, pos)
    if m is not None:
        word = m[0]
        if word in _CONSTANTS:
            return m.end(), _CONSTANTS[word]
        if word == "Some" or word in _STRING_PREFIXES:
            return _word_value(src, pos, word, m.end(), depth, spans)
        return _named(src, word, m.end(), depth, spans)
    if char == "'":
        return _char(src, pos)
    if char == "/":
        after = _skip(src, pos)
        if after != pos:
            return _value(src, after, depth, spans)
    raise _expected(src, pos, "a value")


def _word_value(
    src: str, start: int, word: str, pos: int, depth: int, spans: _Spans | None
) -> tuple[int, Value]:
    """A value that starts with ``Some`` or a string prefix (``r``, ``b``, ``br``)."""
    if word == "Some":
        return _some(src, pos, depth, spans)
    if word in _STRING_PREFIXES:
        after = src[pos : pos + 1]
        if after == '"':
            if word == "b":
                return _string(src, pos, start, True)
            return _raw_string(src, pos, start)
        if after == "#" and word != "b":
            m = _raw_ident(src, pos + 1) if word == "r" else None
            if m is not None:
                return _named(src, m[0], m.end(), depth, spans)
            return _raw_string(src, pos, start)
    return _named(src, word, pos, depth, spans)


def _named(src: str, name: str, pos: int, depth: int, spans: _Spans | None) -> tuple[int, Value]:
    """After an identifier: a struct or tuple struct if ``(`` follows, else a unit."""
    if not src.startswith("(", pos):
        if src[pos : pos + 1] not in _SPACE_STARTS:
            return pos, Ident(name)
        after = _skip(src, pos)
        if not src.startswith("(", after):
            return pos, Ident(name)
        pos = after
    if depth >= MAX_DEPTH:
        raise _too_deep(pos)
    if spans is None and (name == "Tensor" or name == "Array") and depth + 2 < MAX_DEPTH:
        r = _record(src, pos)
        if r is not None:
            file, key, dtype, dims, checksum = r.groups()
            shape = tuple(map(int, dims.rstrip(",").split(", "))) if dims else ()
            fields = {"file": file, "key": key, "dtype": dtype, "shape": shape}
            fields["checksum"] = checksum
            return r.end(), Struct(name, fields)
    m = _field(src, pos + 1)
    if m is not None:
        return _struct(src, pos, name, m, depth + 1, spans)
    inner = _skip(src, pos + 1)
    if src.startswith(")", inner):
        struct = Struct(name, {})
        if spans is not None:
            spans[id(struct)] = {}
        return inner + 1, struct
    if src[inner : inner + 1] not in _VALUE_STARTS and _field_start(src, inner) is not None:
        return _struct(src, pos, name, None, depth + 1, spans)
    pos, items = _items(src, pos, inner, ")", f"tuple struct {name!r}", depth + 1, spans)
    value = TupleStruct(name, tuple(items))
    if spans is not None:
        spans[id(value)] = spans.pop(id(items))
    return pos, value


def _too_deep(pos: int) -> _Failure:
    return _Failure(pos, f"nesting deeper than {MAX_DEPTH} levels")


def _paren(src: str, pos: int, depth: int, spans: _Spans | None) -> tuple[int, Value]:
    """``()`` unit, ``(a: 1)`` unnamed struct, or ``(1, 2)`` tuple."""
    if depth >= MAX_DEPTH:
        raise _too_deep(pos)
    m = _field(src, pos + 1)
    if m is not None:
        return _struct(src, pos, None, m, depth + 1, spans)
    inner = _skip(src, pos + 1)
    if src.startswith(")", inner):
        return inner + 1, ()
    if src[inner : inner + 1] not in _VALUE_STARTS and _field_start(src, inner) is not None:
        return _struct(src, pos, None, None, depth + 1, spans)
    pos, items = _items(src, pos, inner, ")", "tuple", depth + 1, spans)
    value = tuple(items)
    if spans is not None:
        spans[id(value)] = spans.pop(id(items))
    return pos, value


def _items(
    src: str,
    open_pos: int,
    pos: int,
    close: str,
    what: str,
    depth: int,
    spans: _Spans | None,
) -> tuple[int, list[Value]]:
    """Comma-separated values up to ``close``; ``pos`` is after the opening bracket."""
    items: list[Value] = []
    starts: list[int] | None = None
    if spans is not None:
        starts = spans[id(items)] = []
    while True:
        char = src[pos : pos + 1]
        if char == "/":
            pos = _skip(src, pos)
            char = src[pos : pos + 1]
        if char == close:
            return pos + 1, items
        if not char or char in _CLOSERS:
            raise _unclosed(src, pos, "a value or", close, what, open_pos)
        if starts is not None:
            starts.append(pos)
        # Numbers inlined from _value: lists of them are the most common lists.
        num = _decimal(src, pos) if char in _NUMBER_START else None
        value: Value
        if num is not None and (num.lastindex or num.end() - pos <= _SAFE_DIGITS):
            value = float(num[0]) if num.lastindex else int(num[0])
            pos = num.end()
        else:
            pos, value = _value(src, pos, depth, spans)
        items.append(value)
        m = _comma(src, pos)
        if m is not None:
            pos = m.end()
            continue
        pos = _skip_ws(src, pos).end()
        char = src[pos : pos + 1]
        if char == "/":
            pos = _skip(src, pos)
            char = src[pos : pos + 1]
        if char == ",":
            pos = _skip_ws(src, pos + 1).end()
        elif char == close:
            return pos + 1, items
        elif close == ")" and len(items) == 1 and type(value) is Ident and char not in _CLOSERS:
            # `Name(lr 0.1)`: a struct field without its colon reads as a tuple item.
            raise _expected(src, pos, f"':' after field name {value.name!r}")
        else:
            raise _unclosed(src, pos, "',' or", close, what, open_pos)


def _unclosed(src: str, pos: int, before: str, close: str, what: str, open_pos: int) -> _Failure:
    opened = _at(src, open_pos)
    return _expected(src, pos, f"{before} {close!r} to close {what} opened at {opened}")


def _field_start(src: str, pos: int) -> tuple[int, str] | None:
    """``(position after the colon, name)`` if a field name and ``:`` start at ``pos``.

    The slow twin of the ``_field`` regex, for when comments stand around the name.
    """
    m = _ident(src, pos)
    if m is None:
        return None
    name = m[0]
    end = m.end()
    if name == "r" and src.startswith("#", end):
        raw = _raw_ident(src, end + 1)
        if raw is None:
            return None
        name = raw[0]
        end = raw.end()
    after = _skip(src, end)
    if not src.startswith(":", after):
        return None
    return _skip(src, after + 1), name


def _struct(
    src: str,
    open_pos: int,
    name: str | None,
    m: re.Match[str] | None,
    depth: int,
    spans: _Spans | None,
    defer: _Deferrer | None = None,
) -> tuple[int, Value]:
    """Named fields up to ``)``; ``m`` is the ``_field`` match of the first one, if any.

    ``depth`` is the depth of the field values. ``defer`` (top level only) leaves the
    values of some fields unparsed (see :func:`loads_deferred`).
    """
    fields: dict[str, Value] = {}
    spots: dict[str, tuple[int, int]] | None = None if spans is None else {}
    pos = open_pos + 1
    while True:
        if m is not None:
            key = m[1] or m[2]
            pos = m.end()
            if key in fields or spots is not None:
                key_pos = m.start(1) if m[1] is not None else m.start(2) - 2  # at `r#`
                if key in fields:
                    raise _duplicate(src, open_pos, name, key_pos, key, spots, depth)
                if spots is not None:
                    spots[key] = (key_pos, pos)
        else:
            pos = _skip(src, pos)
            if src.startswith(")", pos):
                break
            start = _field_start(src, pos)
            if start is None:
                raise _bad_field(src, pos, name, open_pos)
            key_pos = pos
            pos, key = start
            if key in fields:
                raise _duplicate(src, open_pos, name, key_pos, key, spots, depth)
            if spots is not None:
                spots[key] = (key_pos, pos)
        # The scalars of _value inlined: most field values are numbers or strings.
        char = src[pos : pos + 1]
        num = _decimal(src, pos) if char in _NUMBER_START else None
        if defer is not None and key in defer.fields:
            pos, fields[key] = defer.take(src, pos, key, name, open_pos)
        elif num is not None and (num.lastindex or num.end() - pos <= _SAFE_DIGITS):
            fields[key] = float(num[0]) if num.lastindex else int(num[0])
            pos = num.end()
        elif (
            char == '"'
            and (end := src.find('"', pos + 1)) > 0
            and "\\" not in (text := src[pos + 1 : end])
        ):
            fields[key] = text
            pos = end + 1
        else:
            pos, fields[key] = _value(src, pos, depth, spans)
        m = _next_field(src, pos)
        if m is not None:
            continue
        closing = _close_paren(src, pos)
        if closing is not None:
            pos = closing.end() - 1
            break
        pos = _skip_ws(src, pos).end()
        char = src[pos : pos + 1]
        if char == "/":
            pos = _skip(src, pos)
            char = src[pos : pos + 1]
        if char == ",":
            pos += 1
            m = _field(src, pos)
        elif char == ")":
            break
        else:
            raise _unclosed(src, pos, "',' or", ")", _struct_what(name), open_pos)
    struct = Struct(name, fields)
    if spans is not None:
        spans[id(struct)] = spots
    return pos + 1, struct


def _struct_what(name: str | None) -> str:
    return "struct" if name is None else f"struct {name!r}"


def _bad_field(src: str, pos: int, name: str | None, open_pos: int) -> _Failure:
    m = _ident(src, pos)
    if m is not None:
        return _expected(src, _skip(src, m.end()), f"':' after field name {m[0]!r}")
    return _unclosed(src, pos, "a field name or", ")", _struct_what(name), open_pos)


def _duplicate(
    src: str,
    open_pos: int,
    name: str | None,
    key_pos: int,
    key: Value,
    spots: dict[Any, tuple[int, int]] | None,
    depth: int,
) -> _Failure:
    """The error for a repeated field or key, naming where it first appeared.

    The fast pass keeps no positions, so it parses the container again with them.
    """
    is_map = src[open_pos] == "{"
    if spots is None:
        try:
            if is_map:
                _map(src, open_pos, depth - 1, {})
            else:
                _struct(src, open_pos, name, _field(src, open_pos + 1), depth, {})
        except _Failure as failure:
            return failure
        raise AssertionError("the second pass found no duplicate")  # pragma: no cover
    first = _at(src, spots[key][0])
    if is_map:
        return _Failure(key_pos, f"duplicate key {format_value(key)} in map (first at {first})")
    return _Failure(key_pos, f"duplicate field {key!r} in {_struct_what(name)} (first at {first})")


def _map(src: str, pos: int, depth: int, spans: _Spans | None) -> tuple[int, Value]:
    if depth >= MAX_DEPTH:
        raise _too_deep(pos)
    open_pos = pos
    depth += 1
    result: dict[Value, Value] = {}
    spots: dict[Any, tuple[int, int]] | None = None if spans is None else {}
    pos = _skip(src, pos + 1)
    while True:
        char = src[pos : pos + 1]
        if char == "}":
            break
        if not char or char in _CLOSERS:
            raise _unclosed(src, pos, "a key or", "}", "map", open_pos)
        key_pos = pos
        pos, key = _value(src, pos, depth, spans)
        try:
            seen = key in result
        except TypeError:
            raise _Failure(key_pos, _unhashable(key)) from None
        if seen:
            raise _duplicate(src, open_pos, None, key_pos, key, spots, depth)
        m = _colon(src, pos)
        if m is not None:
            pos = m.end()
        else:
            pos = _skip(src, _punct(src, _skip(src, pos), ":", "':' after a map key"))
        if src.startswith("/", pos):
            pos = _skip(src, pos)
        if spots is not None:
            spots[key] = (key_pos, pos)
        pos, result[key] = _value(src, pos, depth, spans)
        m = _comma(src, pos)
        if m is not None:
            pos = m.end()
            if src.startswith("/", pos):
                pos = _skip(src, pos)
            continue
        pos = _skip(src, pos)
        char = src[pos : pos + 1]
        if char == ",":
            pos = _skip(src, pos + 1)
        elif char != "}":
            raise _unclosed(src, pos, "',' or", "}", "map", open_pos)
    if spans is not None:
        spans[id(result)] = spots
    return pos + 1, result


def _unhashable(key: Value) -> str:
    if isinstance(key, list):
        return "a list cannot be a map key here; use a tuple"
    if isinstance(key, dict):
        return "a map cannot be a map key"
    return "this key holds a list or a map, so it cannot be a map key"


def _some(src: str, pos: int, depth: int, spans: _Spans | None) -> tuple[int, Value]:
    pos = _skip(src, pos)
    if not src.startswith("(", pos):
        raise _expected(src, pos, "'(' after 'Some'")
    if depth >= MAX_DEPTH:
        raise _too_deep(pos)
    open_pos = pos
    pos = _skip(src, pos + 1)
    if src.startswith(")", pos):
        raise _expected(src, pos, "a value inside 'Some(...)'")
    pos, value = _value(src, pos, depth + 1, spans)
    pos = _skip(src, pos)
    if src.startswith(",", pos):
        pos = _skip(src, pos + 1)
    if not src.startswith(")", pos):
        raise _expected(src, pos, f"')' to close 'Some(' opened at {_at(src, open_pos)}")
    return pos + 1, Some(value)


# -- scalars --------------------------------------------------------------------------


def _number_slow(src: str, pos: int) -> tuple[int, Value]:
    """Every number form the fast regex leaves out, and the errors for bad ones."""
    m = _number(src, pos)
    if m is None or _word_char(src, m.end()) is not None:
        sign = src[pos] if src[pos] in "+-" else ""
        word = _ident(src, pos + len(sign)) if sign else None
        if word is not None and word[0] == "inf":
            return word.end(), -inf if sign == "-" else inf
        if word is not None and word[0] == "NaN":
            # Every NaN is the one object `nan`, sign dropped as the emitter drops it, so
            # that a map reads `NaN` and `-NaN` as one key, as they are written.
            return word.end(), nan
        raise _bad_number(src, pos, m)
    sign, suffix, text = m["sign"], m["suffix"], m["dec"]
    if text is not None:
        if "." in text or "e" in text or "E" in text or suffix in ("f32", "f64"):
            if suffix is not None and suffix[0] != "f":
                raise _Failure(
                    pos, f"invalid number {m[0]!r}: a float cannot have suffix {suffix!r}"
                )
            value = float(text)
            return m.end(), -value if sign == "-" else value
        digits = text.replace("_", "")
        if len(digits) > MAX_INT_DIGITS:
            raise _Failure(
                pos,
                f"integer with {len(digits)} digits is too long; at most "
                f"{MAX_INT_DIGITS} decimal digits are read (write it in hex)",
            )
        number = _int10(digits)
    elif m["hex"] is not None:
        number = int(m["hex"], 16)
    elif m["oct"] is not None:
        number = int(m["oct"], 8)
    else:
        number = int(m["bin"], 2)
    if sign == "-":
        number = -number
    if suffix is not None:
        low, high = _INT_RANGES[suffix]
        if not low <= number <= high:
            raise _Failure(pos, f"integer {format_int(number)} out of range for {suffix}")
    return m.end(), number


def _int10(digits: str) -> int:
    """``int(digits)`` for up to :data:`MAX_INT_DIGITS` digits, even where the program
    has set ``sys.int_max_str_digits`` lower."""
    if len(digits) <= _SAFE_DIGITS:
        return int(digits)
    number = 0
    for start in range(0, len(digits), _SAFE_DIGITS):
        chunk = digits[start : start + _SAFE_DIGITS]
        number = number * 10 ** len(chunk) + int(chunk)
    return number


def _bad_number(src: str, pos: int, m: re.Match[str] | None) -> _Failure:
    word = _word(src, pos)
    text = word[0] if word is not None else src[pos]
    unsigned = text.lstrip("+-")
    if not unsigned[:1].isdigit() and not unsigned[1:2].isdigit():
        return _expected(src, pos, "a value")
    prefix = unsigned[:2]
    if prefix in ("0x", "0o", "0b") and (m is None or m["dec"] is not None):
        reason = f"no digits after {prefix!r}"
    elif "__" in text or "_." in text or "._" in text or text.endswith("_") or "x_" in text:
        reason = "'_' may only stand between digits"
    elif text.count(".") > 1:
        reason = "more than one '.'"
    else:
        rest = text[m.end() - pos :] if m is not None else text
        reason = f"unknown suffix {rest!r}"
    shown = text if len(text) <= 30 else text[:27] + "..."
    return _Failure(pos, f"invalid number {shown!r}: {reason}")


def _string(src: str, pos: int, start: int, is_bytes: bool) -> tuple[int, Value]:
    """A string with escapes from the quote at ``pos``; ``start`` is where it began."""
    parts: list[str] = []
    pos += 1
    while True:
        stop = _plain(src, pos).end()
        parts.append(src[pos:stop])
        char = src[stop : stop + 1]
        if char == '"':
            if is_bytes:
                return stop + 1, _join_bytes(parts)
            return stop + 1, "".join(parts)
        if not char:
            raise _Failure(start, "unterminated string starting here")
        pos, char = _escape(src, stop, start, is_bytes)
        parts.append(char)


def _join_bytes(parts: list[str]) -> bytes:
    """Byte string contents: text runs (even places) as UTF-8, escapes as one byte each."""
    return b"".join(
        bytes([ord(part)]) if i % 2 else part.encode("utf-8", "surrogatepass")
        for i, part in enumerate(parts)
    )


def _escape(src: str, pos: int, start: int, is_bytes: bool) -> tuple[int, str]:
    """What the backslash escape at ``pos`` stands for; a byte is returned as a char."""
    kind = src[pos + 1 : pos + 2]
    simple = _ESCAPES.get(kind)
    if simple is not None:
        return pos + 2, simple
    if not kind:
        raise _Failure(start, "unterminated string starting here")
    if kind == "x":
        m = _hex2(src, pos + 2)
        if m is None:
            raise _Failure(pos, "invalid escape: '\\x' must be followed by two hex digits")
        code = int(m[0], 16)
        if code > 0x7F and not is_bytes:
            raise _Failure(
                pos,
                f"invalid escape '\\x{m[0]}': '\\x' goes up to 7F in a string; "
                f"write '\\u{{{m[0]}}}' for that character",
            )
        return m.end(), chr(code)
    if kind == "u" and not is_bytes:
        m = _unicode_escape(src, pos + 2)
        if m is None:
            raise _Failure(
                pos, "invalid escape: '\\u' must be followed by '{' 1 to 6 hex digits '}'"
            )
        code = int(m[1], 16)
        if code > 0x10FFFF:
            raise _Failure(pos, f"invalid escape '\\u{{{m[1]}}}': beyond U+10FFFF")
        # Lone surrogates are accepted (ron-rs refuses them) so that every Python str,
        # which may hold them, comes back from loads(dumps(s)).
        return m.end(), chr(code)
    where = "byte string" if is_bytes else "string"
    raise _Failure(pos, f"unknown escape '{src[pos : pos + 2]}' in a {where}")


def _raw_string(src: str, pos: int, start: int) -> tuple[int, Value]:
    """``r#"..."#`` or ``br#"..."#``; ``pos`` is after the ``r``, ``start`` at the prefix."""
    quote = pos
    while src.startswith("#", quote):
        quote += 1
    if not src.startswith('"', quote):
        raise _expected(src, quote, "'\"' to start a raw string")
    terminator = '"' + "#" * (quote - pos)
    end = src.find(terminator, quote + 1)
    if end < 0:
        raise _Failure(start, "unterminated raw string starting here")
    text = src[quote + 1 : end]
    if src.startswith("b", start):
        return end + len(terminator), text.encode("utf-8", "surrogatepass")
    return end + len(terminator), text


def _char(src: str, pos: int) -> tuple[int, Value]:
    char = src[pos + 1 : pos + 2]
    end = pos + 2
    if char == "\\":
        end, char = _escape(src, pos + 1, pos, False)
    elif char in ("", "'", "\n"):
        raise _expected(src, pos + 1, 'a character after "\'"')
    if not src.startswith("'", end):
        if end >= len(src):
            raise _Failure(pos, "unterminated char starting here")
        raise _expected(src, end, '"\'" to close the char')
    return end + 1, char
