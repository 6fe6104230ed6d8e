"""Rewrite rules: upgrade configs written at an old version of a ``Versioned`` class.

A rule works on the plain value tree of one struct (as parsed from RON, before the
typed conversion) and, for the schema checker, on a schema model. Field paths are
tuples of names relative to the versioned struct; a ``"*"`` segment passes through
every item of a list or every value of a map, e.g. ``("layers", "*", "width")``.
"""

from __future__ import annotations

import contextlib
import copy
import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from hyperstate.errors import ConfigError, Issue, format_path
from hyperstate.ron import Ident, Some, Struct
from hyperstate.schema import model as m
from hyperstate.serde import plain, to_value

__all__ = [
    "AddDefault",
    "ChangeDefault",
    "CheckValue",
    "DeleteField",
    "MapFieldValue",
    "RenameField",
    "RewriteRule",
    "RuleMismatch",
]

FieldPath = Sequence[str]
STAR = "*"


class RuleMismatch(Exception):
    """A rule does not fit the schema it is applied to (reported by the checker)."""


class RewriteRule(ABC):
    """Base class of rules that take a config from version N to N + 1."""

    @abstractmethod
    def apply(self, state_dict: Any) -> Any:
        """Rewrite the value tree of a struct (in place when possible); return it."""

    @abstractmethod
    def apply_to_schema(self, schema: m.Schema, root: str | None = None) -> None:
        """Make the same change to a schema model, starting at struct ``root``.

        Raises:
            RuleMismatch: the rule does not fit the schema (e.g. the field is missing).
        """

    def render(self) -> str:
        """Python source that builds this rule, for reports."""
        return repr(self)


def _tuple(path: FieldPath) -> tuple[str, ...]:
    return (path,) if isinstance(path, str) else tuple(path)


@dataclass
class RenameField(RewriteRule):
    """Move a field, also into or out of nested structs: ``("lr",)`` -> ``("optimizer", "lr")``.

    With ``"*"`` segments, both paths must share the prefix up to the last ``"*"``
    (the rename happens inside every item).
    """

    old_field: FieldPath
    new_field: FieldPath

    def apply(self, state_dict: Any) -> Any:
        old, new = _tuple(self.old_field), _tuple(self.new_field)
        prefix, old_rest, new_rest = _split_common(old, new)
        for node in _nodes(state_dict, prefix):
            found, value = _pop(node, old_rest)
            if found:
                _insert(node, new_rest, value)
        return state_dict

    def apply_to_schema(self, schema: m.Schema, root: str | None = None) -> None:
        old, new = _tuple(self.old_field), _tuple(self.new_field)
        parent, name = _schema_parent(schema, root, old, self)
        definition = parent.field(name)
        if definition is None:
            raise RuleMismatch(f"{self.render()}: no field {format_path(old)} to rename")
        parent.fields.remove(definition)
        new_parent, new_name = _schema_parent(schema, root, new, self, create=True)
        if new_parent.field(new_name) is not None:
            raise RuleMismatch(f"{self.render()}: field {format_path(new)} already exists")
        definition.name = new_name
        new_parent.fields.append(definition)

    def render(self) -> str:
        return (
            f"RenameField(old_field={_tuple(self.old_field)!r}, "
            f"new_field={_tuple(self.new_field)!r})"
        )


@dataclass
class DeleteField(RewriteRule):
    """Remove a field that the class no longer has."""

    field: FieldPath

    def apply(self, state_dict: Any) -> Any:
        path = _tuple(self.field)
        for node in _nodes(state_dict, path[:-1]):
            _pop(node, path[-1:])
        return state_dict

    def apply_to_schema(self, schema: m.Schema, root: str | None = None) -> None:
        parent, name = _schema_parent(schema, root, _tuple(self.field), self)
        definition = parent.field(name)
        if definition is None:
            raise RuleMismatch(f"{self.render()}: no field {format_path(self.field)} to delete")
        parent.fields.remove(definition)

    def render(self) -> str:
        return f"DeleteField(field={_tuple(self.field)!r})"


