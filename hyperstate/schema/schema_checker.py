"""``SchemaChecker``: what changed since a schema file was written, and how to fix it.

>>> from dataclasses import dataclass
>>> from hyperstate.schema.model import schema_of_class
>>> @dataclass
... class Config:
...     lr: float = 0.1
>>> old = schema_of_class(Config)
>>> @dataclass
... class Config:
...     learning_rate: float = 0.1
>>> checker = SchemaChecker(old, Config)
>>> checker.severity()
<Severity.WARN: 1>
>>> print(checker.report())
WARN  field renamed to learning_rate: lr
WARN  Config changed but is not Versioned
Schema incompatible
<BLANKLINE>
Proposed mitigations
- inherit hyperstate.Versioned in Config, with version() returning 1
- add upgrade rules:
    0: [
        RenameField(old_field=('lr',), new_field=('learning_rate',)),
    ],
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from typing import Any

from hyperstate import typeinfo as t
from hyperstate.errors import format_int
from hyperstate.schema import model as m
from hyperstate.schema.rewrite_rule import (
    AddDefault,
    ChangeDefault,
    CheckValue,
    DeleteField,
    MapFieldValue,
    RenameField,
    RewriteRule,
    RuleMismatch,
)
from hyperstate.schema.schema_change import SchemaChange, Severity
from hyperstate.schema.upgrade import upgrade
from hyperstate.serde import from_value, plain
from hyperstate.typeinfo import StructType, struct_schema

__all__ = ["SchemaChecker"]

STAR = "*"


@dataclass
class _Owner:
    """The Versioned struct (or the root) that a change belongs to."""

    name: str
    old_version: int | None
    new_version: int | None
    changes: list[SchemaChange] = field(default_factory=list)


class SchemaChecker:
    """Compare an old schema (from :func:`~hyperstate.schema.types.load_schema`) with a class.

    The class's ``upgrade_rules`` are applied to the old schema first; changes that they
    handle are reported as ``INFO``. Rules that do not fit the old schema are ``ERROR`` s.

    Args:
        old: the schema file's content.
        config_clz: the current config class.
    """

    def __init__(self, old: m.Schema, config_clz: type) -> None:
        self.old = old
        self.config_clz = config_clz
        self.new = m.schema_of_class(config_clz)
        self.changes: list[SchemaChange] = []
        self._owners: dict[str, _Owner] = {}
        self._check()

    # -- public -------------------------------------------------------------------------

    def severity(self) -> Severity:
        """The highest severity of all changes (``INFO`` when nothing changed)."""
        return max((c.severity for c in self.changes), default=Severity.INFO)

    def report(self) -> str:
        """Every change, the verdict, and the proposed mitigations, as text."""
        lines = [str(c) for c in self.changes]
        compatible = self.severity() < Severity.WARN
        lines.append("Schema compatible" if compatible else "Schema incompatible")
        mitigations = self.mitigations()
        if mitigations:
            lines.append("")
            lines.append("Proposed mitigations")
            lines.extend(mitigations)
        return "\n".join(lines)

    def print_report(self) -> str:
        """Print :meth:`report`.

        Returns an empty string, so that ``print(checker.print_report())`` (as in the
        tests that earlier releases documented) prints the report once.
        """
        print(self.report())
        return ""

    def proposed_rules(self) -> dict[str, dict[int, list[RewriteRule]]]:
        """Rules to add, by struct name and then by the version they upgrade from."""
        result: dict[str, dict[int, list[RewriteRule]]] = {}
        for owner in self._owners.values():
            rules = [
                r for c in owner.changes if c.severity >= Severity.WARN for r in c.proposed_rules
            ]
            if rules:
                result.setdefault(owner.name, {})[self._rules_version(owner)] = rules
        return result

    def mitigations(self) -> list[str]:
        """The "Proposed mitigations" lines of the report."""
        lines: list[str] = []
        proposed = self.proposed_rules()
        for owner in self._owners.values():
            unhandled = [c for c in owner.changes if c.severity >= Severity.WARN]
            if not unhandled:
                continue
            if owner.new_version is None:
                lines.append(
                    f"- inherit hyperstate.Versioned in {owner.name}, with version() returning 1"
                )
            rules = proposed.get(owner.name)
            if rules:
                target = "" if owner.name == self.new.root else f" to {owner.name}"
                lines.append(f"- add upgrade rules{target}:")
                for version, version_rules in rules.items():
                    lines.append(f"    {format_int(version)}: [")
                    lines.extend(f"        {rule.render()}," for rule in version_rules)
                    lines.append("    ],")
            bump = self._bump(owner)
            if bump is not None and owner.new_version is not None:
                target = "" if owner.name == self.new.root else f" of {owner.name}"
                lines.append(f"- bump version{target} to {format_int(bump)}")
        errors = [c for c in self.changes if c.severity is Severity.ERROR and not c.proposed_rules]
        for change in errors:
            if change.kind == "rule_mismatch":
                lines.append(f"- fix the upgrade rule: {change.message}")
        return lines

    # -- the check ----------------------------------------------------------------------

    def _check(self) -> None:
        upgraded = self.old.copy()
        self._upgrade(upgraded, struct_schema(self.config_clz), upgraded.root_struct, set())
        types = _struct_types(struct_schema(self.config_clz))
        raw = _Diff(self.old, self.new, types)
        after = _Diff(upgraded, self.new, types)
        for name, (old_version, new_version) in after.versions.items():
            if old_version is not None and new_version is not None and old_version > new_version:
                self.changes.append(
                    SchemaChange(
                        Severity.ERROR,
                        "version_decreased",
                        f"version of {name} decreased from {format_int(old_version)} to "
                        f"{format_int(new_version)}: "
                        "the schema file was written by newer code",
                        owner=name,
                    )
                )
        remaining = {(c.kind, c.path) for c in after.changes}
        for change in raw.changes:
            if (change.kind, change.path) not in remaining:
                change.severity = Severity.INFO
                change.message += " (handled by upgrade rules)"
                change.proposed_rules = []
                self._add(change, raw)
        for change in after.changes:
            self._add(change, after)
        for owner in list(self._owners.values()):
            if any(c.severity >= Severity.WARN for c in owner.changes):
                if owner.new_version is None:
                    self.changes.append(
                        SchemaChange(
                            Severity.WARN,
                            "not_versioned",
                            f"{owner.name} changed but is not Versioned",
                            owner=owner.name,
                        )
                    )
                elif owner.old_version == owner.new_version:
                    self.changes.append(
                        SchemaChange(
                            Severity.WARN,
                            "version_identical",
                            "schema changed but version identical"
                            if owner.name == self.new.root
                            else f"schema of {owner.name} changed but version identical",
                            owner=owner.name,
                        )
                    )

    def _add(self, change: SchemaChange, diff: _Diff) -> None:
        self.changes.append(change)
        owner = self._owners.get(change.owner)
        if owner is None:
            old_version, new_version = diff.versions.get(change.owner, (None, None))
            owner = _Owner(change.owner, old_version, new_version)
            self._owners[change.owner] = owner
        owner.changes.append(change)

    def _upgrade(
        self, upgraded: m.Schema, node: StructType, old_def: m.StructDef, done: set[int]
    ) -> None:
        """Apply the rules of ``node`` to the old struct at the same place, then those of
        the structs in its fields: the order in which loading upgrades a file.

        Structs are matched by place, not by name: a rule may have moved fields into a
        new struct (``RenameField(("lr",), ("optimizer", "lr"))``) that a Versioned class
        then upgrades from its version 0.
        """
        if id(old_def) in done:
            return
        done.add(id(old_def))
        if node.version is not None:
            self._apply_rules(upgraded, node, old_def)
        for f in node.fields:
            old_field = old_def.field(f.name)
            if old_field is not None:
                for child, old_child in _struct_pairs(f.type, old_field.type, upgraded):
                    self._upgrade(upgraded, child, old_child, done)

    def _apply_rules(self, upgraded: m.Schema, node: StructType, old_def: m.StructDef) -> None:
        assert node.version is not None
        rules = node.cls.upgrade_rules()  # type: ignore[attr-defined]
        start = old_def.version or 0
        # The versions that have rules, not every one from the file's: that may be far
        # below zero in a damaged schema file.
        for version in sorted(v for v in rules if start <= v < node.version):
            for rule in rules[version]:
                try:
                    rule.apply_to_schema(upgraded, root=old_def.name)
                    _upgrade_defaults(old_def, rule)
                except (RuleMismatch, ValueError) as e:
                    self.changes.append(
                        SchemaChange(
                            Severity.ERROR,
                            "rule_mismatch",
                            f"upgrade rule for version {version} does not fit the old schema: {e}",
                            owner=node.name,
                        )
                    )

    def _rules_version(self, owner: _Owner) -> int:
        old = owner.old_version or 0
        new = owner.new_version or 0
        return old if new <= old else new - 1

    def _bump(self, owner: _Owner) -> int | None:
        old = owner.old_version or 0
        new = owner.new_version or 0
        return old + 1 if new <= old else None


def _holds_structs(typedef: m.TypeDef) -> bool:
    return bool(_struct_refs(typedef))


def _struct_refs(typedef: m.TypeDef) -> list[str]:
    """The names of the structs that values of ``typedef`` can hold at their top."""
    if isinstance(typedef, m.StructRef):
        return [typedef.name]
    if isinstance(typedef, m.OptionOf):
        return _struct_refs(typedef.inner)
    if isinstance(typedef, m.ListOf | m.VarTupleOf):
        return _struct_refs(typedef.item)
    if isinstance(typedef, m.DictOf):
        return _struct_refs(typedef.value)
    if isinstance(typedef, m.TupleOf):
        return [n for i in typedef.items for n in _struct_refs(i)]
    if isinstance(typedef, m.UnionOf):
        return [n for o in typedef.options for n in _struct_refs(o)]
    return []


def _struct_pairs(
    new: t.SchemaType, old: m.TypeDef, schema: m.Schema
) -> list[tuple[StructType, m.StructDef]]:
    """The current structs in a field's type, each with the old struct at its place."""
    news = _structs_in(new)
    olds = [d for d in (schema.struct(n) for n in _struct_refs(old)) if d is not None]
    if len(news) == 1 and len(olds) == 1:
        return [(news[0], olds[0])]
    by_name = {d.name: d for d in olds}  # a Union: its options are chosen by name
    return [(n, by_name[n.name]) for n in news if n.name in by_name]


