"""Value tree -> RON text, in the one layout hyperstate writes.

The layout is that of earlier hyperstate releases: four-space indents, one struct field
or map entry per line, trailing commas, tuples and short lists of scalars on one line.
Output depends only on the value (dicts keep their insertion order), so the same
config always gives the same bytes.
"""

from __future__ import annotations

import re
from math import inf

from hyperstate import _gc
from hyperstate.errors import ConfigError, Issue, PathSegment
from hyperstate.ron._parser import _IDENT, _RAW_IDENT, MAX_DEPTH, MAX_INT_DIGITS
from hyperstate.ron._values import Ident, Some, Struct, TupleStruct, Value

__all__ = ["dumps"]

_INDENT = "    "
_INLINE_LIST_WIDTH = 80

_plain_name = re.compile(_IDENT).fullmatch
_raw_name = re.compile(_RAW_IDENT).fullmatch
# Words that would read back as something else if written bare.
_KEYWORDS = frozenset({"true", "false", "None", "Some", "inf", "NaN"})

# Control characters, both line separators and lone surrogates are escaped, so the text
# stays printable and any Python str reads back exactly; other non-ASCII text is kept.
_needs_escape = re.compile(r'[\\"\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]')
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_BYTE_TEXT = tuple(
    "\\\\"
    if byte == 0x5C
    else '\\"'
    if byte == 0x22
    else chr(byte)
    if 0x20 <= byte < 0x7F
    else f"\\x{byte:02X}"
    for byte in range(256)
)


def dumps(value: Value) -> str:
    """Write a value tree as RON text, without a trailing newline.

    Floats are written so that they read back to the same number (``repr``; every NaN
    is ``NaN``), ints in decimal up to :data:`~hyperstate.ron.MAX_INT_DIGITS` digits and
    in hex beyond, strings and bytes so that they read back to the same text and bytes.
    Two values have no text of their own: a tuple struct without items is written
    ``Name()`` and an unnamed struct without fields ``()``, which read back as an empty
    struct and as unit. Raises :class:`TypeError` for a Python type that has no RON
    form, :class:`ValueError` for a name that cannot be written or nesting deeper than
    :data:`~hyperstate.ron.MAX_DEPTH`, and :class:`~hyperstate.errors.ConfigError`
    naming the map for a map whose keys would read back as fewer keys (two NaN keys,
    say: NaN equals nothing, so a map can hold several, but they are all written
    ``NaN``).

    >>> print(dumps(Struct("Optimizer", {"lr": 0.003, "betas": (0.9, 0.98)})))
    Optimizer(
        lr: 0.003,
        betas: (0.9, 0.98),
    )
    """
    out: list[str] = []
    try:
        with _gc.paused():
            _write(value, out, "", 0)
    except _KeysCollide as e:
        raise e.error(value) from None
    return "".join(out)


class _KeysCollide(Exception):
    """Keys of ``mapping`` that are written as the same ``text`` (raised at the first)."""

    def __init__(self, mapping: dict[Value, Value], text: str) -> None:
        self.mapping = mapping
        self.text = text

    def error(self, root: Value) -> ConfigError:
        """The error to raise, naming where the map stands in ``root``."""
        count = sum(1 for key in self.mapping if type(key) is not str and _key(key) == self.text)
        shown = self.text if len(self.text) <= 60 else self.text[:57] + "..."
        message = (
            f"expected map keys that read back as distinct keys, found {count} written as {shown}"
        )
        if "NaN" in self.text:
            message += " (NaN equals nothing, not even NaN, so no text tells such keys apart)"
        return ConfigError([Issue(_path_to(root, self.mapping) or (), message)])


def _key(key: Value) -> str | None:
    """The text of a map key; None for one that cannot be written (a later error)."""
    try:
        return _inline(key, 0)
    except (TypeError, ValueError):
        return None


def _path_to(node: Value, target: object) -> tuple[PathSegment, ...] | None:
    """The value path of the container ``target`` inside ``node``; ``Some`` adds no step."""
    if node is target:
        return ()
    while isinstance(node, Some):
        node = node.value
        if node is target:
            return ()
    children: list[tuple[PathSegment, Value]]
    if isinstance(node, Struct):
        children = list(node.fields.items())
    elif isinstance(node, dict):
        children = list(node.items())
    elif isinstance(node, TupleStruct):
        children = list(enumerate(node.items))
    elif isinstance(node, list | tuple):
        children = list(enumerate(node))
    else:
        return None
    for seg, child in children:
        found = _path_to(child, target)
        if found is not None:
            return (seg, *found)
    return None