@dataclass
class MapFieldValue(RewriteRule):
    """Replace a field's value with ``map_fn(value)`` wherever it is present.

    ``map_fn`` receives plain values: numbers, strings, enum variants as their name,
    lists, dicts, and structs as ``Struct`` records. For an enum field, the schema
    checker applies ``map_fn`` to the variant names (``lambda v: {"RELU": "Relu"}.get(v, v)``
    renames a variant); for any other field it trusts that the results fit the current
    type (a type change that the rule converts is handled). A trailing ``"*"`` maps every
    item of a list or map: ``MapFieldValue(("acts", "*"), ...)``. ``rendered`` is the
    source shown in reports.
    """

    field: FieldPath
    map_fn: Callable[[Any], Any]
    rendered: str | None = None

    def apply(self, state_dict: Any) -> Any:
        return _map_at(state_dict, _tuple(self.field), lambda v: _to_tree(self.map_fn(_simple(v))))

    def apply_to_schema(self, schema: m.Schema, root: str | None = None) -> None:
        path = _tuple(self.field)
        definition, holder, attr = _schema_slot(schema, root, path, self)
        typedef = getattr(holder, attr)
        inner = typedef.inner if isinstance(typedef, m.OptionOf) else typedef
        if isinstance(inner, m.EnumDef):
            for variant in inner.variants:
                variant.name = str(self.map_fn(variant.name))
        else:
            setattr(holder, attr, m.Converted())
        if definition.has_default and definition.default is not None:
            # Files that lack the field get the new default: compare it with the mapped
            # old one. map_fn need not handle every value the default could be.
            stars = path[len(path) - _trailing_stars(path) :]
            with contextlib.suppress(Exception):
                definition.default = plain(
                    _map_at(
                        copy.deepcopy(definition.default),
                        stars,
                        lambda v: _to_tree(self.map_fn(v)),
                    )
                )

    def render(self) -> str:
        fn = self.rendered or "lambda v: ..."
        return f"MapFieldValue(field={_tuple(self.field)!r}, map_fn={fn})"


@dataclass
class ChangeDefault(RewriteRule):
    """The default of a field changed: files that relied on the old default keep it."""

    field: FieldPath
    old_default: Any
    new_default: Any

    def apply(self, state_dict: Any) -> Any:
        path = _tuple(self.field)
        for node in _nodes(state_dict, path[:-1]):
            fields = _fields_of(node)
            if fields is not None and path[-1] not in fields:
                fields[path[-1]] = _to_tree(self.old_default)
        return state_dict

    def apply_to_schema(self, schema: m.Schema, root: str | None = None) -> None:
        definition = _schema_field(schema, root, _tuple(self.field), self)
        old = plain(_to_tree(self.old_default))
        if not definition.has_default or definition.default != old:
            found = definition.default if definition.has_default else "no default"
            raise RuleMismatch(
                f"{self.render()}: the old default of {format_path(self.field)} is {found!r}"
            )
        definition.default = plain(_to_tree(self.new_default))

    def render(self) -> str:
        return (
            f"ChangeDefault(field={_tuple(self.field)!r}, "
            f"old_default={_render_value(self.old_default)}, "
            f"new_default={_render_value(self.new_default)})"
        )


@dataclass
class AddDefault(RewriteRule):
    """A field that old files may lack: fill it with ``default`` where missing."""

    field: FieldPath
    default: Any

    def apply(self, state_dict: Any) -> Any:
        path = _tuple(self.field)
        for node in _nodes(state_dict, path[:-1]):
            fields = _fields_of(node)
            if fields is not None and path[-1] not in fields:
                fields[path[-1]] = _to_tree(self.default)
        return state_dict

    def apply_to_schema(self, schema: m.Schema, root: str | None = None) -> None:
        path = _tuple(self.field)
        parent, name = _schema_parent(schema, root, path, self, create=True)
        definition = parent.field(name)
        if definition is None:
            # Upgraded files hold exactly the default here.
            literal = m.LiteralOf([plain(_to_tree(self.default))])
            parent.fields.append(m.FieldDef(name=name, type=literal))
        else:
            # Every upgraded file has the field now: none relies on a default.
            definition.has_default = False
            definition.default = None

    def render(self) -> str:
        return f"AddDefault(field={_tuple(self.field)!r}, default={_render_value(self.default)})"


@dataclass
class CheckValue(RewriteRule):
    """Old files may hold only ``allowed_values`` here (e.g. when a str became a Literal).

    A value outside the set is an error naming the field and the allowed values.
    """

    field: FieldPath
    allowed_values: Collection[Any]

    def apply(self, state_dict: Any) -> Any:
        allowed = [_simple(_to_tree(v)) for v in self.allowed_values]
        # None (an Optional left empty) is not a value to check.
        for node, where in _nodes_with_paths(state_dict, _tuple(self.field), ()):
            value = _simple(node)
            if not any(type(value) is type(a) and value == a for a in allowed):
                shown = ", ".join(sorted(repr(a) for a in allowed))
                raise ConfigError(
                    [
                        Issue(
                            where,
                            f"value {value!r} is no longer allowed; allowed values: {shown}",
                        )
                    ]
                )
        return state_dict

    def apply_to_schema(self, schema: m.Schema, root: str | None = None) -> None:
        _, holder, attr = _schema_slot(schema, root, _tuple(self.field), self)
        values = sorted((plain(_to_tree(v)) for v in self.allowed_values), key=repr)
        optional = isinstance(getattr(holder, attr), m.OptionOf)
        literal = m.LiteralOf(values)
        setattr(holder, attr, m.OptionOf(literal) if optional else literal)

    def render(self) -> str:
        values = ", ".join(sorted(_render_value(v) for v in self.allowed_values))
        return f"CheckValue(field={_tuple(self.field)!r}, allowed_values={{{values}}})"