def _upgrade_defaults(struct: m.StructDef, rule: RewriteRule) -> None:
    """Apply ``rule`` to the defaults of ``struct``'s fields, as it would to a file.

    A default that holds structs (``layers = [Layer(width=64)]``) must see the same
    renames as files do, or every such rename would also show as a changed default.
    """
    own = None
    if isinstance(rule, MapFieldValue):
        # The default of the field it names is mapped by apply_to_schema already.
        path = (rule.field,) if isinstance(rule.field, str) else tuple(rule.field)
        own = path[0] if all(seg == STAR for seg in path[1:]) else None
    tree = {f.name: f.default for f in struct.fields if f.has_default and f.name != own}
    rule.apply(tree)
    for f in struct.fields:
        if f.has_default and f.name in tree:
            f.default = plain(tree[f.name])


def _struct_types(root: StructType) -> dict[str, StructType]:
    """Every struct reachable from ``root``, by name."""
    found: dict[str, StructType] = {}
    stack = [root]
    while stack:
        node = stack.pop()
        if node.name not in found:
            found[node.name] = node
            stack.extend(s for f in node.fields for s in _structs_in(f.type))
    return found


def _structs_in(node: object) -> list[StructType]:
    if isinstance(node, t.StructType):
        return [node]
    if isinstance(node, t.OptionType):
        return _structs_in(node.inner)
    if isinstance(node, t.ListType | t.VarTupleType):
        return _structs_in(node.item)
    if isinstance(node, t.TupleType):
        return [s for i in node.items for s in _structs_in(i)]
    if isinstance(node, t.DictType):
        return _structs_in(node.value)
    if isinstance(node, t.UnionType):
        return [s for o in node.options for s in _structs_in(o)]
    return []


