"""The schema file: a plain, versionable description of a config class.

``dump-schema`` writes it (RON, meant for version control), :func:`load_schema` reads
it back, and the :class:`~hyperstate.schema.schema_checker.SchemaChecker` compares it
with the current classes. It needs none of the old classes to be importable: structs are
listed once by name, types refer to them with ``StructRef``; enums and literals are
written out with their variants and values.
"""

from __future__ import annotations

import copy
import enum
import os
from dataclasses import dataclass, field
from typing import Any

from hyperstate import _fs, ron
from hyperstate import typeinfo as t
from hyperstate.schema.docs import field_docs
from hyperstate.serde import from_value, plain, to_value

__all__ = [
    "AnyValue",
    "Converted",
    "DictOf",
    "EnumDef",
    "FieldDef",
    "ListOf",
    "LiteralOf",
    "OptionOf",
    "Primitive",
    "Schema",
    "StructDef",
    "StructRef",
    "TupleOf",
    "TypeDef",
    "UnionOf",
    "Variant",
    "VarTupleOf",
    "dump_schema",
    "load_schema",
    "schema_of_class",
]


@dataclass
class Primitive:
    """``int``, ``float``, ``str``, ``bool``, ``bytes`` or ``Path``."""

    name: str


@dataclass
class AnyValue:
    """``typing.Any``."""


@dataclass
class Converted(AnyValue):
    """Values that an upgrade rule's function converted, in a schema upgraded by rules.

    What ``MapFieldValue``'s ``map_fn`` returns cannot be known: the schema checker trusts
    that it fits the current type. Never in schema files.
    """


@dataclass
class OptionOf:
    """``Optional[inner]``."""

    inner: TypeDef


@dataclass
class ListOf:
    """``list[item]``."""

    item: TypeDef


@dataclass
class TupleOf:
    """A fixed-length tuple."""

    items: list[TypeDef]


@dataclass
class VarTupleOf:
    """``tuple[item, ...]``."""

    item: TypeDef


@dataclass
class DictOf:
    """``dict[key, value]``."""

    key: TypeDef
    value: TypeDef


@dataclass
class Variant:
    """One member of an enum: its name (what files contain) and its value."""

    name: str
    value: Any = None


@dataclass
class EnumDef:
    """An ``Enum`` class with its variants in order."""

    name: str
    variants: list[Variant] = field(default_factory=list)


@dataclass
class LiteralOf:
    """``Literal[...]``; Enum members are written by name."""

    values: list[Any] = field(default_factory=list)


@dataclass
class UnionOf:
    """``Union[...]`` of structs and primitives."""

    options: list[TypeDef] = field(default_factory=list)


@dataclass
class StructRef:
    """A dataclass, by the name of its ``StructDef``."""

    name: str


TypeDef = (
    Primitive
    | AnyValue
    | OptionOf
    | ListOf
    | TupleOf
    | VarTupleOf
    | DictOf
    | EnumDef
    | LiteralOf
    | UnionOf
    | StructRef
)


@dataclass
class FieldDef:
    """A field: name, type, default (when ``has_default``) and doc comment."""

    name: str
    type: TypeDef
    has_default: bool = False
    default: Any = None
    doc: str | None = None


@dataclass
class StructDef:
    """A dataclass: its fields in order and, for ``Versioned`` ones, the version."""

    name: str
    fields: list[FieldDef] = field(default_factory=list)
    version: int | None = None
    doc: str | None = None

    def field(self, name: str) -> FieldDef | None:
        """The field called ``name``, if any."""
        for f in self.fields:
            if f.name == name:
                return f
        return None


@dataclass
class Schema:
    """Every struct reachable from the root config class."""

    root: str
    structs: list[StructDef] = field(default_factory=list)

    def struct(self, name: str) -> StructDef | None:
        """The struct called ``name``, if any."""
        for s in self.structs:
            if s.name == name:
                return s
        return None

    @property
    def root_struct(self) -> StructDef:
        """The struct of the root config class."""
        root = self.struct(self.root)
        if root is None:
            raise ValueError(f"schema has no struct named {self.root!r} (its root)")
        return root

    def copy(self) -> Schema:
        """A deep copy, for rules to rewrite."""
        return copy.deepcopy(self)


