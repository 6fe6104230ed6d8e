"""Type introspection: Python annotations -> a frozen, cached schema tree.

This is the only module that looks at ``typing`` internals. Everything else (the serde
layer, overrides, ``--help``, schema files) reads the tree built here. A type that
hyperstate cannot handle fails here, the first time its class is used, with a
``TypeError`` naming the class, the field and the annotation.

The node kinds of training state (tensors, ``Serializable``, ``Blob``, ``PerRank``) are
defined by the layers that read and write them; they reach this module through one
explicit call, :func:`register`, which ``hyperstate/__init__.py`` makes. Nothing else
changes what this module answers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import pathlib
import sys
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Union

__all__ = [
    "MISSING",
    "AnyType",
    "Extension",
    "ExtensionType",
    "DictType",
    "EnumType",
    "Field",
    "ListType",
    "LiteralType",
    "OptionType",
    "PrimitiveType",
    "SchemaType",
    "StructType",
    "TupleType",
    "UnionType",
    "VarTupleType",
    "class_name",
    "describe_type",
    "format_type",
    "holds_blobs",
    "node_of_record",
    "node_of_value",
    "register",
    "schema_of",
    "struct_schema",
    "with_article",
]

MISSING: Any = dataclasses.MISSING
"""Marks a field without a default (the ``dataclasses.MISSING`` sentinel)."""

_PRIMITIVES: tuple[type, ...] = (bool, int, float, str, bytes, pathlib.Path)


class SchemaType:
    """Base of every node of the schema tree."""

    __slots__ = ()


@dataclass(frozen=True)
class PrimitiveType(SchemaType):
    """``bool``, ``int``, ``float``, ``str``, ``bytes`` or ``pathlib.Path``."""

    type: type


@dataclass(frozen=True)
class AnyType(SchemaType):
    """``typing.Any``: a plain value (scalars, lists, tuples, dicts) kept as it is."""


@dataclass(frozen=True)
class OptionType(SchemaType):
    """``Optional[X]`` / ``X | None``."""

    inner: SchemaType


@dataclass(frozen=True)
class ListType(SchemaType):
    """``List[X]`` / ``list[X]``."""

    item: SchemaType


@dataclass(frozen=True)
class TupleType(SchemaType):
    """A fixed-length ``Tuple[X, Y]``."""

    items: tuple[SchemaType, ...]


@dataclass(frozen=True)
class VarTupleType(SchemaType):
    """``Tuple[X, ...]``."""

    item: SchemaType


@dataclass(frozen=True)
class DictType(SchemaType):
    """``Dict[K, V]`` with ``str``, ``int`` or ``Enum`` keys."""

    key: SchemaType
    value: SchemaType


@dataclass(frozen=True)
class EnumType(SchemaType):
    """An ``enum.Enum`` subclass; written as the member name."""

    cls: type[enum.Enum]


@dataclass(frozen=True)
class LiteralType(SchemaType):
    """``Literal[...]`` of str, int, bool, Enum members or None."""

    values: tuple[Any, ...]


@dataclass(frozen=True)
class UnionType(SchemaType):
    """A ``Union`` of dataclasses (chosen by struct name) and/or primitives."""

    options: tuple[SchemaType, ...]


@dataclass(frozen=True)
class Field:
    """One field of a dataclass.

    Attributes:
        name: the attribute name.
        type: the schema of the field's annotation.
        default: the default value, or :data:`MISSING`.
        default_factory: the default factory, or :data:`MISSING`.
        annotation: the resolved annotation, for messages.
    """

    name: str
    type: SchemaType
    default: Any = MISSING
    default_factory: Any = MISSING
    annotation: Any = None

    @property
    def has_default(self) -> bool:
        """Whether the field can be left out."""
        return self.default is not MISSING or self.default_factory is not MISSING

    def make_default(self) -> Any:
        """A fresh default value (calls the factory); the field must have a default."""
        if self.default_factory is not MISSING:
            return self.default_factory()
        return self.default


class StructType(SchemaType):
    """A dataclass. Fields are resolved lazily so that recursive classes work."""

    __slots__ = ("_field_map", "_fields", "cls", "name", "version")

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.name: str = cls.__name__
        self._fields: tuple[Field, ...] | None = None
        self._field_map: dict[str, Field] | None = None
        #: The current version of a ``Versioned`` class; None for other classes.
        self.version: int | None = _version_of(cls)

    @property
    def fields(self) -> tuple[Field, ...]:
        """The init fields of the dataclass, in declaration order."""
        if self._fields is None:
            self._fields = _resolve_fields(self.cls)
        return self._fields

    @property
    def field_map(self) -> dict[str, Field]:
        """The fields by name."""
        if self._field_map is None:
            self._field_map = {f.name: f for f in self.fields}
        return self._field_map

    @property
    def lazy_fields(self) -> frozenset[str]:
        """The fields that a ``Lazy`` dataclass loads on first access (blob-backed ones).

        A class is lazy when it has a ``__hyperstate_pending__`` class method that makes
        the placeholder of such a field (see :class:`hyperstate.Lazy`).
        """
        if getattr(self.cls, "__hyperstate_pending__", None) is None:
            return frozenset()
        return frozenset(f.name for f in self.fields if holds_blobs(f.type))

    def __repr__(self) -> str:
        return f"StructType({self.name})"


def _version_of(cls: type) -> int | None:
    if not getattr(cls, "__hyperstate_versioned__", False):
        return None
    version = cls.version()  # type: ignore[attr-defined]
    if type(version) is not int or version < 0:
        raise TypeError(f"{cls.__qualname__}.version() must return an int >= 0, got {version!r}")
    if any(f.name == "version" for f in dataclasses.fields(cls)):
        raise TypeError(
            f"{cls.__qualname__} is Versioned and so cannot have a field named 'version' "
            "(the version is written in its place)"
        )
    return version


_STRUCT_CACHE: dict[type, StructType] = {}
_TYPE_CACHE: dict[Any, SchemaType] = {}


class ExtensionType(SchemaType):
    """Base of the node kinds registered from above (see :func:`register`).

    A subclass is a frozen dataclass that compiles its own codec: ``encoder()`` returns
    ``(obj, where, elide_defaults) -> value tree`` and ``decoder()`` returns
    ``(value, where, ctx) -> object`` (``ctx.fail(where, message)`` records an issue).
    """

    __slots__ = ()

    #: Whether values of this kind live in blob files (a ``Lazy`` state defers them).
    blob_backed: ClassVar[bool] = False

    def children(self) -> tuple[SchemaType, ...]:
        """The schema nodes this one wraps (``Blob[T]``'s ``T``), for tree walks."""
        return ()

    def encoder(self) -> Callable[[Any, Any, bool], Any]:
        raise NotImplementedError

    def decoder(self) -> Callable[[Any, Any, Any], Any]:
        raise NotImplementedError

    def type_name(self) -> str:
        """How messages name this kind, like an annotation (``torch.Tensor``).

        By default the node's class name less ``Type``, with the types it wraps:
        ``PerRank[int]``. Never the node class itself: users never wrote that.
        """
        name = type(self).__name__.removesuffix("Type")
        children = self.children()
        return f"{name}[{', '.join(format_type(c) for c in children)}]" if children else name

    def describe(self) -> str:
        """A phrase naming a value of this kind in messages: ``a torch.Tensor``."""
        return with_article(self.type_name())


class Extension(Protocol):
    """What a layer above serde registers: node kinds for annotations and values."""

    def schema_of(self, annotation: Any) -> SchemaType | None:
        """The node of an annotation of this extension's, or None."""

    def node_of_value(self, obj: Any) -> SchemaType | None:
        """The node that encodes ``obj`` found in an ``Any`` field (a tensor), or None."""

    def node_of_record(self, value: Any) -> SchemaType | None:
        """The node that decodes a record found in an ``Any`` field, or None."""


_EXTENSIONS: list[Extension] = []


def register(extension: Extension) -> None:
    """Add the node kinds of ``extension`` to every schema built from now on.

    Called once per extension by ``hyperstate/__init__.py``, before any schema exists;
    calling it again with the same extension does nothing.
    """
    if extension in _EXTENSIONS:
        return
    _EXTENSIONS.append(extension)
    _TYPE_CACHE.clear()
    _STRUCT_CACHE.clear()


def node_of_value(obj: Any) -> SchemaType | None:
    """The registered node kind that encodes ``obj`` (held in an ``Any`` field), if any."""
    for extension in _EXTENSIONS:
        node = extension.node_of_value(obj)
        if node is not None:
            return node
    return None


def node_of_record(value: Any) -> SchemaType | None:
    """The registered node kind that decodes the record ``value`` (in an ``Any`` field)."""
    for extension in _EXTENSIONS:
        node = extension.node_of_record(value)
        if node is not None:
            return node
    return None


def holds_blobs(node: SchemaType) -> bool:
    """Whether values of ``node`` may live in blob files (so a ``Lazy`` state defers them)."""
    return any(isinstance(n, ExtensionType) and n.blob_backed for n in _walk(node, set()))


def _walk(node: SchemaType, seen: set[int]) -> Iterator[SchemaType]:
    if id(node) in seen or isinstance(node, StructType):
        return  # a nested dataclass is decoded (and deferred) on its own
    seen.add(id(node))
    yield node
    if isinstance(node, OptionType):
        yield from _walk(node.inner, seen)
    elif isinstance(node, ListType | VarTupleType):
        yield from _walk(node.item, seen)
    elif isinstance(node, TupleType):
        for item in node.items:
            yield from _walk(item, seen)
    elif isinstance(node, DictType):
        yield from _walk(node.value, seen)
    elif isinstance(node, ExtensionType):
        for child in node.children():
            yield from _walk(child, seen)


def struct_schema(cls: type) -> StructType:
    """The schema of a dataclass, built once and cached.

    Raises:
        TypeError: ``cls`` is not a dataclass, or one of its fields has an annotation
            that hyperstate does not support (the message names class, field and type).
    """
    cached = _STRUCT_CACHE.get(cls)
    if cached is not None:
        return cached
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"expected a dataclass type, got {_type_name(cls)}")
    node = StructType(cls)
    _STRUCT_CACHE[cls] = node
    try:
        _ = node.fields  # resolve now: bad schemas fail when the class is first used
    except BaseException:
        del _STRUCT_CACHE[cls]
        raise
    return node