class _Diff:
    """Walks an old and a new schema side by side from their roots."""

    def __init__(self, old: m.Schema, new: m.Schema, types: dict[str, StructType]) -> None:
        self.old = old
        self.new = new
        self._types = types
        self._struct_of = {id(f): s.name for s in new.structs for f in s.fields}
        self.changes: list[SchemaChange] = []
        self.versions: dict[str, tuple[int | None, int | None]] = {}
        self._seen: set[tuple[str, str, tuple[str, ...]]] = set()
        self._deferred: list[tuple[m.FieldDef, m.FieldDef, tuple[str, ...], tuple[str, ...], str]]
        self._deferred = []
        root_new = new.root_struct
        self.versions[root_new.name] = (old.root_struct.version, root_new.version)
        self._struct(old.root_struct, root_new, (), (), root_new.name)
        for deferred in self._deferred:
            self._default(*deferred)

    def _emit(
        self,
        severity: Severity,
        kind: str,
        message: str,
        path: tuple[str, ...],
        owner: str,
        rules: list[RewriteRule] | None = None,
    ) -> None:
        self.changes.append(
            SchemaChange(severity, kind, message, _display(path), owner, rules or [])
        )

    def _struct(
        self,
        old: m.StructDef,
        new: m.StructDef,
        path: tuple[str, ...],
        rel: tuple[str, ...],
        owner: str,
    ) -> None:
        key = (old.name, new.name, rel)
        if key in self._seen:
            return
        self._seen.add(key)
        if new.version is not None and path:
            owner, rel = new.name, ()
            self.versions[new.name] = (old.version, new.version)
        old_fields = {f.name: f for f in old.fields}
        new_fields = {f.name: f for f in new.fields}
        removed = [f for f in old.fields if f.name not in new_fields]
        added = [f for f in new.fields if f.name not in old_fields]
        for before, after in _renames(removed, added):
            removed.remove(before)
            added.remove(after)
            self._emit(
                Severity.WARN,
                "field_renamed",
                f"field renamed to {_display((*path, after.name))}: "
                f"{_display((*path, before.name))}",
                (*path, after.name),
                owner,
                [RenameField(old_field=(*rel, before.name), new_field=(*rel, after.name))],
            )
            self._field(before, after, (*path, after.name), (*rel, after.name), owner)
        for f in removed:
            self._emit(
                Severity.WARN,
                "field_removed",
                f"field removed: {_display((*path, f.name))}",
                (*path, f.name),
                owner,
                [DeleteField(field=(*rel, f.name))],
            )
        for f in added:
            where = _display((*path, f.name))
            if f.has_default:
                self._emit(
                    Severity.INFO, "field_added", f"field added: {where}", (*path, f.name), owner
                )
            elif isinstance(f.type, m.OptionOf):
                self._emit(
                    Severity.WARN,
                    "field_added",
                    f"field added without default: {where}",
                    (*path, f.name),
                    owner,
                    [AddDefault(field=(*rel, f.name), default=None)],
                )
            else:
                self._emit(
                    Severity.ERROR,
                    "field_added",
                    f"required field added without default: {where} (give it a default, or "
                    f"add AddDefault(field={(*rel, f.name)!r}, default=...))",
                    (*path, f.name),
                    owner,
                )
        for f in old.fields:
            if f.name in new_fields:
                self._field(f, new_fields[f.name], (*path, f.name), (*rel, f.name), owner)

    def _field(
        self,
        old: m.FieldDef,
        new: m.FieldDef,
        path: tuple[str, ...],
        rel: tuple[str, ...],
        owner: str,
    ) -> None:
        where = _display(path)
        if old.has_default and new.has_default and old.default != new.default:
            if STAR not in rel and _holds_structs(old.type):
                # Compared once the renames inside the structs are known (see _default).
                self._deferred.append((old, new, path, rel, owner))
            else:
                self._default(old, new, path, rel, owner)
        elif old.has_default and not new.has_default:
            self._emit(
                Severity.WARN,
                "default_removed",
                f"default removed for {where} (was {old.default!r})",
                path,
                owner,
                [AddDefault(field=rel, default=old.default)],
            )
        self._type(old.type, new.type, path, rel, owner)

    def _default(
        self,
        old: m.FieldDef,
        new: m.FieldDef,
        path: tuple[str, ...],
        rel: tuple[str, ...],
        owner: str,
    ) -> None:
        old_default = old.default
        if _holds_structs(old.type):
            # Put the old default through the renames and deletions proposed for the
            # structs it holds: `[Layer(width=64)]` -> `[Layer(size=64)]` is no change.
            tree: dict[str, Any] = {}
            cursor = tree
            for seg in rel[:-1]:
                cursor = cursor.setdefault(seg, {})
            cursor[rel[-1]] = copy.deepcopy(old.default)
            for change in self.changes:
                for rule in change.proposed_rules:
                    if change.owner == owner and isinstance(rule, RenameField | DeleteField):
                        rule.apply(tree)
            for seg in rel:
                tree = tree.get(seg, {}) if isinstance(tree, dict) else {}
            old_default = plain(tree)
        old_default = _renamed_variants(old_default, old.type, new.type)
        if old_default == new.default or self._loads_same(old_default, new):
            return
        self._emit(
            Severity.WARN,
            "default_changed",
            f"default changed for {_display(path)}: {old_default!r} -> {new.default!r}",
            path,
            owner,
            [ChangeDefault(field=rel, old_default=old_default, new_default=new.default)],
        )

    def _loads_same(self, old_default: Any, new: m.FieldDef) -> bool:
        """Whether a struct-holding old default, upgraded and loaded by the current
        classes, equals the new default (its structs may have gained fields with
        defaults, or a Versioned one a new version)."""
        struct = self._types.get(self._struct_of.get(id(new), ""))
        if not _holds_structs(new.type) or struct is None or new.name not in struct.field_map:
            return False
        node = struct.field_map[new.name].type
        try:
            old_value = from_value(node, upgrade(node, copy.deepcopy(old_default)))
            return bool(old_value == from_value(node, new.default))
        except Exception:  # the old default does not load (or a user's rule fails on it)
            return False

    def _type(
        self,
        old: m.TypeDef,
        new: m.TypeDef,
        path: tuple[str, ...],
        rel: tuple[str, ...],
        owner: str,
    ) -> None:
        where = _display(path)
        old_text, new_text = m.render_type(old), m.render_type(new)
        if isinstance(old, m.Converted):
            return  # an upgrade rule converts the old values: trusted to fit
        if isinstance(old, m.StructRef) and isinstance(new, m.StructRef):
            old_def, new_def = self.old.struct(old.name), self.new.struct(new.name)
            if old_def is not None and new_def is not None:
                self._struct(old_def, new_def, path, rel, owner)
            return
        if isinstance(old, m.EnumDef) and isinstance(new, m.EnumDef):
            self._enum(old, new, path, rel, owner)
            return
        if isinstance(old, m.LiteralOf) and isinstance(new, m.LiteralOf):
            self._literal(old, new, path, owner)
            return
        if type(old) is type(new) and isinstance(old, m.OptionOf | m.ListOf | m.VarTupleOf):
            star = () if isinstance(old, m.OptionOf) else (STAR,)
            old_inner = old.inner if isinstance(old, m.OptionOf) else old.item
            new_inner = new.inner if isinstance(new, m.OptionOf) else new.item  # type: ignore[union-attr]
            self._type(old_inner, new_inner, (*path, *star), (*rel, *star), owner)
            return
        if isinstance(old, m.DictOf) and isinstance(new, m.DictOf):
            if m.render_type(old.key) != m.render_type(new.key):
                self._changed(old_text, new_text, path, owner)
            self._type(old.value, new.value, (*path, STAR), (*rel, STAR), owner)
            return
        if isinstance(old, m.TupleOf) and isinstance(new, m.TupleOf):
            if len(old.items) != len(new.items):
                self._changed(old_text, new_text, path, owner)
                return
            for i, (a, b) in enumerate(zip(old.items, new.items, strict=True)):
                self._type(a, b, (*path, str(i)), rel, owner)
            return
        if isinstance(old, m.UnionOf) and isinstance(new, m.UnionOf):
            self._union(old, new, path, rel, owner)
            return
        if old_text == new_text:
            return
        made_optional = isinstance(new, m.OptionOf) and m.render_type(new.inner) == old_text
        if isinstance(new, m.AnyValue) or _widens(old, new) or made_optional:
            self._emit(
                Severity.INFO,
                "type_widened",
                f"type widened from {old_text} to {new_text}: {where}",
                path,
                owner,
            )
        elif isinstance(old, m.OptionOf) and m.render_type(old.inner) == new_text:
            self._emit(
                Severity.WARN,
                "type_changed",
                f"type narrowed from {old_text} to {new_text}: {where} (old files may hold None)",
                path,
                owner,
            )
        elif _is_str(old) and isinstance(_unopt(new), m.LiteralOf):
            literal = _unopt(new)
            assert isinstance(literal, m.LiteralOf)
            self._emit(
                Severity.WARN,
                "type_changed",
                f"type changed from {old_text} to {new_text}: {where}",
                path,
                owner,
                [CheckValue(field=rel, allowed_values=set(literal.values))],
            )
        else:
            self._changed(old_text, new_text, path, owner)

    def _changed(self, old_text: str, new_text: str, path: tuple[str, ...], owner: str) -> None:
        self._emit(
            Severity.ERROR,
            "type_changed",
            f"type changed from {old_text} to {new_text}: {_display(path)} (convert old values "
            "with MapFieldValue)",
            path,
            owner,
        )

    def _enum(
        self,
        old: m.EnumDef,
        new: m.EnumDef,
        path: tuple[str, ...],
        rel: tuple[str, ...],
        owner: str,
    ) -> None:
        where = _display(path)
        old_by_name = {v.name: v for v in old.variants}
        new_by_name = {v.name: v for v in new.variants}
        renames = _variant_renames(old, new)
        removed = [v for v in old.variants if v.name not in new_by_name and v.name not in renames]
        renamed_to = set(renames.values())
        added = [v for v in new.variants if v.name not in old_by_name and v.name not in renamed_to]
        if renames:
            rendered = f"lambda v: {renames!r}.get(v, v)"
            self._emit(
                Severity.WARN,
                "enum_variant_renamed",
                f"enum variant renamed in {where}: "
                + ", ".join(f"{a} -> {b}" for a, b in renames.items()),
                path,
                owner,
                [MapFieldValue(field=rel, map_fn=_Renamer(renames), rendered=rendered)],
            )
        for v in removed:
            self._emit(
                Severity.WARN,
                "enum_variant_removed",
                f"enum variant removed from {where}: {v.name}",
                path,
                owner,
            )
        for v in added:
            self._emit(
                Severity.INFO,
                "enum_variant_added",
                f"enum variant added to {where}: {v.name}",
                path,
                owner,
            )
        for name, v in old_by_name.items():
            if name in new_by_name and new_by_name[name].value != v.value:
                self._emit(
                    Severity.WARN,
                    "enum_value_changed",
                    f"enum value of {name} changed in {where}: {v.value!r} -> "
                    f"{new_by_name[name].value!r} (files that hold the value, not the name)",
                    path,
                    owner,
                )

    def _literal(
        self, old: m.LiteralOf, new: m.LiteralOf, path: tuple[str, ...], owner: str
    ) -> None:
        where = _display(path)
        removed = [v for v in old.values if v not in new.values]
        added = [v for v in new.values if v not in old.values]
        if removed:
            self._emit(
                Severity.WARN,
                "literal_values_removed",
                f"literal values removed from {where}: {', '.join(map(repr, removed))}",
                path,
                owner,
            )
        if added:
            self._emit(
                Severity.INFO,
                "literal_values_added",
                f"literal values added to {where}: {', '.join(map(repr, added))}",
                path,
                owner,
            )

    def _union(
        self,
        old: m.UnionOf,
        new: m.UnionOf,
        path: tuple[str, ...],
        rel: tuple[str, ...],
        owner: str,
    ) -> None:
        where = _display(path)
        old_opts = {m.render_type(o): o for o in old.options}
        new_opts = {m.render_type(o): o for o in new.options}
        for name, option in old_opts.items():
            if name in new_opts:
                self._type(option, new_opts[name], path, rel, owner)
            else:
                self._emit(
                    Severity.WARN,
                    "union_option_removed",
                    f"union option removed from {where}: {name}",
                    path,
                    owner,
                )
        for name in new_opts:
            if name not in old_opts:
                self._emit(
                    Severity.INFO,
                    "union_option_added",
                    f"union option added to {where}: {name}",
                    path,
                    owner,
                )


