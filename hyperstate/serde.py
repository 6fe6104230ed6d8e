"""Value tree <-> typed objects, driven by the schema tree.

``to_value`` turns a dataclass instance into the plain value tree that the RON emitter
writes; ``from_value`` turns a parsed value tree into instances of the config classes.
Both compile one small function per schema node (cached), so converting a large config
does little more than walk it once.

``from_value`` does not stop at the first bad value: it collects every problem (type
mismatches, unknown fields, missing fields) as an :class:`~hyperstate.errors.Issue`
with the path of the value, and raises them together in one ``ConfigError``.

A config is read strictly: an unknown field is a typo until proven otherwise. A state
(``state=True``) was written by the code as it was at its checkpoint: fields the class
has gained since take their value from the state that ``initial_state`` built, and
fields it has lost are left out; both are reported in :class:`DecodeResult`.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import pathlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from hyperstate.errors import (
    BlobError,
    ConfigError,
    HyperstateError,
    Issue,
    StateError,
    ValuePath,
    format_int,
    format_path,
    format_value,
)
from hyperstate.ron import Ident, Some, Struct, TupleStruct
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
    describe_type,
    format_type,
    holds_blobs,
    node_of_record,
    node_of_value,
    schema_of,
    struct_schema,
)

__all__ = [
    "DecodeResult",
    "Placer",
    "ScheduleParser",
    "closest",
    "decode_plain",
    "decoder_of",
    "describe",
    "did_you_mean",
    "encode_plain",
    "encoder_of",
    "from_value",
    "plain",
    "to_value",
]


class _Invalid:
    """Returned by a decoder that recorded an issue; never escapes this module."""

    __slots__ = ()


_INVALID: Any = _Invalid()


class _Ctx:
    __slots__ = (
        "dropped",
        "ignore_extra_fields",
        "initial",
        "issues",
        "place",
        "prepare",
        "schedule",
        "schedules",
        "state",
        "taken",
    )

    def __init__(
        self,
        ignore_extra_fields: bool,
        schedule: ScheduleParser | None = None,
        place: Placer | None = None,
        state: bool = False,
        initial: Any = None,
        prepare: Callable[[Any], None] | None = None,
    ) -> None:
        self.issues: list[Issue] = []
        self.prepare = prepare
        self.ignore_extra_fields = ignore_extra_fields
        self.schedule = schedule
        self.place = place
        self.schedules: dict[ValuePath, Any] = {}
        self.state = state
        self.initial = initial
        self.taken: list[ValuePath] = []  # fields the value lacks, taken from `initial`
        self.dropped: list[ValuePath] = []  # fields of the value that the class lacks

    def fail(
        self, where: ValuePath, message: str, hint: str | None = None, about_key: bool = False
    ) -> Any:
        self.issues.append(Issue(where, message, hint=hint, about_key=about_key))
        return _INVALID

    def trial(self) -> _Ctx:
        """A fresh context with the same options, to try a decoding out."""
        return _Ctx(
            self.ignore_extra_fields,
            self.schedule,
            self.place,
            self.state,
            self.initial,
            self.prepare,
        )


Decoder = Callable[[Any, ValuePath, _Ctx], Any]
Encoder = Callable[[Any, ValuePath, bool], Any]


ScheduleParser = Callable[[str], Any]
"""Parses a schedule string found in an int/float field: returns the schedule (with
``points`` and ``value_at``), None when the text is no schedule, or raises ``ValueError``
when it is a malformed one. The config loader passes :func:`hyperstate.scheduled.parse`."""

Placer = Callable[[list[Issue]], list[Issue]]
"""Attaches file positions (or overrides) to issues found after the load returned: those
of a ``Lazy`` field decoded on first access."""


# ---------------------------------------------------------------------------------------
# Messages


def describe(value: Any) -> str:
    """A short description of a found value for error messages: ``"abc"``, ``struct Adam``."""
    from hyperstate.ron import dumps

    if isinstance(value, Struct):
        return f"struct {value.name}(...)" if value.name else "a struct (...)"
    if isinstance(value, TupleStruct):
        return f"{value.name}(...)"
    if isinstance(value, Ident):
        return f"identifier {value.name}"
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    if isinstance(value, dict):
        return f"a map of {len(value)} entries"
    if isinstance(value, tuple):
        return "unit ()" if not value else f"a tuple of {len(value)} items"
    if isinstance(value, Some):
        return f"Some({describe(value.value)})"
    if type(value) is int:
        return format_int(value)  # in decimal, and short however long it is
    try:
        text = dumps(value)
    except TypeError:
        text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return text


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate most similar to ``name``, if any is similar enough to suggest."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """``did you mean 'x'?`` for the closest candidate, or None."""
    match = closest(name, candidates)
    return f"did you mean '{match}'?" if match else None


# ---------------------------------------------------------------------------------------
# Decoding: value tree -> typed objects


class DecodeResult:
    """The outcome of :func:`from_value` when issues are collected instead of raised."""

    __slots__ = ("dropped", "issues", "schedules", "taken", "value")

    def __init__(
        self,
        value: Any,
        issues: list[Issue],
        schedules: dict[ValuePath, Any],
        taken: list[ValuePath] | None = None,
        dropped: list[ValuePath] | None = None,
    ) -> None:
        self.value = value
        self.issues = issues
        #: Schedules found in int/float fields, by value path (values hold their start value).
        self.schedules = schedules
        #: A state's fields that the value lacks, taken from the initial state (paths).
        self.taken = taken or []
        #: A state's fields that the value has and its class does not, left out (paths).
        self.dropped = dropped or []


def from_value(
    cls: Any,
    value: Any,
    *,
    ignore_extra_fields: bool = False,
    collect: bool = False,
    schedules: ScheduleParser | None = None,
    place: Placer | None = None,
    state: bool = False,
    initial: Any = None,
    prepare: Callable[[Any], None] | None = None,
) -> Any:
    """Build an instance of ``cls`` (any supported annotation) from a value tree.

    With ``schedules``, a string in an int or float field that it parses as a schedule
    is accepted: the field gets the schedule's first value, and the schedule is reported
    in :attr:`DecodeResult.schedules`. ``place`` attaches positions to the issues of
    ``Lazy`` fields decoded later, on first access.

    With ``state=True`` the value is a saved state, which older code may have written:
    a field that the value lacks takes the object at the same path in ``initial`` (the
    state that ``initial_state`` built; its value wins over the field's default), and a
    field that the class lacks is left out. Both are listed in :class:`DecodeResult`
    (``taken``, ``dropped``). A missing field with nothing in ``initial`` and no default
    is an issue, as for a config.

    Raises:
        ConfigError: every problem found, each with the path of the bad value.
            With ``collect=True`` a :class:`DecodeResult` is returned instead, so that
            the caller can attach file positions and override names to the issues.
    """
    node = cls if isinstance(cls, SchemaType) else schema_of(cls)
    cx = _Ctx(ignore_extra_fields, schedules, place, state, initial if state else None, prepare)
    result = _decoder(node)(value, (), cx)
    if collect:
        value = None if result is _INVALID else result
        return DecodeResult(value, cx.issues, cx.schedules, cx.taken, cx.dropped)
    if cx.issues:
        raise ConfigError(cx.issues)
    return result


_DECODERS: dict[SchemaType, Decoder] = {}


def _decoder(node: SchemaType) -> Decoder:
    dec = _DECODERS.get(node)
    if dec is None:
        dec = _make_decoder(node)
        _DECODERS[node] = dec
    return dec


def _make_decoder(node: SchemaType) -> Decoder:
    if isinstance(node, StructType):
        return _struct_decoder(node)
    if isinstance(node, PrimitiveType):
        return _PRIMITIVE_DECODERS[node.type]
    if isinstance(node, OptionType):
        inner = _decoder(node.inner)

        def dec_option(v: Any, where: ValuePath, cx: _Ctx) -> Any:
            if v is None:
                return None
            if type(v) is Some:
                v = v.value
            return inner(v, where, cx)

        return dec_option
    if isinstance(node, ListType):
        item = _decoder(node.item)

        def dec_list(v: Any, where: ValuePath, cx: _Ctx) -> Any:
            if type(v) is not list and type(v) is not tuple:
                return cx.fail(where, f"expected {format_type(node)}, found {describe(v)}")
            out = [item(x, (*where, i), cx) for i, x in enumerate(v)]
            return _INVALID if any(x is _INVALID for x in out) else out

        return dec_list
    if isinstance(node, VarTupleType):
        item = _decoder(node.item)

        def dec_vartuple(v: Any, where: ValuePath, cx: _Ctx) -> Any:
            if type(v) is not tuple and type(v) is not list:
                return cx.fail(where, f"expected {format_type(node)}, found {describe(v)}")
            out = tuple(item(x, (*where, i), cx) for i, x in enumerate(v))
            return _INVALID if any(x is _INVALID for x in out) else out

        return dec_vartuple
    if isinstance(node, TupleType):
        items = [_decoder(i) for i in node.items]

        def dec_tuple(v: Any, where: ValuePath, cx: _Ctx) -> Any:
            if type(v) is not tuple and type(v) is not list:
                return cx.fail(where, f"expected {format_type(node)}, found {describe(v)}")
            if len(v) != len(items):
                return cx.fail(
                    where,
                    f"expected a tuple of {len(items)} items ({format_type(node)}), "
                    f"found {len(v)} items",
                )
            out = tuple(
                d(x, (*where, i), cx) for i, (d, x) in enumerate(zip(items, v, strict=True))
            )
            return _INVALID if any(x is _INVALID for x in out) else out

        return dec_tuple
    if isinstance(node, DictType):
        key_dec = _decoder(node.key)
        val_dec = _decoder(node.value)

        def dec_dict(v: Any, where: ValuePath, cx: _Ctx) -> Any:
            if type(v) is Struct and node.key == PrimitiveType(str):
                v = v.fields  # `(a: 1)` is a fine way to write a str-keyed map
            elif type(v) is not dict:
                return cx.fail(where, f"expected {format_type(node)}, found {describe(v)}")
            out = {}
            bad = False
            for k, x in v.items():
                kp = (*where, k)
                before = len(cx.issues)
                key = key_dec(k, kp, cx)
                if key is _INVALID:
                    # The key is what is wrong: place the issue at the key, not its value.
                    cx.issues[before:] = [
                        dataclasses.replace(i, about_key=True) if i.path == kp else i
                        for i in cx.issues[before:]
                    ]
                val = val_dec(x, kp, cx)
                if key is _INVALID or val is _INVALID:
                    bad = True
                else:
                    out[key] = val
            return _INVALID if bad else out

        return dec_dict
    if isinstance(node, EnumType):
        return _enum_decoder(node)
    if isinstance(node, LiteralType):
        return _literal_decoder(node)
    if isinstance(node, UnionType):
        return _union_decoder(node)
    if isinstance(node, AnyType):
        return _decode_any
    custom = getattr(node, "decoder", None)
    if custom is not None:
        return _guarded(custom())
    raise TypeError(f"no decoder for schema node {node!r}")


def _guarded(decode: Decoder) -> Decoder:
    """An extension's decoder, whose failures name the value's place.

    Extensions run code that the value reaches (a tensor codec, ``load_state_dict``,
    ``Serializable.deserialize``): a ``ConfigError`` becomes issues of the load; a
    ``BlobError`` or ``StateError`` gets the ``file:line:col`` and path of the record
    (keeping its type, which says "corrupt data" to a resume); anything else is a
    ``StateError`` saying what raised what.
    """

    def guarded(v: Any, where: ValuePath, cx: _Ctx) -> Any:
        try:
            return decode(v, where, cx)
        except ConfigError as e:
            cx.issues.extend(e.issues)
            return _INVALID
        except BlobError as e:
            if e.at is not None:
                raise
            raise BlobError(e.msg, e.file, e.key, _at(where, cx)) from None
        except StateError as e:
            if e.at is not None:
                raise
            raise StateError(e.msg, _at(where, cx)) from None
        except HyperstateError:
            raise
        except Exception as e:  # code the value reached, raising what it does
            text = " ".join(str(e).split())  # torch's messages span lines
            found = f"{type(e).__name__}: {text}" if text else type(e).__name__
            raise StateError(f"cannot restore this value: {found}", _at(where, cx)) from e

    return guarded


def _at(where: ValuePath, cx: _Ctx) -> str:
    """``file:line:col: path`` of a value being decoded (the path alone without a file)."""
    path = format_path(where)
    if cx.place is not None:
        location = cx.place([Issue(where, "")])[0].location
        if location is not None:
            return f"{location}: at {path}"
    return f"at {path}"


def _dec_int(v: Any, where: ValuePath, cx: _Ctx) -> Any:
    t = type(v)
    if t is int:
        return v
    if t is float and v.is_integer():  # `steps: 1e5` is an integer written as a float
        return int(v)
    if t is str and cx.schedule is not None:
        return _schedule_start(v, where, cx, "int")
    return cx.fail(where, f"expected int, found {describe(v)}")


def _dec_float(v: Any, where: ValuePath, cx: _Ctx) -> Any:
    t = type(v)
    if t is float:
        return v
    if t is int:
        try:
            return float(v)
        except OverflowError:
            return cx.fail(
                where, f"expected float, found an integer too large for one: {describe(v)}"
            )
    if t is str and cx.schedule is not None:
        return _schedule_start(v, where, cx, "float")
    return cx.fail(where, f"expected float, found {describe(v)}")


def _schedule_start(text: str, where: ValuePath, cx: _Ctx, kind: str) -> Any:
    """A schedule string in an int/float field: record it; its first value stands in."""
    assert cx.schedule is not None
    try:
        schedule = cx.schedule(text)
    except ValueError as e:
        article = "an" if kind == "int" else "a"
        return cx.fail(where, f"invalid schedule for {article} {kind} field: {e}")
    if schedule is None:
        return cx.fail(where, f"expected {kind}, found {describe(text)}")
    cx.schedules[where] = schedule
    return schedule.value_at(schedule.points[0].x, as_int=kind == "int")


def _dec_str(v: Any, where: ValuePath, cx: _Ctx) -> Any:
    if type(v) is str:
        return v
    if type(v) is Ident:  # earlier releases wrote some strings as bare names
        return v.name
    return cx.fail(where, f"expected str, found {describe(v)}")


def _dec_bool(v: Any, where: ValuePath, cx: _Ctx) -> Any:
    if type(v) is bool:
        return v
    return cx.fail(where, f"expected bool (true or false), found {describe(v)}")


def _dec_bytes(v: Any, where: ValuePath, cx: _Ctx) -> Any:
    if type(v) is bytes:
        return v
    return cx.fail(where, f'expected bytes (b"..."), found {describe(v)}')


def _dec_path(v: Any, where: ValuePath, cx: _Ctx) -> Any:
    if type(v) is str:
        return pathlib.Path(v)
    return cx.fail(where, f"expected a path string, found {describe(v)}")


_PRIMITIVE_DECODERS: dict[type, Decoder] = {
    int: _dec_int,
    float: _dec_float,
    str: _dec_str,
    bool: _dec_bool,
    bytes: _dec_bytes,
    pathlib.Path: _dec_path,
}


def _enum_decoder(node: EnumType) -> Decoder:
    cls = node.cls
    members = cls.__members__

    def dec_enum(v: Any, where: ValuePath, cx: _Ctx) -> Any:
        name = v.name if type(v) is Ident else v
        if type(name) is str and name in members:
            return members[name]
        try:
            return cls(name)  # the member's value, e.g. `act: "relu"` for RELU = "relu"
        except (ValueError, TypeError):
            pass
        return cx.fail(
            where,
            f"expected one of {cls.__name__} {{{', '.join(members)}}}, found {describe(v)}",
            did_you_mean(name, members) if type(name) is str else None,
        )

    return dec_enum


def _literal_decoder(node: LiteralType) -> Decoder:
    allowed = node.values

    def dec_literal(v: Any, where: ValuePath, cx: _Ctx) -> Any:
        candidate = v.name if type(v) is Ident else v
        for a in allowed:
            if isinstance(a, enum.Enum):
                if candidate == a.name:
                    return a
            elif type(a) is type(candidate) and a == candidate:
                return a
        names = ", ".join(describe(a.name if isinstance(a, enum.Enum) else a) for a in allowed)
        return cx.fail(where, f"expected one of {names}, found {describe(v)}")

    return dec_literal


def _union_decoder(node: UnionType) -> Decoder:
    structs = {o.name: o for o in node.options if isinstance(o, StructType)}
    others = [o for o in node.options if not isinstance(o, StructType)]
    names = " | ".join(format_type(o) for o in node.options)

    def dec_union(v: Any, where: ValuePath, cx: _Ctx) -> Any:
        if type(v) is Struct or type(v) is Ident:
            name = v.name
            if name in structs:
                return _decoder(structs[name])(v, where, cx)
            if name is None and len(structs) == 1:
                (only,) = structs.values()
                return _decoder(only)(v, where, cx)
            if type(v) is Struct and structs:
                if name is None:
                    return cx.fail(
                        where,
                        f"expected one of {names}; write the struct name to choose, "
                        f"e.g. {next(iter(structs))}(...)",
                    )
                return cx.fail(
                    where,
                    f"expected one of {names}, found struct {name}",
                    did_you_mean(name, structs),
                )
        for option in others:  # first primitive option that accepts the value wins
            trial = cx.trial()
            out = _decoder(option)(v, where, trial)
            if not trial.issues and _exact_primitive(option, v):
                return out
        for option in others:
            trial = cx.trial()
            out = _decoder(option)(v, where, trial)
            if not trial.issues:
                return out
        return cx.fail(where, f"expected {names}, found {describe(v)}")

    return dec_union


def _exact_primitive(option: SchemaType, v: Any) -> bool:
    # In `int | float`, 1.0 must stay a float and 1 an int: prefer an exact type match.
    if isinstance(option, PrimitiveType) and option.type in (int, float, bool, str):
        return type(v) is option.type
    return True


def _struct_decoder(node: StructType) -> Decoder:
    state: dict[str, Any] = {}

    def prepare() -> None:
        state["decoders"] = {f.name: _decoder(f.type) for f in node.fields}
        state["required"] = [f for f in node.fields if not f.has_default]
        state["deferred"] = node.lazy_fields

    def dec_struct(v: Any, where: ValuePath, cx: _Ctx) -> Any:
        if not state:
            prepare()
        t = type(v)
        if t is Struct:
            items: Mapping[Any, Any] = v.fields
        elif t is dict and all(type(k) is str for k in v):
            items = v
        elif v == () or (t is Ident and v.name == node.name):
            items = {}  # unit `()` or a bare `Name`: every field takes its default
        else:
            return cx.fail(where, f"expected struct {node.name}(...), found {describe(v)}")
        decoders: dict[str, Decoder] = state["decoders"]
        deferred: frozenset[str] = state["deferred"]
        kwargs: dict[str, Any] = {}
        ok = True
        for name, raw in items.items():
            if name in deferred:
                kwargs[name] = _deferred(node, decoders[name], raw, (*where, name), cx)
                continue
            dec = decoders.get(name)
            if dec is None:
                if name == "version" and node.version is not None:
                    if raw != node.version:
                        cx.fail(
                            (*where, name),
                            f"{node.name} is at version {node.version}, "
                            f"found version {format_value(raw)}",
                            "load it with hyperstate.load/loads, which upgrades old versions",
                        )
                        ok = False
                    continue
                if cx.ignore_extra_fields:
                    continue
                if cx.state:  # a field this code no longer has
                    cx.dropped.append((*where, name))
                    continue
                cx.fail(
                    (*where, name),
                    f"unknown field '{name}' in {node.name}",
                    did_you_mean(name, decoders),
                    about_key=True,
                )
                ok = False
                continue
            val = dec(raw, (*where, name), cx)
            if val is _INVALID:
                ok = False
            else:
                kwargs[name] = val
        if len(kwargs) < len(decoders):
            # A state takes every field it lacks from the initial state, defaults or not.
            for f in node.fields if cx.initial is not None else state["required"]:
                if f.name in items:
                    continue
                val = _missing(node, f, (*where, f.name), cx)
                if val is _INVALID:
                    ok = False
                elif val is not _NOTHING:
                    kwargs[f.name] = val
        if not ok:
            return _INVALID
        try:
            return node.cls(**kwargs)
        except Exception as e:  # __post_init__ validation of the user's class
            return cx.fail(where, f"{node.name}(...) rejected the values: {type(e).__name__}: {e}")

    return dec_struct


class _Nothing:
    """Found nowhere: a missing field whose dataclass default applies."""

    __slots__ = ()


_NOTHING: Any = _Nothing()


def _missing(node: StructType, f: Field, where: ValuePath, cx: _Ctx) -> Any:
    """The value of field ``f`` of ``node``, which the value tree lacks (at ``where``)."""
    if cx.initial is not None:
        found = _initial_at(cx.initial, where)
        if found is not _NOTHING:
            cx.taken.append(where)
            return found
    if f.has_default:
        return _NOTHING
    if isinstance(f.type, StructType):
        # A nested dataclass can be built from its own defaults.
        return _decoder(f.type)(Struct(None, {}), where, cx)
    kind = describe_type(f.type) if holds_blobs(f.type) else format_type(f.type)
    message = f"missing required field '{f.name}' ({kind}) of {node.name}"
    hint = None
    if cx.initial is not None:
        message += "; the checkpoint has no value for it, and the initial state has none there"
    elif cx.state or holds_blobs(f.type):
        message += "; the checkpoint has no value for it (a field added since it was written?)"
        hint = (
            "pass initial_state= (a function of the config, or a state object) to load(): "
            "fields a checkpoint lacks then take the value that initial_state builds"
        )
    return cx.fail(where, message, hint)


def _initial_at(initial: Any, where: ValuePath) -> Any:
    """The object at ``where`` in the initial state, or ``_NOTHING``."""
    obj = initial
    for seg in where:
        if isinstance(seg, str) and _is_dataclass_type(type(obj)):
            try:
                obj = object.__getattribute__(obj, seg)  # never trigger a Lazy load
            except AttributeError:
                return _NOTHING
        elif isinstance(obj, list | tuple) and type(seg) is int:
            if not 0 <= seg < len(obj):
                return _NOTHING
            obj = obj[seg]
        elif isinstance(obj, Mapping):
            try:
                obj = obj[seg]
            except (KeyError, TypeError):
                return _NOTHING
        else:
            return _NOTHING
    return obj


def _decode_any(v: Any, where: ValuePath, cx: _Ctx) -> Any:
    """An ``Any`` field's value as plain Python; records of registered kinds (tensor
    references) decoded by their node."""
    tv = type(v)
    if tv is Struct:
        node = node_of_record(v)
        if node is not None:
            return _decoder(node)(v, where, cx)
        return {k: _decode_any(x, (*where, k), cx) for k, x in v.fields.items()}
    if tv is dict:
        return {k: _decode_any(x, (*where, k), cx) for k, x in v.items()}
    if tv is list:
        return [_decode_any(x, (*where, i), cx) for i, x in enumerate(v)]
    if tv is tuple:
        return tuple(_decode_any(x, (*where, i), cx) for i, x in enumerate(v))
    return plain(v)


def decode_plain(v: Any, where: ValuePath = ()) -> Any:
    """The value tree of an ``Any`` field (e.g. a state dict) as plain Python, at ``where``.

    Records of registered kinds (tensor references) are decoded by their node.

    Raises:
        ConfigError: a record that does not decode, named by its where.
    """
    cx = _Ctx(False)
    value = _decode_any(v, where, cx)
    if cx.issues:
        raise ConfigError(cx.issues)
    return value


def _deferred(owner: StructType, dec: Decoder, raw: Any, where: ValuePath, cx: _Ctx) -> Any:
    """A placeholder that decodes ``raw`` when a Lazy dataclass's field is first read."""
    options = cx.trial()

    def load() -> Any:
        inner = options.trial()
        if inner.prepare is not None:
            inner.prepare(raw)  # e.g. parse the text that ron.loads_deferred skipped
        value = dec(raw, where, inner)
        if inner.issues:
            issues = inner.place(inner.issues) if inner.place is not None else inner.issues
            raise ConfigError(issues)
        return value

    return owner.cls.__hyperstate_pending__(load)  # type: ignore[attr-defined]