def schema_of(annotation: Any) -> SchemaType:
    """The schema node for any supported annotation (cached)."""
    try:
        cached = _TYPE_CACHE.get(annotation)
    except TypeError:  # unhashable annotation (e.g. Literal of a list)
        cached = None
    if cached is not None:
        return cached
    node = _convert(annotation)
    with contextlib.suppress(TypeError):
        _TYPE_CACHE[annotation] = node
    return node


class _Unsupported(Exception):
    def __init__(self, annotation: Any, reason: str = "") -> None:
        self.annotation = annotation
        self.reason = reason


def _resolve_fields(cls: type) -> tuple[Field, ...]:
    try:
        # No globalns: get_type_hints then resolves each base class's annotations in
        # that base's own module, which matters for bases defined elsewhere.
        hints = typing.get_type_hints(cls, localns={cls.__name__: cls}, include_extras=True)
    except NameError as e:
        raise TypeError(
            f"cannot resolve the annotations of {cls.__qualname__}: {e}; forward references "
            "must name types defined at module level of the class's module"
        ) from None
    result = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue  # derived in __post_init__: not part of the data
        annotation = hints.get(f.name, f.type)
        try:
            node = schema_of(annotation)
        except _Unsupported as e:
            reason = f" ({e.reason})" if e.reason else ""
            raise TypeError(
                f"{cls.__qualname__}.{f.name}: unsupported type annotation "
                f"{_type_name(e.annotation)}{reason}; hyperstate supports dataclasses, int, "
                "float, str, bool, bytes, Path, Enum, Literal, Optional, List, Dict, Tuple, "
                "Union and Any"
            ) from None
        result.append(Field(f.name, node, f.default, f.default_factory, annotation))
    return tuple(result)