def _variant_renames(old: m.EnumDef, new: m.EnumDef) -> dict[str, str]:
    """Variants gone by name whose value lives on, alone, under a new name."""
    old_names = {v.name for v in old.variants}
    new_names = {v.name for v in new.variants}
    added = [v for v in new.variants if v.name not in old_names]
    renames: dict[str, str] = {}
    for v in old.variants:
        if v.name in new_names:
            continue
        match = [a for a in added if a.value == v.value]
        if len(match) == 1:
            renames[v.name] = match[0].name
            added.remove(match[0])
    return renames


def _renamed_variants(value: Any, old: m.TypeDef, new: m.TypeDef) -> Any:
    """An old default with its enum variants renamed as ``_variant_renames`` detects."""
    old, new = _unopt(old), _unopt(new)
    if isinstance(old, m.EnumDef) and isinstance(new, m.EnumDef) and isinstance(value, str):
        return _variant_renames(old, new).get(value, value)
    seq = m.ListOf | m.VarTupleOf
    if isinstance(old, seq) and isinstance(new, seq) and isinstance(value, list | tuple):
        return type(value)(_renamed_variants(v, old.item, new.item) for v in value)
    if isinstance(old, m.DictOf) and isinstance(new, m.DictOf) and isinstance(value, dict):
        return {k: _renamed_variants(v, old.value, new.value) for k, v in value.items()}
    return value