def _plain_key(k: Any) -> Any:
    # A key must stay hashable: a struct or list key is kept as its RON value.
    key = plain(k)
    return key if type(key) not in (dict, list) else k


def plain(v: Any) -> Any:
    """A value tree as plain Python: structs become dicts, identifiers strings.

    A map key that would become a dict or a list (a struct key) stays as it was parsed.
    """
    t = type(v)
    if t is list:
        return [plain(x) for x in v]
    if t is tuple:
        return tuple(plain(x) for x in v)
    if t is dict:
        return {_plain_key(k): plain(x) for k, x in v.items()}
    if t is Struct:
        return {k: plain(x) for k, x in v.fields.items()}
    if t is Some:
        return plain(v.value)
    if t is Ident:
        return v.name
    if t is TupleStruct:
        return tuple(plain(x) for x in v.items)
    return v


# ---------------------------------------------------------------------------------------
# Encoding: typed objects -> value tree


def to_value(obj: Any, cls: Any = None, *, elide_defaults: bool = False) -> Any:
    """The value tree of ``obj`` (a dataclass instance or any supported value).

    ``cls`` is the annotation to encode against; by default the type of ``obj``.
    With ``elide_defaults``, struct fields equal to their default are left out.

    Raises:
        ConfigError: a value does not match its annotation (its path is named).
    """
    if cls is None:
        cls = type(obj)
        if not _is_dataclass_type(cls):
            return _encode_any(obj, (), elide_defaults)
    node = cls if isinstance(cls, SchemaType) else schema_of(cls)
    return _encoder(node)(obj, (), elide_defaults)


