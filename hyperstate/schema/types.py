"""The schema tree of config classes: kept under this name for earlier imports.

The introspection lives in :mod:`hyperstate.typeinfo`, below the serde layer; this module
re-exports it, and adds :func:`load_schema` for schema files.
"""

from __future__ import annotations

from typing import Any

from hyperstate.typeinfo import (
    MISSING,
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
    schema_of,
    struct_schema,
)

__all__ = [
    "MISSING",
    "AnyType",
    "DictType",
    "EnumType",
    "Field",
    "ListType",
    "LiteralType",
    "OptionType",
    "Primitive",
    "PrimitiveType",
    "SchemaType",
    "StructType",
    "TupleType",
    "UnionType",
    "VarTupleType",
    "format_type",
    "load_schema",
    "schema_of",
    "struct_schema",
]


Primitive = PrimitiveType
"""The name earlier releases used for :class:`~hyperstate.typeinfo.PrimitiveType`."""


def load_schema(path: Any) -> Any:
    """Read a schema file written by ``dump-schema`` (see :mod:`hyperstate.schema.model`)."""
    from hyperstate.schema.model import load_schema as _load_schema

    return _load_schema(path)
