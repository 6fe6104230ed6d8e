"""Upgrade a parsed value tree to the current versions of its ``Versioned`` classes.

Runs after parsing and before overrides and the typed conversion. Every ``Versioned``
struct in the tree reads (and removes) its ``version`` field, then applies its class's
rules from that version up to the current one; nested ``Versioned`` structs upgrade
their own fields the same way.
"""

from __future__ import annotations

from typing import Any

from hyperstate.errors import ConfigError, Issue, ValuePath, format_int
from hyperstate.ron import Ident, Some, Struct
from hyperstate.serde import describe
from hyperstate.typeinfo import (
    DictType,
    ListType,
    OptionType,
    PrimitiveType,
    SchemaType,
    StructType,
    TupleType,
    UnionType,
    VarTupleType,
)

__all__ = ["needs_upgrade_pass", "upgrade"]


def upgrade(node: SchemaType, value: Any, where: ValuePath = ()) -> Any:
    """``value`` with every ``Versioned`` struct below ``node`` brought up to date.

    Raises:
        ConfigError: a version is newer than the code, older than the class's
            ``minimum_version()``, not an integer, or a rule rejected a value.
    """
    if not needs_upgrade_pass(node):
        return value
    return _upgrade(node, value, where)


def _upgrade(node: SchemaType, value: Any, where: ValuePath) -> Any:
    if isinstance(node, StructType):
        return _upgrade_struct(node, value, where)
    if isinstance(node, OptionType):
        if type(value) is Some:
            return Some(_upgrade(node.inner, value.value, where))
        return None if value is None else _upgrade(node.inner, value, where)
    if isinstance(node, ListType | VarTupleType) and type(value) in (list, tuple):
        items = [_upgrade(node.item, x, (*where, i)) for i, x in enumerate(value)]
        return items if type(value) is list else tuple(items)
    if isinstance(node, TupleType) and type(value) in (list, tuple):
        items = [
            _upgrade(n, x, (*where, i)) if i < len(node.items) else x
            for i, (n, x) in enumerate(zip(node.items, value, strict=False))
        ]
        return items if type(value) is list else tuple(items)
    if isinstance(node, DictType) and type(value) is dict:
        return {k: _upgrade(node.value, x, (*where, k)) for k, x in value.items()}
    if isinstance(node, DictType) and type(value) is Struct and node.key == PrimitiveType(str):
        # `(a: ...)` is a str-keyed map too (as the typed conversion reads it)
        entries = {k: _upgrade(node.value, x, (*where, k)) for k, x in value.fields.items()}
        return Struct(value.name, entries)
    if isinstance(node, UnionType) and type(value) in (Struct, Ident):
        structs = [o for o in node.options if isinstance(o, StructType)]
        for option in structs:
            if option.name == value.name:
                return _upgrade(option, value, where)
        if value.name is None and len(structs) == 1:  # the only struct: no name needed
            return _upgrade(structs[0], value, where)
    return value


def _upgrade_struct(node: StructType, value: Any, where: ValuePath) -> Any:
    fields = value.fields if type(value) is Struct else value if type(value) is dict else None
    if fields is None:
        return value
    if node.version is not None:
        found = fields.pop("version", 0)
        if type(found) is not int:
            raise ConfigError(
                [Issue((*where, "version"), f"expected int, found {describe(found)}")]
            )
        value = _apply_rules(node, value, found, where)
        fields = value.fields if type(value) is Struct else value
    for f in node.fields:
        if f.name in fields and needs_upgrade_pass(f.type):
            fields[f.name] = _upgrade(f.type, fields[f.name], (*where, f.name))
    return value


def _apply_rules(node: StructType, value: Any, found: int, where: ValuePath) -> Any:
    cls: Any = node.cls
    current = node.version
    assert current is not None
    if found > current:
        raise ConfigError(
            [
                Issue(
                    (*where, "version"),
                    f"{node.name} version {format_int(found)} was written by newer code; this code "
                    f"knows versions up to {current}, and never downgrades",
                )
            ]
        )
    minimum = cls.minimum_version()
    if found < minimum:
        raise ConfigError(
            [
                Issue(
                    (*where, "version"),
                    f"{node.name} version {format_int(found)} is older than the oldest "
                    f"version this code can upgrade ({minimum})",
                )
            ]
        )
    rules = cls.upgrade_rules()
    bad_keys = [v for v in rules if not 0 <= v < current]
    if bad_keys:
        raise TypeError(
            f"{node.name}.upgrade_rules() has keys {bad_keys}; keys are the versions that "
            f"rules upgrade from, 0 <= key < version() = {current}"
        )
    for version in range(found, current):
        for rule in rules.get(version, ()):
            context = f"upgrading {node.name} from version {version}"
            try:
                value = rule.apply(value)
            except ConfigError as e:
                raise ConfigError(
                    [Issue((*where, *i.path), i.message, hint=i.hint) for i in e.issues],
                    context=context,
                ) from None
            except Exception as e:  # e.g. a map_fn that meets a value it cannot handle
                message = f"{rule.render()} failed: {type(e).__name__}: {e}"
                raise ConfigError([Issue(where, message)], context=context) from e
    return value


_NEEDS: dict[SchemaType, bool] = {}


def needs_upgrade_pass(node: SchemaType) -> bool:
    """Whether any ``Versioned`` struct can appear below ``node`` (cached)."""
    cached = _NEEDS.get(node)
    if cached is None:
        cached = _NEEDS[node] = _reaches_versioned(node, set())
    return cached


def _reaches_versioned(node: SchemaType, seen: set[int]) -> bool:
    # One complete search per node asked about: caching the answers for the nodes on
    # the way would cache "no" for a recursive class that is still being searched.
    if isinstance(node, StructType):
        if node.version is not None:
            return True
        if id(node) in seen:
            return False
        seen.add(id(node))
        return any(_reaches_versioned(f.type, seen) for f in node.fields)
    if isinstance(node, OptionType):
        return _reaches_versioned(node.inner, seen)
    if isinstance(node, ListType | VarTupleType):
        return _reaches_versioned(node.item, seen)
    if isinstance(node, TupleType):
        return any(_reaches_versioned(i, seen) for i in node.items)
    if isinstance(node, DictType):
        return _reaches_versioned(node.value, seen)
    if isinstance(node, UnionType):
        return any(_reaches_versioned(o, seen) for o in node.options)
    return False
