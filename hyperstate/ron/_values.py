"""The plain value tree that the RON parser produces and the emitter consumes.

RON scalars map to Python scalars: ``int``, ``float``, ``bool``, ``str`` (strings and
chars), ``bytes`` (byte strings) and ``None``. Lists are ``list``, tuples (and unit
``()``) are ``tuple``, maps are ``dict`` with keys of any hashable value type. The
classes below keep what Python has no builtin for: struct names, tuple structs, bare
identifiers (unit structs and unit enum variants) and ``Some(..)``.
"""

from __future__ import annotations

from typing import Any

from hyperstate.errors import format_value

__all__ = ["Ident", "Some", "Struct", "TupleStruct", "Value"]

Value = Any
"""A node of the value tree (see the module docstring)."""


class Struct:
    """A struct with named fields: ``Name(a: 1)`` or unnamed ``(a: 1)``.

    Also an enum variant with named fields, ``V(a: 1)``, which RON writes the same way.
    """

    __slots__ = ("fields", "name")

    def __init__(self, name: str | None, fields: dict[str, Value]) -> None:
        self.name = name
        self.fields = fields

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Struct):
            return NotImplemented
        return self.name == other.name and self.fields == other.fields

    def __hash__(self) -> int:
        return hash((Struct, self.name, tuple(self.fields.items())))

    def __repr__(self) -> str:
        return f"Struct({self.name!r}, {format_value(self.fields)})"


class TupleStruct:
    """A named tuple struct or tuple enum variant: ``Name(1, 2)``, ``V(1)``."""

    __slots__ = ("items", "name")

    def __init__(self, name: str, items: tuple[Value, ...]) -> None:
        self.name = name
        self.items = items

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TupleStruct):
            return NotImplemented
        return self.name == other.name and self.items == other.items

    def __hash__(self) -> int:
        return hash((TupleStruct, self.name, self.items))

    def __repr__(self) -> str:
        return f"TupleStruct({self.name!r}, {format_value(self.items)})"


class Ident:
    """A bare identifier: a unit struct or unit enum variant such as ``Relu``."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ident):
            return NotImplemented
        return self.name == other.name

    def __hash__(self) -> int:
        return hash((Ident, self.name))

    def __repr__(self) -> str:
        return f"Ident({self.name!r})"


class Some:
    """An explicit ``Some(value)``; ``None`` is Python's ``None``."""

    __slots__ = ("value",)

    def __init__(self, value: Value) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Some):
            return NotImplemented
        # As tuples compare items: the same object is equal to itself, so a map reads
        # `Some(NaN)` twice as one key, as it does `NaN` and `(NaN,)`.
        return (self.value,) == (other.value,)

    def __hash__(self) -> int:
        return hash((Some, self.value))

    def __repr__(self) -> str:
        return f"Some({format_value(self.value)})"