# ---------------------------------------------------------------------------------------
# Value-tree helpers


def _fields_of(node: Any) -> dict[Any, Any] | None:
    if type(node) is Struct:
        return node.fields
    if type(node) is dict:
        return node
    if type(node) is Some:
        return _fields_of(node.value)
    return None


def _nodes(tree: Any, path: tuple[str, ...]) -> Iterator[Any]:
    for node, _ in _nodes_with_paths(tree, path, ()):
        yield node


def _nodes_with_paths(
    tree: Any, path: tuple[str, ...], where: tuple[Any, ...]
) -> Iterator[tuple[Any, tuple[Any, ...]]]:
    """Every node at ``path`` below ``tree`` (``"*"`` expands lists and maps)."""
    if type(tree) is Some:
        tree = tree.value
    if not path:
        if tree is not None:
            yield tree, where
        return
    head, rest = path[0], path[1:]
    if head == STAR:
        if type(tree) is list or type(tree) is tuple:
            for i, item in enumerate(tree):
                yield from _nodes_with_paths(item, rest, (*where, i))
        else:
            items = _fields_of(tree)
            if items is not None:
                for key, item in items.items():
                    yield from _nodes_with_paths(item, rest, (*where, key))
        return
    fields = _fields_of(tree)
    if fields is not None and head in fields:
        yield from _nodes_with_paths(fields[head], rest, (*where, head))