def _write(value: Value, out: list[str], indent: str, depth: int) -> None:
    """Append ``value`` laid out over lines; ``indent`` is that of its first line.

    ``depth`` counts the brackets open around the value, as the parser does.
    """
    if type(value) is Struct and depth < MAX_DEPTH - 2:
        text = _record(value, indent)
        if text is not None:
            out.append(text)
            return
    text = _flat(value, depth)
    if text is not None:
        out.append(text)
        return
    if depth >= MAX_DEPTH:
        raise _too_deep()
    inner = indent + _INDENT
    depth += 1
    if isinstance(value, Struct):
        head = "" if value.name is None else _name(value.name)
        if not value.fields:
            out.append(head + "()")
            return
        out.append(head + "(\n")
        for field, item in value.fields.items():
            out.append(f"{inner}{_name(field)}: ")
            _write(item, out, inner, depth)
            out.append(",\n")
        out.append(indent + ")")
    elif isinstance(value, list):
        if not value:
            out.append("[]")
            return
        texts = _flat_items(value, depth)
        if texts is not None:
            line = "[" + ", ".join(texts) + "]"
            if len(line) <= _INLINE_LIST_WIDTH:
                out.append(line)
                return
        _write_items("[", value, "]", out, indent, depth)
    elif isinstance(value, tuple | TupleStruct):
        items: tuple[Value, ...]
        if isinstance(value, tuple):
            # "(1)" would read back as a 1-tuple too, but "(1,)" says what it is.
            head, items, comma = "(", value, "," if len(value) == 1 else ""
        else:
            head, items, comma = _name(value.name) + "(", value.items, ""
        texts = _flat_items(items, depth)
        if texts is not None:
            out.append(head + ", ".join(texts) + comma + ")")
        else:
            _write_items(head, items, ")", out, indent, depth)
    elif isinstance(value, dict):
        if not value:
            out.append("{}")
            return
        out.append("{\n")
        # Keys other than strings may be written alike (several NaN keys, an empty
        # unnamed struct and unit) and would read back as one key, or not at all.
        key_texts: set[str] = set()
        for key, item in value.items():
            if type(key) is str:
                head = f"{inner}{_string(key)}: "
            else:
                key_text = _inline(key, depth)
                if key_text in key_texts:
                    raise _KeysCollide(value, key_text)
                key_texts.add(key_text)
                head = f"{inner}{key_text}: "
            # Maps of tensor references are the bulk of a state: one piece per entry.
            text = _record(item, inner) if type(item) is Struct and depth < MAX_DEPTH - 2 else None
            if text is not None:
                out.append(f"{head}{text},\n")
                continue
            out.append(head)
            _write(item, out, inner, depth)
            out.append(",\n")
        out.append(indent + "}")
    elif isinstance(value, Some):
        out.append("Some(")
        _write(value.value, out, indent, depth)
        out.append(")")
    else:
        raise _unsupported(value)


def _record(value: Struct, indent: str) -> str | None:
    """The text of a struct whose fields are all strings, numbers or tuples of ints.

    Such records (tensor references above all) are most of a large state's text, so
    they are written in one piece, as :func:`_write` would write them. None for other
    structs (or an empty one), which take the general path.
    """
    fields = value.fields
    if not fields:
        return None
    inner = indent + _INDENT
    name = value.name
    parts = ["(\n" if name is None else (_NAMES.get(name) or _name(name)) + "(\n"]
    for field, item in fields.items():
        kind = type(item)
        if kind is str:
            text = _string(item)
        elif kind is int:
            text = _int(item)
        elif kind is float:
            text = _float(item)
        elif kind is tuple and all(type(n) is int for n in item):
            if len(item) == 1:
                text = f"({_int(item[0])},)"
            else:
                text = "(" + ", ".join(map(_int, item)) + ")"
        else:
            return None
        parts.append(f"{inner}{_NAMES.get(field) or _name(field)}: {text},\n")
    parts.append(indent + ")")
    return "".join(parts)


def _flat_items(items: list[Value] | tuple[Value, ...], depth: int) -> list[str] | None:
    """The texts of ``items`` if every one is flat (see :func:`_flat`), else None."""
    texts = []
    for item in items:
        text = _flat(item, depth)
        if text is None:
            return None
        texts.append(text)
    return texts


def _write_items(
    head: str,
    items: list[Value] | tuple[Value, ...],
    tail: str,
    out: list[str],
    indent: str,
    depth: int,
) -> None:
    inner = indent + _INDENT
    out.append(head + "\n")
    for item in items:
        out.append(inner)
        _write(item, out, inner, depth)
        out.append(",\n")
    out.append(indent + tail)