def encode_plain(obj: Any, where: ValuePath = ()) -> Any:
    """The value tree of a plain Python value (as for an ``Any`` field), at ``where``.

    Values the plain types do not cover go to the registered node kinds (tensors, arrays;
    see :func:`hyperstate.typeinfo.register`).
    """
    return _encode_any(obj, where, False)


def _is_dataclass_type(cls: Any) -> bool:
    return isinstance(cls, type) and hasattr(cls, "__dataclass_fields__")


_ENCODERS: dict[SchemaType, Encoder] = {}


def _encoder(node: SchemaType) -> Encoder:
    enc = _ENCODERS.get(node)
    if enc is None:
        enc = _make_encoder(node)
        _ENCODERS[node] = enc
    return enc


def encoder_of(node: SchemaType) -> Encoder:
    """The compiled encoder of a schema node, for schema types that wrap another."""
    return _encoder(node)


def decoder_of(node: SchemaType) -> Decoder:
    """The compiled decoder of a schema node, for schema types that wrap another."""
    return _decoder(node)


def _mismatch(node: SchemaType, obj: Any, where: ValuePath) -> ConfigError:
    return ConfigError(
        [
            Issue(
                where,
                f"cannot write {type(obj).__name__} {format_value(obj)} as {format_type(node)}",
            )
        ]
    )