def _pop(node: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
    for name in path[:-1]:
        fields = _fields_of(node)
        if fields is None or name not in fields:
            return False, None
        node = fields[name]
    fields = _fields_of(node)
    if fields is None or path[-1] not in fields:
        return False, None
    return True, fields.pop(path[-1])


def _map_at(tree: Any, path: tuple[str, ...], fn: Callable[[Any], Any]) -> Any:
    """``tree`` with ``fn`` applied to every value at ``path`` (present ones only)."""
    if not path:
        return fn(tree)
    if type(tree) is Some:
        return Some(_map_at(tree.value, path, fn))
    head, rest = path[0], path[1:]
    if head == STAR and (type(tree) is list or type(tree) is tuple):
        items = [_map_at(item, rest, fn) for item in tree]
        return items if type(tree) is list else tuple(items)
    fields = _fields_of(tree)
    if fields is None:
        return tree
    keys = list(fields) if head == STAR else [head] if head in fields else []
    for key in keys:
        fields[key] = _map_at(fields[key], rest, fn)
    return tree


def _trailing_stars(path: tuple[str, ...]) -> int:
    n = 0
    while n < len(path) and path[len(path) - 1 - n] == STAR:
        n += 1
    return n


def _insert(node: Any, path: tuple[str, ...], value: Any) -> None:
    for name in path[:-1]:
        fields = _fields_of(node)
        if fields is None:
            return
        child = fields.get(name)
        if child is None:
            child = fields[name] = Struct(None, {})
        node = child
    fields = _fields_of(node)
    if fields is not None:
        fields[path[-1]] = value


def _split_common(
    old: tuple[str, ...], new: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    last_star = max((i for i, seg in enumerate(old) if seg == STAR), default=-1)
    prefix = old[: last_star + 1]
    if new[: last_star + 1] != prefix or STAR in new[last_star + 1 :]:
        raise ValueError(
            f"RenameField paths {old!r} -> {new!r} must share the prefix up to the last '*'"
        )
    return prefix, old[last_star + 1 :], new[last_star + 1 :]


def _simple(value: Any) -> Any:
    """What ``map_fn`` and ``CheckValue`` see: enum variants as names, no ``Some``."""
    if type(value) is Ident:
        return value.name
    if type(value) is Some:
        return _simple(value.value)
    return value


def _to_tree(value: Any) -> Any:
    """A Python value given in a rule (maybe an Enum member or dataclass) as a tree."""
    if type(value) is Struct or type(value) is Ident or type(value) is Some:
        return value
    return to_value(value)


def _render_value(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    return repr(value)


# ---------------------------------------------------------------------------------------
# Schema-model helpers


def _schema_parent(
    schema: m.Schema,
    root: str | None,
    path: tuple[str, ...],
    rule: RewriteRule,
    create: bool = False,
) -> tuple[m.StructDef, str]:
    struct = schema.struct(root or schema.root)
    if struct is None:
        raise RuleMismatch(f"{rule.render()}: no struct {root or schema.root!r} in the schema")
    for i, name in enumerate(path[:-1]):
        if name == STAR:
            continue
        definition = struct.field(name)
        if definition is None:
            if not create:
                raise RuleMismatch(f"{rule.render()}: no field {format_path(path[: i + 1])}")
            target = m.StructDef(name=f"{struct.name}.{name}")
            schema.structs.append(target)
            struct.fields.append(m.FieldDef(name=name, type=m.StructRef(target.name)))
            struct = target
            continue
        ref = _struct_in(definition.type, path[i + 1 :])
        found = _own_struct(schema, ref, f"{struct.name}.{name}") if ref else None
        if found is None:
            raise RuleMismatch(
                f"{rule.render()}: {format_path(path[: i + 1])} is not a struct "
                f"({m.render_type(definition.type)})"
            )
        struct = found
    return struct, path[-1]


def _struct_in(typedef: m.TypeDef, rest: tuple[str, ...]) -> m.StructRef | None:
    """The struct a path continues into: through Option, and through list/dict on ``*``."""
    star = bool(rest) and rest[0] == STAR
    if isinstance(typedef, m.OptionOf):
        return _struct_in(typedef.inner, rest)
    if isinstance(typedef, m.StructRef):
        return typedef
    if star and isinstance(typedef, m.ListOf | m.VarTupleOf):
        return _struct_in(typedef.item, rest[1:])
    if star and isinstance(typedef, m.DictOf):
        return _struct_in(typedef.value, rest[1:])
    if isinstance(typedef, m.UnionOf):
        refs = [o for o in typedef.options if isinstance(o, m.StructRef)]
        return refs[0] if len(refs) == 1 else None
    return None


def _own_struct(schema: m.Schema, ref: m.StructRef, name: str) -> m.StructDef | None:
    """The struct ``ref`` points to, first copied (as ``name``) if other places share it.

    Files hold a value per place: a rule that renames a field inside ``layers[*]`` must
    not also rename it inside ``heads[*]``, which holds the same struct.
    """
    found = schema.struct(ref.name)
    if found is None or _references(schema, ref.name) < 2:
        return found
    while schema.struct(name) is not None:
        name += "'"
    own = copy.deepcopy(found)
    own.name = ref.name = name
    schema.structs.append(own)
    return own


def _references(schema: m.Schema, name: str) -> int:
    def count(typedef: m.TypeDef) -> int:
        if isinstance(typedef, m.StructRef):
            return int(typedef.name == name)
        if isinstance(typedef, m.OptionOf):
            return count(typedef.inner)
        if isinstance(typedef, m.ListOf | m.VarTupleOf):
            return count(typedef.item)
        if isinstance(typedef, m.DictOf):
            return count(typedef.value)
        if isinstance(typedef, m.TupleOf):
            return sum(count(i) for i in typedef.items)
        if isinstance(typedef, m.UnionOf):
            return sum(count(o) for o in typedef.options)
        return 0

    fields = (f for s in schema.structs for f in s.fields)
    return int(schema.root == name) + sum(count(f.type) for f in fields)


def _schema_field(
    schema: m.Schema, root: str | None, path: tuple[str, ...], rule: RewriteRule
) -> m.FieldDef:
    parent, name = _schema_parent(schema, root, path, rule)
    definition = parent.field(name)
    if definition is None:
        raise RuleMismatch(f"{rule.render()}: no field {format_path(path)}")
    return definition


def _schema_slot(
    schema: m.Schema, root: str | None, path: tuple[str, ...], rule: RewriteRule
) -> tuple[m.FieldDef, Any, str]:
    """The field at ``path`` and where the type of its values is kept.

    That is ``(field, "type")``; trailing ``"*"`` segments (``("acts", "*")``) step
    into the item type of a list or the value type of a map.
    """
    stars = _trailing_stars(path)
    definition = _schema_field(schema, root, path[: len(path) - stars], rule)
    holder: Any = definition
    attr = "type"
    for i in range(len(path) - stars, len(path)):
        typedef = getattr(holder, attr)
        if isinstance(typedef, m.OptionOf):
            holder, attr, typedef = typedef, "inner", typedef.inner
        if isinstance(typedef, m.ListOf | m.VarTupleOf):
            holder, attr = typedef, "item"
        elif isinstance(typedef, m.DictOf):
            holder, attr = typedef, "value"
        else:
            raise RuleMismatch(
                f"{rule.render()}: {format_path(path[:i])} is not a list or map "
                f"({m.render_type(typedef)})"
            )
    return definition, holder, attr