def _inline(value: Value, depth: int) -> str:
    """``value`` on one line, as map keys are written."""
    text = _flat(value, depth)
    if text is not None:
        return text
    if depth >= MAX_DEPTH:
        raise _too_deep()
    depth += 1
    if isinstance(value, Struct):
        head = "" if value.name is None else _name(value.name)
        fields = ", ".join(
            f"{_name(field)}: {_inline(item, depth)}" for field, item in value.fields.items()
        )
        return f"{head}({fields})"
    if isinstance(value, list):
        return "[" + ", ".join(_inline(item, depth) for item in value) + "]"
    if isinstance(value, tuple):
        comma = "," if len(value) == 1 else ""
        return "(" + ", ".join(_inline(item, depth) for item in value) + comma + ")"
    if isinstance(value, TupleStruct):
        return (
            _name(value.name) + "(" + ", ".join(_inline(item, depth) for item in value.items) + ")"
        )
    if isinstance(value, dict):
        entries = ", ".join(f"{_inline(k, depth)}: {_inline(v, depth)}" for k, v in value.items())
        return "{" + entries + "}"
    if isinstance(value, Some):
        return f"Some({_inline(value.value, depth)})"
    raise _unsupported(value)


def _flat(value: Value, depth: int) -> str | None:
    """The text of a leaf, of unit ``()``, or of ``Some`` around one of them; else None.

    These are what a tuple or a short list may hold and still be written on one line.
    """
    text = _leaf(value)
    if text is not None:
        return text
    somes = 0
    while isinstance(value, Some):
        value = value.value
        somes += 1
        if somes > MAX_DEPTH:  # also ends a Some that holds itself
            raise _too_deep()
    if isinstance(value, tuple) and not value:
        text, levels = "()", somes + 1
    elif somes:
        text, levels = _leaf(value), somes
    else:
        return None
    if text is None:
        return None
    if depth + levels > MAX_DEPTH:
        raise _too_deep()
    return "Some(" * somes + text + ")" * somes


def _leaf(value: Value) -> str | None:
    """The text of a value without brackets, else None."""
    kind = type(value)
    if kind is str:
        return _string(value)
    if kind is float:
        return _float(value)
    if kind is int:
        return _int(value)
    if value is None:
        return "None"
    if kind is bool:
        return "true" if value else "false"
    if kind is Ident:
        return _name(value.name)
    if kind is bytes:
        return 'b"' + "".join(map(_BYTE_TEXT.__getitem__, value)) + '"'
    # Subclasses (str enums, IntEnum, ...) are written as their base type.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return _int(int(value))
    if isinstance(value, float):
        return _float(float(value))
    if isinstance(value, str):
        return _string(str.__str__(value))
    if isinstance(value, bytes):
        return _leaf(bytes(value))
    return None


def _too_deep() -> ValueError:
    return ValueError(f"nesting deeper than {MAX_DEPTH} levels cannot be written")


# Ints of more digits are written in hex, which the parser reads whatever its length.
_DECIMAL_BOUND = 10**MAX_INT_DIGITS


def _int(value: int) -> str:
    if -_DECIMAL_BOUND < value < _DECIMAL_BOUND:
        try:
            return int.__repr__(value)
        except ValueError:  # sys.int_max_str_digits set lower than the parser reads
            pass
    return hex(value)


def _float(value: float) -> str:
    if value != value:
        return "NaN"
    if value == inf:
        return "inf"
    if value == -inf:
        return "-inf"
    # repr is the shortest text that reads back to the same float, and always has a
    # '.' or an exponent, so it reads back as a float and not an int.
    return float.__repr__(value)


def _string(text: str) -> str:
    if _needs_escape.search(text) is None:
        return '"' + text + '"'
    return '"' + _needs_escape.sub(_escape, text) + '"'


def _escape(m: re.Match[str]) -> str:
    char = m[0]
    return _ESCAPES.get(char) or f"\\u{{{ord(char):X}}}"


# Names seen before and written bare, keyed by themselves: field and struct names
# repeat a lot, and a dict lookup is cheaper than the regex. Bounded, as names come
# from the data.
_NAMES: dict[str, str] = {}
_MAX_NAMES = 4096


def _name(name: str) -> str:
    """A struct or variant name, raw (``r#name``) where a bare one would not read back."""
    if not isinstance(name, str):
        raise TypeError(f"a RON name must be a str, not {type(name).__name__}")
    if _plain_name(name) is not None and name not in _KEYWORDS:
        if type(name) is str and len(_NAMES) < _MAX_NAMES:
            _NAMES[name] = name
        return name
    if _raw_name(name) is not None:
        return "r#" + name
    raise ValueError(
        f"the name {name!r} cannot be written in RON: names are identifiers, "
        f"or letters, digits, '_', '.', '+' and '-' written as r#name"
    )


def _unsupported(value: Value) -> TypeError:
    return TypeError(f"cannot write a value of type {type(value).__name__} as RON")