def _make_encoder(node: SchemaType) -> Encoder:
    if isinstance(node, StructType):
        return _struct_encoder(node)
    if isinstance(node, PrimitiveType):
        return _primitive_encoder(node)
    if isinstance(node, OptionType):
        inner = _encoder(node.inner)
        return lambda obj, where, elide: None if obj is None else inner(obj, where, elide)
    if isinstance(node, ListType | VarTupleType):
        item = _encoder(node.item)
        container = list if isinstance(node, ListType) else tuple

        def enc_seq(obj: Any, where: ValuePath, elide: bool) -> Any:
            if not isinstance(obj, list | tuple):
                raise _mismatch(node, obj, where)
            return container(item(x, (*where, i), elide) for i, x in enumerate(obj))

        return enc_seq
    if isinstance(node, TupleType):
        items = [_encoder(i) for i in node.items]

        def enc_tuple(obj: Any, where: ValuePath, elide: bool) -> Any:
            if not isinstance(obj, list | tuple) or len(obj) != len(items):
                raise _mismatch(node, obj, where)
            return tuple(
                e(x, (*where, i), elide) for i, (e, x) in enumerate(zip(items, obj, strict=True))
            )

        return enc_tuple
    if isinstance(node, DictType):
        key_enc = _encoder(node.key)
        val_enc = _encoder(node.value)

        def enc_dict(obj: Any, where: ValuePath, elide: bool) -> Any:
            if not isinstance(obj, Mapping):
                raise _mismatch(node, obj, where)
            return {
                key_enc(k, (*where, k), elide): val_enc(x, (*where, k), elide)
                for k, x in obj.items()
            }

        return enc_dict
    if isinstance(node, EnumType):

        def enc_enum(obj: Any, where: ValuePath, elide: bool) -> Any:
            if not isinstance(obj, node.cls):
                raise _mismatch(node, obj, where)
            return Ident(obj.name)

        return enc_enum
    if isinstance(node, LiteralType):

        def enc_literal(obj: Any, where: ValuePath, elide: bool) -> Any:
            for a in node.values:
                if type(a) is type(obj) and a == obj:
                    return Ident(a.name) if isinstance(a, enum.Enum) else a
            raise _mismatch(node, obj, where)

        return enc_literal
    if isinstance(node, UnionType):
        return _union_encoder(node)
    if isinstance(node, AnyType):
        return _encode_any
    custom = getattr(node, "encoder", None)
    if custom is not None:
        result: Encoder = custom()
        return result
    raise TypeError(f"no encoder for schema node {node!r}")