def _convert(annotation: Any) -> SchemaType:
    for extension in _EXTENSIONS:
        node = extension.schema_of(annotation)
        if node is not None:
            return node
    if annotation is Any:
        return AnyType()
    if isinstance(annotation, type):
        if annotation in _PRIMITIVES:
            return PrimitiveType(annotation)
        if issubclass(annotation, enum.Enum):
            return EnumType(annotation)
        if dataclasses.is_dataclass(annotation):
            return struct_schema(annotation)
        if annotation is list:
            return ListType(AnyType())
        if annotation is dict:
            return DictType(PrimitiveType(str), AnyType())
        if annotation is tuple:
            return VarTupleType(AnyType())
        if issubclass(annotation, pathlib.PurePath):
            return PrimitiveType(pathlib.Path)
        raise _Unsupported(annotation)
    supertype = getattr(annotation, "__supertype__", None)
    if supertype is not None:  # typing.NewType
        return schema_of(supertype)
    alias_value = getattr(annotation, "__value__", None)
    if alias_value is not None and type(annotation).__name__ == "TypeAliasType":
        return schema_of(alias_value)
    if isinstance(annotation, str | typing.ForwardRef):
        raise _Unsupported(annotation, "unresolved forward reference")
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return schema_of(args[0])
    if origin is Union or origin is types.UnionType:
        return _union(annotation, args)
    if origin is typing.Literal:
        return _literal(annotation, args)
    if origin is list:
        return ListType(schema_of(args[0]) if args else AnyType())
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return VarTupleType(schema_of(args[0]))
        if args == ((),):  # Tuple[()]
            return TupleType(())
        return TupleType(tuple(schema_of(a) for a in args))
    if origin is dict:
        key = schema_of(args[0]) if args else PrimitiveType(str)
        if not _valid_key(key):
            raise _Unsupported(annotation, "dict keys must be str, int or an Enum")
        return DictType(key, schema_of(args[1]) if args else AnyType())
    if origin is ClassVar:
        raise _Unsupported(annotation, "ClassVar is not a field")
    raise _Unsupported(annotation)