def schema_of_class(cls: type) -> Schema:
    """The schema of dataclass ``cls`` and every struct it refers to."""
    structs: dict[str, StructDef] = {}
    _describe_struct(t.struct_schema(cls), structs)
    return Schema(root=cls.__name__, structs=list(structs.values()))


def _describe_struct(node: t.StructType, structs: dict[str, StructDef]) -> None:
    if node.name in structs:
        return
    definition = StructDef(name=node.name, version=node.version, doc=_class_doc(node.cls))
    structs[node.name] = definition  # before the fields: recursive classes
    docs = field_docs(node.cls)
    for f in node.fields:
        default = None
        if f.has_default:
            default = plain(to_value(f.make_default(), f.type))
        definition.fields.append(
            FieldDef(
                name=f.name,
                type=_describe_type(f.type, structs),
                has_default=f.has_default,
                default=default,
                doc=docs.get(f.name),
            )
        )


def _class_doc(cls: type) -> str | None:
    doc = cls.__doc__
    if not doc or doc.startswith(f"{cls.__name__}("):  # the dataclass-generated signature
        return None
    return doc.strip()


def _describe_type(node: t.SchemaType, structs: dict[str, StructDef]) -> TypeDef:
    if isinstance(node, t.StructType):
        _describe_struct(node, structs)
        return StructRef(node.name)
    if isinstance(node, t.PrimitiveType):
        return Primitive(t.format_type(node))
    if isinstance(node, t.AnyType):
        return AnyValue()
    if isinstance(node, t.OptionType):
        return OptionOf(_describe_type(node.inner, structs))
    if isinstance(node, t.ListType):
        return ListOf(_describe_type(node.item, structs))
    if isinstance(node, t.VarTupleType):
        return VarTupleOf(_describe_type(node.item, structs))
    if isinstance(node, t.TupleType):
        return TupleOf([_describe_type(i, structs) for i in node.items])
    if isinstance(node, t.DictType):
        return DictOf(_describe_type(node.key, structs), _describe_type(node.value, structs))
    if isinstance(node, t.EnumType):
        return EnumDef(
            node.cls.__name__,
            [Variant(m.name, plain(to_value(m.value))) for m in node.cls],
        )
    if isinstance(node, t.LiteralType):
        return LiteralOf([v.name if isinstance(v, enum.Enum) else v for v in node.values])
    if isinstance(node, t.UnionType):
        return UnionOf([_describe_type(o, structs) for o in node.options])
    return Primitive(type(node).__name__)


def render_type(typedef: TypeDef) -> str:
    """A Python-like rendering of a type: ``list[Layer]``, ``float | None``."""
    if isinstance(typedef, StructRef):
        return typedef.name
    if isinstance(typedef, Primitive):
        return typedef.name
    if isinstance(typedef, AnyValue):
        return "Any"
    if isinstance(typedef, OptionOf):
        return f"{render_type(typedef.inner)} | None"
    if isinstance(typedef, ListOf):
        return f"list[{render_type(typedef.item)}]"
    if isinstance(typedef, VarTupleOf):
        return f"tuple[{render_type(typedef.item)}, ...]"
    if isinstance(typedef, TupleOf):
        return f"tuple[{', '.join(render_type(i) for i in typedef.items)}]"
    if isinstance(typedef, DictOf):
        return f"dict[{render_type(typedef.key)}, {render_type(typedef.value)}]"
    if isinstance(typedef, EnumDef):
        return typedef.name
    if isinstance(typedef, LiteralOf):
        return f"Literal[{', '.join(repr(v) for v in typedef.values)}]"
    return " | ".join(render_type(o) for o in typedef.options)


def dump_schema(cls: type, path: str | os.PathLike[str] | None = None) -> str:
    """The schema file text of ``cls``; also written (atomically) to ``path`` if given."""
    text = ron.dumps(to_value(schema_of_class(cls), elide_defaults=True))
    if path is not None:
        _fs.write_atomic(path, (text + "\n").encode("utf-8"))
    return text


def load_schema(path: str | os.PathLike[str]) -> Schema:
    """Read a schema file written by ``dump-schema``."""
    name = os.fspath(path)
    text = _fs.read_text(name)
    result: Schema = from_value(Schema, ron.loads(text, path=name))
    return result