def _primitive_encoder(node: PrimitiveType) -> Encoder:
    kind = node.type

    def enc_primitive(obj: Any, where: ValuePath, elide: bool) -> Any:
        t = type(obj)
        if t is kind:
            return str(obj) if kind is pathlib.Path else obj
        if kind is float and t is int:
            try:
                return float(obj)
            except OverflowError:
                found = f"an integer too large for one: {describe(obj)}"
                raise ConfigError([Issue(where, f"expected float, found {found}")]) from None
        if kind is pathlib.Path and isinstance(obj, pathlib.PurePath | str):
            return str(obj)
        if isinstance(obj, kind) and not (kind is int and t is bool):
            return kind(obj)  # subclasses such as IntEnum members or numpy scalars
        if kind in (int, float) and hasattr(obj, "item") and callable(obj.item):
            value = obj.item()  # numpy / torch scalars
            if type(value) in (int, float) and not isinstance(value, bool):
                return float(value) if kind is float else value
        raise _mismatch(node, obj, where)

    return enc_primitive


def _union_encoder(node: UnionType) -> Encoder:
    def enc_union(obj: Any, where: ValuePath, elide: bool) -> Any:
        t = type(obj)
        for option in node.options:
            if isinstance(option, StructType) and t is option.cls:
                return _encoder(option)(obj, where, elide)
        for option in node.options:
            if isinstance(option, PrimitiveType) and t is option.type:
                return _encoder(option)(obj, where, elide)
        for option in node.options:
            if isinstance(option, StructType) and isinstance(obj, option.cls):
                return _encoder(option)(obj, where, elide)
            if not isinstance(option, StructType):
                try:
                    return _encoder(option)(obj, where, elide)
                except ConfigError:
                    continue
        raise _mismatch(node, obj, where)

    return enc_union