class _Renamer:
    """A picklable-free, printable map_fn for proposed enum renames."""

    def __init__(self, renames: dict[str, str]) -> None:
        self.renames = renames

    def __call__(self, value: object) -> object:
        return self.renames.get(value, value) if isinstance(value, str) else value

    def __repr__(self) -> str:
        return f"lambda v: {self.renames!r}.get(v, v)"


def _renames(
    removed: list[m.FieldDef], added: list[m.FieldDef]
) -> list[tuple[m.FieldDef, m.FieldDef]]:
    """Pairs (removed, added) that look like one field renamed: same type, similar name."""
    pairs = []
    candidates = list(added)
    for before in removed:
        same_type = [a for a in candidates if m.render_type(a.type) == m.render_type(before.type)]
        if not same_type:
            continue

        def score(a: m.FieldDef, before: m.FieldDef = before) -> tuple[bool, float]:
            same_default = a.has_default == before.has_default and a.default == before.default
            return same_default, difflib.SequenceMatcher(None, before.name, a.name).ratio()

        best = max(same_type, key=score)
        same_default, similarity = score(best)
        if len(same_type) == 1 or same_default or similarity >= 0.5:
            pairs.append((before, best))
            candidates.remove(best)
    return pairs


def _display(path: tuple[str, ...]) -> str:
    out = ""
    for seg in path:
        if seg == STAR:
            out += "[*]"
        elif seg.isdigit():
            out += f"[{seg}]"
        else:
            out += f".{seg}" if out else seg
    return out


