"""Command-line overrides: ``optimizer.lr=0.1``, ``layers[2].width=64``, ``tags+={"a": 1}``.

An override is applied to the value tree before it is turned into typed objects, guided
by the schema so that each path segment is read as a field name, list index or map key.
Fields that the file leaves out are filled with their defaults first, so any field can
be overridden whether or not the file mentions it.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hyperstate import ron
from hyperstate.errors import (
    ConfigError,
    Issue,
    PathSegment,
    ValuePath,
    format_int,
    format_path,
    format_value,
)
from hyperstate.ron import Ident, Some, Struct
from hyperstate.serde import ScheduleParser, did_you_mean, to_value
from hyperstate.typeinfo import (
    AnyType,
    DictType,
    EnumType,
    Field,
    ListType,
    LiteralType,
    OptionType,
    PrimitiveType,
    SchemaType,
    StructType,
    TupleType,
    UnionType,
    VarTupleType,
    format_type,
)

__all__ = ["Override", "apply_overrides", "apply_overrides_collect", "parse_override"]


_NAME = re.compile(r"[^.\[\]=+]+")
_INDEX = re.compile(r"\[\s*(-?[0-9]+)\s*\]")
_INTEGER = re.compile(r"-?[0-9]+")
# What a quoted int key may hold: an int as RON writes it in decimal.
_INT_KEY = re.compile(r"[+-]?[0-9]+(?:_[0-9]+)*")
_QUOTED_KEY = re.compile(r"""\[\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')\s*\]""")


@dataclass(frozen=True)
class Override:
    """A parsed override.

    Attributes:
        path: the segments as written: names (``str``) and bracketed indices (``int``)
            or quoted keys (``str`` inside a 1-tuple, to tell ``["2"]`` from ``[2]``).
        op: ``"="`` to set, ``"+="`` to append to a list or merge into a map.
        value: the value text (RON, or a bare word for a string field).
        text: the override as given, for error messages.
    """

    path: tuple[str | int | tuple[str], ...]
    op: str
    value: str
    text: str


class _BadOverride(Exception):
    def __init__(self, path: ValuePath, message: str, hint: str | None = None) -> None:
        self.path = path
        self.message = message
        self.hint = hint


def parse_override(text: str) -> Override:
    """Split ``"a.b[2]=value"`` into its path, operator and value.

    Raises:
        ConfigError: the override is malformed (the message shows the expected form).
    """
    segments: list[str | int | tuple[str]] = []
    pos = 0
    n = len(text)
    expect_name = True
    while pos < n:
        c = text[pos]
        if c == "=" or text.startswith("+=", pos):
            break
        if c == "[":
            m = _INDEX.match(text, pos)
            if m:
                segments.append(_read_int(m.group(1), text, m.start(1)))
                pos = m.end()
                expect_name = False
                continue
            m = _QUOTED_KEY.match(text, pos)
            if m:
                key = ron.loads(m.group(1)) if m.group(1)[0] == '"' else m.group(1)[1:-1]
                segments.append((str(key),))
                pos = m.end()
                expect_name = False
                continue
            raise _malformed(text, f'expected an index like [2] or a key like ["a.b"] at {pos}')
        if c == ".":
            if expect_name:
                raise _malformed(text, f"expected a field name before '.' at column {pos + 1}")
            pos += 1
            expect_name = True
            continue
        if not expect_name:
            raise _malformed(text, f"expected '.', '[' or '=' at column {pos + 1}, found {c!r}")
        m = _NAME.match(text, pos)
        if not m:
            raise _malformed(text, f"unexpected {c!r} at column {pos + 1}")
        name = m.group().strip()
        is_int = _INTEGER.fullmatch(name) is not None
        segments.append(_read_int(name, text, pos) if is_int else name)
        pos = m.end()
        expect_name = False
    if pos >= n:
        raise _malformed(text, "expected 'path=value' (e.g. 'optimizer.lr=0.1'), found no '='")
    if not segments or expect_name:
        raise _malformed(text, "expected a field path before '='")
    op = "+=" if text.startswith("+=", pos) else "="
    return Override(tuple(segments), op, text[pos + len(op) :].strip(), text)


def _read_int(digits: str, text: str, pos: int) -> int:
    """The int that ``digits`` (``-?[0-9]+``, at ``pos`` in ``text``) stands for, read by
    the RON rule so that a path segment takes what a value would."""
    count = len(digits.lstrip("-"))
    if count > ron.MAX_INT_DIGITS:
        raise _malformed(
            text,
            f"expected an index or key of at most {ron.MAX_INT_DIGITS} digits at column "
            f"{pos + 1}, found one of {count} digits",
        )
    number: int = ron.loads(digits)
    return number


def _malformed(text: str, message: str) -> ConfigError:
    return ConfigError([Issue((), f"malformed override: {message}", override=text)])


def apply_overrides(
    root: StructType,
    tree: Any,
    overrides: Sequence[str],
    *,
    schedules: ScheduleParser | None = None,
) -> tuple[Any, dict[ValuePath, str]]:
    """Apply ``overrides`` in order to the value tree of a ``root`` struct.

    With ``schedules``, a number field may be set to an unquoted schedule
    (``lr=step: 3e-4@0 cos 0@1e5``).

    Returns the updated tree and, for each path that an override set, the override text
    (so that a later type error at that path can name the override).

    Raises:
        ConfigError: listing every bad override of the call (malformed, unknown path,
            unparseable value), each naming the override string.
    """
    tree, applied, issues = apply_overrides_collect(root, tree, overrides, schedules=schedules)
    if issues:
        raise ConfigError(issues, context="invalid override" + ("s" if len(issues) > 1 else ""))
    return tree, applied


def apply_overrides_collect(
    root: StructType,
    tree: Any,
    overrides: Sequence[str],
    *,
    schedules: ScheduleParser | None = None,
) -> tuple[Any, dict[ValuePath, str], list[Issue]]:
    """Like :func:`apply_overrides`, but returns the issues instead of raising them.

    Overrides that fail are skipped; the others are applied.
    """
    box = [tree if tree is not None else Struct(None, {})]
    applied: dict[ValuePath, str] = {}
    issues: list[Issue] = []
    for text in overrides:
        try:
            override = parse_override(text)
            path = _apply(root, box, override, schedules)
        except ConfigError as e:
            issues.extend(e.issues)
        except _BadOverride as e:
            issues.append(Issue(e.path, e.message, override=text, hint=e.hint))
        else:
            applied[path] = text
    return box[0], applied, issues


def _apply(
    root: StructType, box: list[Any], override: Override, schedules: ScheduleParser | None
) -> ValuePath:
    node: SchemaType = root
    container: Any = box
    key: Any = 0
    path: list[PathSegment] = []
    for seg in override.path:
        node, value = _resolve(node, container, key, tuple(path))
        container, key, node = _step(node, value, seg, tuple(path))
        path.append(key)
    if override.op == "=":
        container[key] = _parse_leaf(node, override.value, tuple(path), schedules)
        return tuple(path)
    node, current = _resolve(node, container, key, tuple(path))
    addition = _parse_leaf(node, override.value, tuple(path), schedules)
    if type(current) is list and isinstance(addition, list | tuple):
        current.extend(addition)
    elif type(current) is tuple and isinstance(addition, list | tuple):
        container[key] = current + tuple(addition)
    elif type(current) is dict and type(addition) is dict:
        current.update(addition)
    else:
        raise _BadOverride(
            tuple(path),
            f"'+=' appends to a list or merges into a map; {format_path(path)} holds "
            f"{format_type(node)}",
        )
    return tuple(path)


def _resolve(node: SchemaType, container: Any, key: Any, path: ValuePath) -> tuple[SchemaType, Any]:
    """The schema and current value at ``container[key]``, with Options and Unions opened.

    A ``None`` Optional struct is replaced by one built from defaults, so that setting a
    field inside it works.
    """
    value = container[key]
    if isinstance(node, OptionType):
        if type(value) is Some:
            value = container[key] = value.value
        node = node.inner
        if value is None:
            value = _empty(node, path)
            container[key] = value
    if isinstance(node, UnionType):
        structs = {o.name: o for o in node.options if isinstance(o, StructType)}
        name = value.name if type(value) is Struct or type(value) is Ident else None
        if name in structs:
            node = structs[name]
        elif len(structs) == 1 and type(value) is Struct:
            node = next(iter(structs.values()))
        else:
            raise _BadOverride(
                path,
                f"cannot tell which of {format_type(node)} {format_path(path)} holds; "
                f"choose one first, e.g. '{format_path(path)}={next(iter(structs), 'X')}()'",
            )
    if isinstance(node, ListType | VarTupleType | TupleType) and type(value) is tuple:
        value = container[key] = list(value)  # mutable; tuples decode from lists too
    return node, value


def _empty(node: SchemaType, path: ValuePath) -> Any:
    if isinstance(node, StructType):
        return Struct(None, {})
    if isinstance(node, ListType | VarTupleType):
        return []
    if isinstance(node, DictType | AnyType):
        return {}
    if isinstance(node, UnionType):
        return None
    raise _BadOverride(path, f"{format_path(path)} is None; set it as a whole first")


def _step(node: SchemaType, value: Any, seg: Any, path: ValuePath) -> tuple[Any, Any, SchemaType]:
    """The container, key and schema of child ``seg`` of ``value``."""
    if isinstance(node, StructType):
        fields = _struct_fields(value, node, path)
        name = _as_name(seg)
        field = node.field_map.get(name)
        if field is None:
            known = [f.name for f in node.fields]
            hint = did_you_mean(name, known) or f"fields: {', '.join(known)}"
            raise _BadOverride((*path, name), f"unknown field '{name}' in {node.name}", hint)
        if name not in fields:
            fields[name] = _default_value(field, (*path, name))
        return fields, name, field.type
    if isinstance(node, ListType | VarTupleType | TupleType):
        if type(value) is not list:
            raise _BadOverride(
                path, f"expected a list at {format_path(path)}, found {format_value(value)}"
            )
        index = _as_index(seg, path)
        if not -len(value) <= index < len(value):
            raise _BadOverride(
                (*path, index),
                f"index {format_int(index)} out of range for {format_path(path)} "
                f"(length {len(value)})",
                f"use '{format_path(path)}+=[...]' to append",
            )
        index %= len(value)
        item = node.items[index] if isinstance(node, TupleType) else node.item
        return value, index, item
    if isinstance(node, DictType):
        if type(value) is Struct:
            value = value.fields
        if type(value) is not dict:
            raise _BadOverride(
                path, f"expected a map at {format_path(path)}, found {format_value(value)}"
            )
        key = _dict_key(node.key, seg, value, path)
        if key not in value:
            value[key] = _empty_or_none(node.value)
        return value, key, node.value
    if isinstance(node, AnyType):
        if type(value) is Struct:
            value = value.fields
        if type(value) is list:
            index = _as_index(seg, path)
            if not -len(value) <= index < len(value):
                raise _BadOverride((*path, index), f"index {format_int(index)} out of range")
            return value, index % len(value), AnyType()
        if type(value) is dict:
            key = seg[0] if type(seg) is tuple else seg
            value.setdefault(key, {})
            return value, key, AnyType()
    raise _BadOverride(
        path,
        f"{format_path(path)} is {format_type(node)}; it has no field or item "
        f"{format_value(seg[0] if type(seg) is tuple else seg)}",
    )


def _as_name(seg: Any) -> str:
    """A path segment read as a field or variant name; an int one as it is written."""
    if type(seg) is tuple:
        seg = seg[0]
    return format_int(seg) if type(seg) is int else str(seg)


def _struct_fields(value: Any, node: StructType, path: ValuePath) -> dict[str, Any]:
    if type(value) is Struct:
        return value.fields
    if type(value) is dict:
        return value
    raise _BadOverride(
        path, f"expected struct {node.name} at {format_path(path)}, found {format_value(value)}"
    )


def _as_index(seg: Any, path: ValuePath) -> int:
    if type(seg) is int:
        return seg
    raise _BadOverride(
        path, f"expected a list index at {format_path(path)}, found {format_value(seg)}"
    )


def _dict_key(key_node: SchemaType, seg: Any, value: dict[Any, Any], path: ValuePath) -> Any:
    raw = seg[0] if type(seg) is tuple else seg
    if isinstance(key_node, PrimitiveType) and key_node.type is int:
        if type(raw) is int:
            return raw
        text = raw.strip()
        if _INT_KEY.fullmatch(text) is None:
            shown = raw if len(raw) <= 40 else raw[:37] + "..."
            raise _BadOverride(
                path, f"expected an int key for {format_path(path)}, found {shown!r}"
            )
        count = len(text.lstrip("+-").replace("_", ""))
        if count > ron.MAX_INT_DIGITS:
            raise _BadOverride(
                path,
                f"expected an int key of at most {ron.MAX_INT_DIGITS} digits for "
                f"{format_path(path)}, found one of {count} digits",
            )
        number: int = ron.loads(text)
        return number
    if isinstance(key_node, EnumType):
        name = _as_name(raw)
        for existing in value:
            if existing == name or (type(existing) is Ident and existing.name == name):
                return existing
        if name not in key_node.cls.__members__:
            raise _BadOverride(
                path,
                f"expected one of {key_node.cls.__name__} "
                f"{{{', '.join(key_node.cls.__members__)}}} as key, found {name!r}",
            )
        return Ident(name)
    return str(raw)


def _empty_or_none(node: SchemaType) -> Any:
    if isinstance(node, StructType):
        return Struct(None, {})
    if isinstance(node, ListType):
        return []
    if isinstance(node, DictType):
        return {}
    return None


def _default_value(field: Field, path: ValuePath) -> Any:
    if field.has_default:
        return to_value(field.make_default(), field.type)
    return _empty_or_none(field.type)


_BOOLS = {"true": True, "false": False, "1": True, "0": False}


def _parse_leaf(
    node: SchemaType, text: str, path: ValuePath, schedules: ScheduleParser | None
) -> Any:
    base = node.inner if isinstance(node, OptionType) else node
    if isinstance(base, PrimitiveType) and base.type is bool:
        parsed = _BOOLS.get(text.lower())
        if parsed is not None:
            return parsed
    if _takes_bare_words(base):
        try:
            value = ron.loads(text)
        except ron.ParseError:
            return text
        if type(value) is str or (value is None and isinstance(node, OptionType)):
            return value
        if isinstance(base, PrimitiveType):
            return text  # `name=123` for a str field is the string "123"
        return value  # an Ident for an Enum or Literal
    try:
        return ron.loads(text, path="<override>")
    except ron.ParseError as e:
        if _is_number(base) and schedules is not None:
            try:
                if schedules(text) is not None:
                    return text  # `lr=step: 3e-4@0 cos 0@1e5` needs no quotes
            except ValueError as err:
                raise _BadOverride(
                    path, f"invalid schedule for {format_path(path)}: {err}"
                ) from None
        hint = None
        if _is_number(base) and schedules is not None:
            if _is_schedule(f"step: {text}", schedules):
                hint = f"a schedule starts with 'step:': did you mean 'step: {text}'?"
            elif "@" in text or _SCHEDULE_WORD.search(text):
                hint = "a schedule is written 'step: VALUE@STEP KIND VALUE@STEP ...'"
        raise _BadOverride(
            path,
            f"cannot parse value {text!r} for {format_path(path)} ({format_type(node)}): "
            f"{e.msg} at column {e.col}",
            hint,
        ) from None


_SCHEDULE_WORD = re.compile(r"\b(lin|cos|step|exp|poly)\b")


def _is_schedule(text: str, schedules: ScheduleParser) -> bool:
    try:
        return schedules(text) is not None
    except ValueError:
        return False


def _is_number(node: SchemaType) -> bool:
    return isinstance(node, PrimitiveType) and node.type in (int, float)


def _takes_bare_words(node: SchemaType) -> bool:
    if isinstance(node, PrimitiveType):
        return node.type is str or node.type is pathlib.Path
    if isinstance(node, LiteralType):
        return any(isinstance(v, str) for v in node.values)
    return isinstance(node, EnumType)