def _struct_encoder(node: StructType) -> Encoder:
    def enc_struct(obj: Any, where: ValuePath, elide: bool) -> Any:
        t = type(obj)
        target = node
        if t is not node.cls:
            if not _is_dataclass_type(t):
                raise _mismatch(node, obj, where)
            target = struct_schema(t)  # a subclass: write what is really there
        fields: dict[str, Any] = {}
        if target.version is not None:
            fields["version"] = target.version  # first, so it heads the file
        for f in target.fields:
            value = getattr(obj, f.name)
            if elide and f.has_default and _equals_default(value, f.make_default()):
                continue
            fields[f.name] = _encoder(f.type)(value, (*where, f.name), elide)
        return Struct(target.name, fields)

    return enc_struct


def _equals_default(value: Any, default: Any) -> bool:
    try:
        return type(value) is type(default) and bool(value == default)
    except Exception:  # e.g. arrays whose == is elementwise
        return False


def _encode_any(obj: Any, where: ValuePath, elide: bool) -> Any:
    t = type(obj)
    if obj is None or t in (bool, int, str, bytes):
        return obj
    if t is float or t is Struct or t is TupleStruct or t is Ident:
        return obj  # a struct map key of a parsed Any value is written back as it was
    if t is list:
        return [_encode_any(x, (*where, i), elide) for i, x in enumerate(obj)]
    if t is tuple:
        return tuple(_encode_any(x, (*where, i), elide) for i, x in enumerate(obj))
    if isinstance(obj, Mapping):
        return {
            _encode_any(k, (*where, k), elide): _encode_any(x, (*where, k), elide)
            for k, x in obj.items()
        }
    if isinstance(obj, enum.Enum):
        return Ident(obj.name)
    if isinstance(obj, pathlib.PurePath):
        return str(obj)
    if _is_dataclass_type(t):
        return _encoder(struct_schema(t))(obj, where, elide)
    if isinstance(obj, list | tuple):
        return [_encode_any(x, (*where, i), elide) for i, x in enumerate(obj)]
    if isinstance(obj, int | float | str):
        return obj
    node = node_of_value(obj)
    if node is not None:
        return _encoder(node)(obj, where, elide)
    raise ConfigError(
        [Issue(where, f"cannot write a value of type {t.__name__}: {format_value(obj)}")]
    )