def _unopt(typedef: m.TypeDef) -> m.TypeDef:
    return typedef.inner if isinstance(typedef, m.OptionOf) else typedef


def _is_str(typedef: m.TypeDef) -> bool:
    return isinstance(_unopt(typedef), m.Primitive) and _unopt(typedef).name == "str"  # type: ignore[union-attr]


def _widens(old: m.TypeDef, new: m.TypeDef) -> bool:
    if isinstance(old, m.Primitive) and isinstance(new, m.Primitive):
        return (old.name, new.name) in {("int", "float"), ("str", "Path")}
    if isinstance(old, m.LiteralOf):
        return all(_fits(v, new) for v in old.values)
    return bool(isinstance(old, m.EnumDef) and _is_str(new))


def _fits(value: Any, typedef: m.TypeDef) -> bool:
    """Whether a plain value (a literal or default of the old schema) loads as ``typedef``."""
    if isinstance(typedef, m.AnyValue):
        return True
    if isinstance(typedef, m.OptionOf):
        return value is None or _fits(value, typedef.inner)
    if isinstance(typedef, m.Primitive):
        kinds = {"int": (int,), "float": (int, float), "bool": (bool,), "bytes": (bytes,)}
        return type(value) in kinds.get(typedef.name, (str,))
    if isinstance(typedef, m.LiteralOf):
        return any(type(value) is type(v) and value == v for v in typedef.values)
    if isinstance(typedef, m.EnumDef):
        return any(value == v.name for v in typedef.variants)
    if isinstance(typedef, m.ListOf | m.VarTupleOf):
        return isinstance(value, list | tuple) and all(_fits(v, typedef.item) for v in value)
    if isinstance(typedef, m.TupleOf):
        return (
            isinstance(value, list | tuple)
            and len(value) == len(typedef.items)
            and all(_fits(v, i) for v, i in zip(value, typedef.items, strict=True))
        )
    if isinstance(typedef, m.DictOf):
        return isinstance(value, dict) and all(_fits(v, typedef.value) for v in value.values())
    if isinstance(typedef, m.UnionOf):
        return any(_fits(value, o) for o in typedef.options)
    return isinstance(value, dict)  # a struct, as plain values hold it