def _valid_key(key: SchemaType) -> bool:
    return isinstance(key, EnumType) or (
        isinstance(key, PrimitiveType) and key.type in (str, int, pathlib.Path)
    )


def _union(annotation: Any, args: tuple[Any, ...]) -> SchemaType:
    non_none = tuple(a for a in args if a is not type(None))
    if len(non_none) < len(args):
        inner = schema_of(non_none[0]) if len(non_none) == 1 else _union(annotation, non_none)
        return OptionType(inner)
    options = tuple(schema_of(a) for a in non_none)
    for option in options:
        if not isinstance(option, StructType | PrimitiveType | EnumType | LiteralType):
            raise _Unsupported(
                annotation, "a Union may combine only dataclasses, primitives, Enums and Literals"
            )
    struct_names = [o.name for o in options if isinstance(o, StructType)]
    duplicates = {n for n in struct_names if struct_names.count(n) > 1}
    if duplicates:
        raise _Unsupported(
            annotation, f"dataclasses in a Union need distinct names; {sorted(duplicates)} repeat"
        )
    return UnionType(options)


def _literal(annotation: Any, args: tuple[Any, ...]) -> SchemaType:
    values: list[Any] = []
    for a in args:
        if typing.get_origin(a) is typing.Literal:  # nested Literal flattens
            values.extend(typing.get_args(a))
        elif a is None or isinstance(a, str | int | bool | enum.Enum):
            values.append(a)
        else:
            raise _Unsupported(annotation, f"Literal value {a!r} is not a str, int, bool or Enum")
    return LiteralType(tuple(values))


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__qualname__
    return repr(annotation).replace("typing.", "")


def format_type(node: SchemaType) -> str:
    """A short, Python-like rendering of a schema node: ``list[int]``, ``float | None``."""
    if isinstance(node, StructType):
        return node.name
    if isinstance(node, PrimitiveType):
        return "Path" if node.type is pathlib.Path else node.type.__name__
    if isinstance(node, AnyType):
        return "Any"
    if isinstance(node, OptionType):
        return f"{format_type(node.inner)} | None"
    if isinstance(node, ListType):
        return f"list[{format_type(node.item)}]"
    if isinstance(node, VarTupleType):
        return f"tuple[{format_type(node.item)}, ...]"
    if isinstance(node, TupleType):
        return f"tuple[{', '.join(format_type(i) for i in node.items)}]"
    if isinstance(node, DictType):
        return f"dict[{format_type(node.key)}, {format_type(node.value)}]"
    if isinstance(node, EnumType):
        return node.cls.__name__
    if isinstance(node, LiteralType):
        return f"Literal[{', '.join(_literal_repr(v) for v in node.values)}]"
    if isinstance(node, UnionType):
        return " | ".join(format_type(o) for o in node.options)
    if isinstance(node, ExtensionType):
        return node.type_name()
    return type(node).__name__


def describe_type(node: SchemaType) -> str:
    """A phrase naming a value of ``node`` in messages: ``an int``, ``a torch.Tensor``,
    ``a torch.optim.Optimizer (restored in place)``."""
    if isinstance(node, ExtensionType):
        return node.describe()
    if isinstance(node, OptionType):
        return f"{describe_type(node.inner)} or None"
    if isinstance(node, AnyType):
        return "any value"
    return with_article(format_type(node))


def with_article(name: str) -> str:
    """``name`` after ``a`` or ``an``: ``an int``, ``a list[int]``."""
    vowel = name[:1].lower() in ("a", "e", "i", "o", "u")
    return f"{'an' if vowel else 'a'} {name}"


def class_name(cls: type) -> str:
    """How messages name a class: torch's and numpy's by their public dotted path
    (``torch.optim.Optimizer``, not ``torch.optim.optimizer.Optimizer``), the user's own
    by their qualified name.

    Only modules already imported are looked at: naming a class imports nothing.
    """
    module = getattr(cls, "__module__", None) or ""
    if module.partition(".")[0] not in ("torch", "numpy"):
        return cls.__qualname__
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        package = ".".join(parts[:i])
        if getattr(sys.modules.get(package), cls.__name__, None) is cls:
            return f"{package}.{cls.__name__}"
    return f"{module}.{cls.__qualname__}"


def _literal_repr(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    return repr(value)
