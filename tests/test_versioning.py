"""Versioned configs: the version on disk, upgrades on load, and every rewrite rule.

The chain in ``tests/schema_versions`` (v0 -> v1 -> v2 -> v3) is a config class as it
evolves in a user's project: fields move into a nested versioned struct, fields inside
lists and maps of structs are renamed, an enum variant is renamed, a ``str`` becomes a
``Literal``, defaults change, a field is removed. Files written at every version must
load with the newest code.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import pytest
from schema_versions import v0, v1, v2, v3

import hyperstate
from hyperstate import ConfigError, Versioned, ron
from hyperstate.ron import Ident, Some, Struct
from hyperstate.schema import model as m
from hyperstate.schema.model import schema_of_class
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
from hyperstate.serde import from_value, plain

# ---------------------------------------------------------------------------------------
# The version on disk

V0_TEXT = """\
// written by version 0, which had no `version` field yet
Config(
    lr: 0.01,
    layers: [Layer(size: 8), Layer(size: 16, act: TANH)],
    heads: {"out": Layer(size: 2, act: RELU)},
    dropout_percent: 25.0,
    seed: 7,
)
"""

V0_UPGRADED = v3.Config(
    optimizer=v3.Optimizer(learning_rate=0.01, momentum=0.9),
    layers=[v3.Layer(8, v3.Activation.ReLU), v3.Layer(16, v3.Activation.TANH)],
    heads={"out": v3.Layer(2, v3.Activation.ReLU)},
    mode="train",
    warmup=100,  # version 0 files relied on the old default, 100
    dropout=0.25,
)


def test_public_import_paths() -> None:
    import hyperstate.schema.rewrite_rule as rules
    from hyperstate.schema.schema_change import Severity
    from hyperstate.schema.schema_checker import SchemaChecker
    from hyperstate.schema.types import load_schema

    assert "Versioned" in hyperstate.__all__
    assert hyperstate.Versioned is Versioned
    for name in (
        "RewriteRule",
        "RenameField",
        "DeleteField",
        "MapFieldValue",
        "ChangeDefault",
        "AddDefault",
        "CheckValue",
    ):
        assert name in rules.__all__
        assert issubclass(getattr(rules, name), RewriteRule)
    assert Severity.INFO < Severity.WARN < Severity.ERROR
    assert callable(SchemaChecker) and callable(load_schema)


def test_versioned_in_a_module_that_does_not_import_classvar() -> None:
    # Resolving Config's annotations also resolves those of the Versioned base, in
    # Config's module; it once failed with "name 'ClassVar' is not defined".
    assert "ClassVar" not in vars(v0)
    assert hyperstate.loads(v0.Config, "Config(lr: 0.5)").lr == 0.5


def test_dump_writes_version_first_and_nested_versions() -> None:
    text = hyperstate.dumps(
        v3.Config(optimizer=v3.Optimizer(learning_rate=0.1, momentum=0.8), mode="eval")
    )
    assert text == (
        "Config(\n"
        "    version: 3,\n"
        "    optimizer: Optimizer(\n"
        "        version: 1,\n"
        "        learning_rate: 0.1,\n"
        "        momentum: 0.8,\n"
        "    ),\n"
        "    layers: [],\n"
        "    heads: {},\n"
        '    mode: "eval",\n'
        "    warmup: 500,\n"
        "    dropout: 0.1,\n"
        ")"
    )
    assert hyperstate.dumps(v0.Config(lr=0.1)).startswith("Config(\n    version: 0,\n    lr: 0.1,")
    # The version is written even when defaults are left out.
    elided = hyperstate.dumps(v0.Config(lr=0.1), elide_defaults=True)
    assert elided == "Config(\n    version: 0,\n    lr: 0.1,\n)"


def test_v0_file_loads_through_three_upgrades() -> None:
    assert hyperstate.loads(v3.Config, V0_TEXT) == V0_UPGRADED


def test_v0_file_upgraded_text() -> None:
    assert hyperstate.dumps(hyperstate.loads(v3.Config, V0_TEXT)) == (
        "Config(\n"
        "    version: 3,\n"
        "    optimizer: Optimizer(\n"
        "        version: 1,\n"
        "        learning_rate: 0.01,\n"
        "        momentum: 0.9,\n"
        "    ),\n"
        "    layers: [\n"
        "        Layer(\n"
        "            width: 8,\n"
        "            act: ReLU,\n"
        "        ),\n"
        "        Layer(\n"
        "            width: 16,\n"
        "            act: TANH,\n"
        "        ),\n"
        "    ],\n"
        "    heads: {\n"
        '        "out": Layer(\n'
        "            width: 2,\n"
        "            act: ReLU,\n"
        "        ),\n"
        "    },\n"
        '    mode: "train",\n'
        "    warmup: 100,\n"
        "    dropout: 0.25,\n"
        ")"
    )


def test_explicit_version_zero_is_the_same_as_none() -> None:
    text = V0_TEXT.replace("Config(\n", "Config(\n    version: 0,\n")
    assert hyperstate.loads(v3.Config, text) == V0_UPGRADED


def test_each_intermediate_version_upgrades_step_by_step() -> None:
    as_v1 = hyperstate.loads(v1.Config, V0_TEXT)
    assert as_v1.optimizer == v1.Optimizer(lr=0.01)
    assert [layer.width for layer in as_v1.layers] == [8, 16]
    assert as_v1.heads["out"].width == 2
    assert as_v1.layers[0].act is v1.Activation.RELU
    assert (as_v1.mode, as_v1.warmup, as_v1.dropout_percent, as_v1.seed) == ("train", 100, 25.0, 7)

    as_v2 = hyperstate.loads(v2.Config, V0_TEXT)
    assert [layer.act for layer in as_v2.layers] == [v2.Activation.ReLU, v2.Activation.TANH]
    assert as_v2.heads["out"].act is v2.Activation.ReLU
    assert (as_v2.mode, as_v2.warmup) == ("train", 100)


@pytest.mark.parametrize("module", [v0, v1, v2], ids=lambda mod: mod.__name__)
def test_files_written_at_every_version_load_in_v3(module: Any) -> None:
    # Round trip: load the v0 file with that version's code, write it, load with v3.
    written = hyperstate.dumps(hyperstate.loads(module.Config, V0_TEXT))
    assert hyperstate.loads(v3.Config, written) == V0_UPGRADED


def test_rules_run_in_version_order_and_only_from_the_files_version() -> None:
    # A v2 file has `dropout_percent` and `seed` but none of the older shapes: only the
    # version 2 rules apply. The percentage is divided by 100 exactly once.
    text = hyperstate.dumps(v2.Config(optimizer=v2.Optimizer(lr=0.3), dropout_percent=50.0))
    loaded = hyperstate.loads(v3.Config, text)
    assert loaded.dropout == 0.5
    assert loaded.optimizer == v3.Optimizer(learning_rate=0.3, momentum=0.9)
    assert loaded.warmup == 500  # written explicitly by version 2


def test_nested_versioned_struct_upgrades_on_its_own() -> None:
    # Config is current, its optimizer was written at Optimizer version 0.
    text = 'Config(version: 3, optimizer: Optimizer(version: 0, lr: 0.2), mode: "test")'
    loaded = hyperstate.loads(v3.Config, text)
    assert loaded.optimizer == v3.Optimizer(learning_rate=0.2, momentum=0.9)
    assert loaded.mode == "test"


def test_overrides_use_new_names_and_apply_after_the_upgrade() -> None:
    loaded = hyperstate.loads(
        v3.Config,
        V0_TEXT,
        overrides=["optimizer.learning_rate=0.5", "layers[1].width=32", "dropout=0.3"],
    )
    assert loaded.optimizer.learning_rate == 0.5
    assert loaded.layers[1].width == 32
    assert loaded.dropout == 0.3  # not divided by 100: overrides are current values


def test_override_with_an_old_name_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        hyperstate.loads(v3.Config, V0_TEXT, overrides=["optimizer.lr=0.5"])
    assert str(info.value) == (
        "unknown field 'lr' in Optimizer at optimizer.lr (from override 'optimizer.lr=0.5'); "
        "fields: learning_rate, momentum"
    )


def test_config_built_from_defaults_is_current() -> None:
    # No file: nothing to upgrade. ChangeDefault must not bring back the old default.
    config = hyperstate.load(
        v3.Config, overrides=["optimizer.learning_rate=0.1", "optimizer.momentum=0.5"]
    )
    assert config.warmup == 500
    assert config.optimizer == v3.Optimizer(learning_rate=0.1, momentum=0.5)


def test_load_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "config.ron"
    path.write_text(V0_TEXT)
    assert hyperstate.load(v3.Config, path) == V0_UPGRADED
    assert path.read_text() == V0_TEXT  # loading never rewrites the file


def test_file_newer_than_the_code_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        hyperstate.loads(
            v2.Config, "Config(\n    version: 3,\n    optimizer: Optimizer(lr: 1.0),\n)"
        )
    assert str(info.value) == (
        "<string>:2:14: Config version 3 was written by newer code; this code knows "
        "versions up to 2, and never downgrades at version"
    )


def test_nested_struct_newer_than_the_code_is_an_error() -> None:
    text = "Config(version: 3, optimizer: Optimizer(version: 2, learning_rate: 1.0))"
    with pytest.raises(ConfigError) as info:
        hyperstate.loads(v3.Config, text)
    assert str(info.value) == (
        "<string>:1:50: Optimizer version 2 was written by newer code; this code knows "
        "versions up to 1, and never downgrades at optimizer.version"
    )


def test_version_must_be_an_int() -> None:
    with pytest.raises(ConfigError) as info:
        hyperstate.loads(v3.Config, 'Config(version: "3")')
    assert str(info.value) == '<string>:1:17: expected int, found "3" at version'


def test_check_value_rejects_old_value_outside_the_literal() -> None:
    with pytest.raises(ConfigError) as info:
        hyperstate.loads(v3.Config, 'Config(lr: 0.1, mode: "bogus")')
    assert str(info.value) == (
        "upgrading Config from version 1: <string>:1:23: value 'bogus' is no longer "
        "allowed; allowed values: 'eval', 'train' at mode"
    )


def test_change_default_keeps_explicit_values() -> None:
    assert hyperstate.loads(v3.Config, "Config(lr: 0.1, warmup: 7)").warmup == 7
    assert hyperstate.loads(v3.Config, "Config(lr: 0.1)").warmup == 100
    current = "Config(version: 3, optimizer: Optimizer(learning_rate: 0.1, momentum: 0.0))"
    assert hyperstate.loads(v3.Config, current).warmup == 500


def test_from_value_without_upgrade_names_the_version() -> None:
    # The typed conversion alone does not upgrade; it says how to load instead.
    with pytest.raises(ConfigError) as info:
        from_value(v1.Config, ron.loads("Config(version: 0, optimizer: Optimizer(lr: 1.0))"))
    assert str(info.value) == (
        "Config is at version 1, found version 0 at version; load it with "
        "hyperstate.load/loads, which upgrades old versions"
    )


@dataclass
class Newer(Versioned):
    x: int = 0

    @classmethod
    def version(cls) -> int:
        return 3

    @classmethod
    def minimum_version(cls) -> int:
        return 2


def test_file_older_than_minimum_version_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        hyperstate.loads(Newer, "Newer(version: 1)")
    assert str(info.value) == (
        "<string>:1:16: Newer version 1 is older than the oldest version this code can "
        "upgrade (2) at version"
    )
    assert hyperstate.loads(Newer, "Newer(version: 2, x: 4)") == Newer(4)


@dataclass
class BadKeys(Versioned):
    x: int = 0

    @classmethod
    def version(cls) -> int:
        return 1

    @classmethod
    def upgrade_rules(cls) -> Dict[int, List[RewriteRule]]:
        return {1: [DeleteField(field=("y",))]}


def test_upgrade_rules_keyed_by_a_wrong_version_fail_loudly() -> None:
    message = (
        "BadKeys.upgrade_rules() has keys [1]; keys are the versions that rules upgrade "
        "from, 0 <= key < version() = 1"
    )
    with pytest.raises(TypeError, match=re.escape(message)):
        hyperstate.loads(BadKeys, "BadKeys(x: 1)")


class AtVersionZero(Versioned):
    @classmethod
    def version(cls) -> int:
        return 0


@dataclass
class HasVersionField(AtVersionZero):
    version: int  # type: ignore[assignment]


@dataclass
class NoVersion(Versioned):
    x: int = 0


def test_bad_versioned_classes_fail_when_first_used() -> None:
    message = (
        "HasVersionField is Versioned and so cannot have a field named 'version' (the "
        "version is written in its place)"
    )
    with pytest.raises(TypeError, match=re.escape(message)):
        hyperstate.loads(HasVersionField, "HasVersionField(version: 1)")
    with pytest.raises(NotImplementedError, match=r"NoVersion.version\(\) is not implemented"):
        hyperstate.dumps(NoVersion())


@dataclass
class Leaf(Versioned):
    x: int

    @classmethod
    def version(cls) -> int:
        return 1

    @classmethod
    def upgrade_rules(cls) -> Dict[int, List[RewriteRule]]:
        return {0: [RenameField(old_field=("y",), new_field=("x",))]}


@dataclass
class Tree:
    children: List[Tree]  # before `leaf`: the search for Versioned structs recurses first
    leaf: Leaf


@dataclass
class Holder:
    one: Union[Leaf, int]
    by_name: Dict[str, Leaf]


def test_versioned_structs_inside_recursive_classes_upgrade() -> None:
    text = "Tree(leaf: Leaf(y: 1), children: [Tree(leaf: Leaf(y: 2), children: [])])"
    assert hyperstate.loads(Tree, text) == Tree([Tree([], Leaf(2))], Leaf(1))


def test_versioned_structs_in_unions_and_struct_written_maps_upgrade() -> None:
    # The same spellings that the typed conversion accepts: an unnamed struct for the
    # only struct of a Union, `(a: ...)` for a str-keyed map.
    loaded = hyperstate.loads(Holder, "Holder(one: (y: 3), by_name: (a: Leaf(y: 4)))")
    assert loaded == Holder(Leaf(3), {"a": Leaf(4)})
    assert hyperstate.loads(Holder, "Holder(one: 5, by_name: {})") == Holder(5, {})


def test_a_rule_that_fails_on_a_value_is_a_config_error() -> None:
    text = 'Config(version: 2, optimizer: Optimizer(lr: 1.0), dropout_percent: "ten")'
    with pytest.raises(ConfigError) as info:
        hyperstate.loads(v3.Config, text)
    assert str(info.value) == (
        "upgrading Config from version 2: <string>:1:1: MapFieldValue(field=('dropout',), "
        "map_fn=lambda v: ...) failed: TypeError: unsupported operand type(s) for /: 'str' "
        "and 'int'"
    )


# ---------------------------------------------------------------------------------------
# Rules on value trees


def tree(text: str) -> Struct:
    value = ron.loads(text)
    assert isinstance(value, Struct)
    return value


def test_rename_field() -> None:
    rule = RenameField(old_field=("lr",), new_field=("learning_rate",))
    assert plain(rule.apply(tree("C(lr: 0.1, b: 2)"))) == {"b": 2, "learning_rate": 0.1}
    assert plain(rule.apply(tree("C(b: 2)"))) == {"b": 2}  # absent: nothing to do


def test_rename_field_into_and_out_of_nested_structs() -> None:
    into = RenameField(old_field=("lr",), new_field=("optimizer", "lr"))
    assert plain(into.apply(tree("C(lr: 0.1)"))) == {"optimizer": {"lr": 0.1}}
    assert plain(into.apply(tree("C(lr: 0.1, optimizer: O(beta: 0.9))"))) == {
        "optimizer": {"beta": 0.9, "lr": 0.1}
    }
    out = RenameField(old_field=("optimizer", "lr"), new_field=("lr",))
    assert plain(out.apply(tree("C(optimizer: O(lr: 0.2, beta: 0.9))"))) == {
        "optimizer": {"beta": 0.9},
        "lr": 0.2,
    }
    across = RenameField(old_field=("a", "x"), new_field=("b", "c", "y"))
    assert plain(across.apply(tree("C(a: (x: 1), b: (z: 2))"))) == {
        "a": {},
        "b": {"z": 2, "c": {"y": 1}},
    }


def test_rename_field_through_lists_and_maps() -> None:
    in_list = RenameField(old_field=("layers", "*", "size"), new_field=("layers", "*", "width"))
    assert plain(in_list.apply(tree("C(layers: [L(size: 1), L(size: 2, act: RELU), L()])"))) == {
        "layers": [{"width": 1}, {"act": "RELU", "width": 2}, {}]
    }
    in_map = RenameField(old_field=("heads", "*", "size"), new_field=("heads", "*", "width"))
    assert plain(in_map.apply(tree('C(heads: {"a": L(size: 1), "b": L(size: 3)})'))) == {
        "heads": {"a": {"width": 1}, "b": {"width": 3}}
    }
    nested = RenameField(
        old_field=("blocks", "*", "layers", "*", "size"),
        new_field=("blocks", "*", "layers", "*", "width"),
    )
    assert plain(nested.apply(tree("C(blocks: [B(layers: [L(size: 1)]), B(layers: [])])"))) == {
        "blocks": [{"layers": [{"width": 1}]}, {"layers": []}]
    }
    into_item_struct = RenameField(
        old_field=("layers", "*", "lr"), new_field=("layers", "*", "opt", "lr")
    )
    assert plain(into_item_struct.apply(tree("C(layers: [L(lr: 0.5)])"))) == {
        "layers": [{"opt": {"lr": 0.5}}]
    }
    optional = RenameField(old_field=("opt", "lr"), new_field=("opt", "learning_rate"))
    assert plain(optional.apply(tree("C(opt: Some(O(lr: 1.0)))"))) == {
        "opt": {"learning_rate": 1.0}
    }
    assert plain(optional.apply(tree("C(opt: None)"))) == {"opt": None}


def test_rename_field_paths_must_share_the_star_prefix() -> None:
    rule = RenameField(old_field=("layers", "*", "size"), new_field=("width",))
    with pytest.raises(ValueError, match="must share the prefix up to the last"):
        rule.apply(tree("C(layers: [])"))


def test_delete_field() -> None:
    assert plain(DeleteField(field=("seed",)).apply(tree("C(seed: 1, a: 2)"))) == {"a": 2}
    assert plain(DeleteField(field=("seed",)).apply(tree("C(a: 2)"))) == {"a": 2}
    in_list = DeleteField(field=("layers", "*", "bias"))
    assert plain(in_list.apply(tree("C(layers: [L(bias: true, w: 1), L(w: 2)])"))) == {
        "layers": [{"w": 1}, {"w": 2}]
    }
    in_map = DeleteField(field=("heads", "*", "bias"))
    assert plain(in_map.apply(tree('C(heads: {"x": L(bias: true)})'))) == {"heads": {"x": {}}}


class Act(enum.Enum):
    RELU = "relu"
    GELU = "gelu"


def test_map_field_value_renames_enum_variants() -> None:
    rule = MapFieldValue(field=("act",), map_fn=lambda v: {"RELU": "ReLU"}.get(v, v))
    assert plain(rule.apply(tree("C(act: RELU)"))) == {"act": "ReLU"}
    assert plain(rule.apply(tree("C(act: GELU)"))) == {"act": "GELU"}
    assert plain(rule.apply(tree("C()"))) == {}
    in_list = MapFieldValue(field=("layers", "*", "act"), map_fn=str.lower)
    assert plain(in_list.apply(tree("C(layers: [L(act: RELU), L()])"))) == {
        "layers": [{"act": "relu"}, {}]
    }


def test_map_field_value_on_items_of_a_list_or_map() -> None:
    rule = MapFieldValue(field=("acts", "*"), map_fn=lambda v: {"RELU": "ReLU"}.get(v, v))
    assert plain(rule.apply(tree("C(acts: [RELU, GELU])"))) == {"acts": ["ReLU", "GELU"]}
    scaled = MapFieldValue(field=("rates", "*"), map_fn=lambda v: v * 10)
    assert plain(scaled.apply(tree('C(rates: {"a": 1, "b": 2})'))) == {"rates": {"a": 10, "b": 20}}


def test_map_field_value_scales_numbers() -> None:
    rule = MapFieldValue(field=("optimizer", "lr"), map_fn=lambda v: v / 100)
    assert plain(rule.apply(tree("C(optimizer: O(lr: 5.0))"))) == {"optimizer": {"lr": 0.05}}
    optional = MapFieldValue(field=("clip",), map_fn=lambda v: None if v is None else v * 2)
    assert plain(optional.apply(tree("C(clip: Some(1.5))"))) == {"clip": 3.0}
    assert plain(optional.apply(tree("C(clip: None)"))) == {"clip": None}


def test_map_field_value_may_return_enum_members_and_dataclasses() -> None:
    rule = MapFieldValue(field=("act",), map_fn=lambda v: Act.GELU)
    assert rule.apply(tree("C(act: RELU)")).fields["act"] == Ident("GELU")


def test_change_default() -> None:
    rule = ChangeDefault(field=("warmup",), old_default=100, new_default=500)
    assert plain(rule.apply(tree("C()"))) == {"warmup": 100}  # relied on the old default
    assert plain(rule.apply(tree("C(warmup: 7)"))) == {"warmup": 7}
    assert plain(rule.apply(tree("C(warmup: 500)"))) == {"warmup": 500}
    in_list = ChangeDefault(
        field=("layers", "*", "act"), old_default=Act.RELU, new_default=Act.GELU
    )
    assert in_list.apply(tree("C(layers: [L(), L(act: GELU)])")).fields["layers"] == [
        Struct("L", {"act": Ident("RELU")}),
        Struct("L", {"act": Ident("GELU")}),
    ]


def test_add_default() -> None:
    rule = AddDefault(field=("momentum",), default=0.9)
    assert plain(rule.apply(tree("C()"))) == {"momentum": 0.9}
    assert plain(rule.apply(tree("C(momentum: 0.5)"))) == {"momentum": 0.5}
    assert plain(AddDefault(field=("clip",), default=None).apply(tree("C()"))) == {"clip": None}
    nested = AddDefault(field=("layers", "*", "bias"), default=True)
    assert plain(nested.apply(tree("C(layers: [L(), L(bias: false)])"))) == {
        "layers": [{"bias": True}, {"bias": False}]
    }


def test_check_value() -> None:
    rule = CheckValue(field=("mode",), allowed_values={"train", "eval"})
    assert plain(rule.apply(tree('C(mode: "eval")'))) == {"mode": "eval"}
    assert plain(rule.apply(tree("C()"))) == {}
    with pytest.raises(ConfigError) as info:
        rule.apply(tree('C(mode: "test")'))
    assert str(info.value) == (
        "value 'test' is no longer allowed; allowed values: 'eval', 'train' at mode"
    )
    assert info.value.issues[0].path == ("mode",)


def test_check_value_names_the_item_in_lists_and_maps() -> None:
    rule = CheckValue(field=("layers", "*", "kind"), allowed_values=["dense", "conv"])
    with pytest.raises(ConfigError) as info:
        rule.apply(tree('C(layers: [L(kind: "dense"), L(kind: "rnn")])'))
    assert str(info.value) == (
        "value 'rnn' is no longer allowed; allowed values: 'conv', 'dense' at layers[1].kind"
    )
    items = CheckValue(field=("tags", "*"), allowed_values=[1, 2])
    assert plain(items.apply(tree('C(tags: {"a": 1})'))) == {"tags": {"a": 1}}
    with pytest.raises(ConfigError, match=r"allowed values: 1, 2 at tags\.b$"):
        items.apply(tree('C(tags: {"a": 1, "b": 3})'))


def test_check_value_distinguishes_types_and_skips_none() -> None:
    rule = CheckValue(field=("n",), allowed_values=[1, 2])
    with pytest.raises(ConfigError, match="value True is no longer allowed"):
        rule.apply(tree("C(n: true)"))
    assert plain(rule.apply(tree("C(n: None)"))) == {"n": None}
    enum_rule = CheckValue(field=("act",), allowed_values=[Act.RELU])
    assert enum_rule.apply(tree("C(act: RELU)")).fields["act"] == Ident("RELU")
    with pytest.raises(ConfigError, match="value 'GELU' is no longer allowed"):
        enum_rule.apply(tree("C(act: GELU)"))
    assert rule.apply(tree("C(n: Some(2))")).fields["n"] == Some(2)


# ---------------------------------------------------------------------------------------
# Rules on schema models, and how they render


def old_schema() -> m.Schema:
    return schema_of_class(v0.Config)


def test_rename_field_on_schema_moves_into_a_new_struct() -> None:
    schema = old_schema()
    RenameField(old_field=("lr",), new_field=("optimizer", "lr")).apply_to_schema(schema)
    root = schema.root_struct
    assert root.field("lr") is None
    optimizer = root.field("optimizer")
    assert optimizer is not None and isinstance(optimizer.type, m.StructRef)
    created = schema.struct(optimizer.type.name)
    assert created is not None
    assert [(f.name, f.type) for f in created.fields] == [("lr", m.Primitive("float"))]


def test_rename_field_on_schema_renames_per_place() -> None:
    # `layers` and `heads` both hold Layer; a rename inside one leaves the other alone.
    schema = old_schema()
    RenameField(("layers", "*", "size"), ("layers", "*", "width")).apply_to_schema(schema)

    def item_fields(name: str) -> list[str]:
        definition = schema.root_struct.field(name)
        assert definition is not None
        container = definition.type
        assert isinstance(container, m.ListOf | m.DictOf)
        item = container.item if isinstance(container, m.ListOf) else container.value
        assert isinstance(item, m.StructRef)
        struct = schema.struct(item.name)
        assert struct is not None
        return [f.name for f in struct.fields]

    assert item_fields("layers") == ["act", "width"]
    assert item_fields("heads") == ["size", "act"]
    RenameField(("heads", "*", "size"), ("heads", "*", "width")).apply_to_schema(schema)
    assert item_fields("heads") == ["act", "width"]


def test_rules_on_schema_that_do_not_fit_raise_rule_mismatch() -> None:
    cases: list[tuple[RewriteRule, str]] = [
        (
            RenameField(("nope",), ("x",)),
            "RenameField(old_field=('nope',), new_field=('x',)): no field nope to rename",
        ),
        (
            RenameField(("lr",), ("seed",)),
            "RenameField(old_field=('lr',), new_field=('seed',)): field seed already exists",
        ),
        (DeleteField(("nope",)), "DeleteField(field=('nope',)): no field nope to delete"),
        (
            DeleteField(("lr", "x")),
            "DeleteField(field=('lr', 'x')): lr is not a struct (float)",
        ),
        (
            ChangeDefault(("warmup",), 5, 6),
            "ChangeDefault(field=('warmup',), old_default=5, new_default=6): the old default "
            "of warmup is 100",
        ),
        (
            ChangeDefault(("lr",), 5, 6),
            "ChangeDefault(field=('lr',), old_default=5, new_default=6): the old default of "
            "lr is 'no default'",
        ),
        (
            MapFieldValue(("mode", "*"), str.upper, rendered="str.upper"),
            "MapFieldValue(field=('mode', '*'), map_fn=str.upper): mode is not a list or map (str)",
        ),
        (
            CheckValue(("nope",), {1}),
            "CheckValue(field=('nope',), allowed_values={1}): no field nope",
        ),
    ]
    for rule, message in cases:
        with pytest.raises(RuleMismatch) as info:
            rule.apply_to_schema(old_schema())
        assert str(info.value) == message


def test_delete_field_on_schema() -> None:
    schema = old_schema()
    DeleteField(("seed",)).apply_to_schema(schema)
    assert schema.root_struct.field("seed") is None
    DeleteField(("layers", "*", "act")).apply_to_schema(schema)
    assert schema.struct("Layer") is not None


def test_map_field_value_on_schema_renames_variants_and_maps_defaults() -> None:
    schema = old_schema()
    rename = MapFieldValue(("layers", "*", "act"), lambda v: {"RELU": "ReLU"}.get(v, v))
    rename.apply_to_schema(schema)
    layers = schema.root_struct.field("layers")
    assert layers is not None and isinstance(layers.type, m.ListOf)
    assert isinstance(layers.type.item, m.StructRef)
    layer = schema.struct(layers.type.item.name)
    assert layer is not None
    act = layer.field("act")
    assert act is not None and isinstance(act.type, m.EnumDef)
    assert [v.name for v in act.type.variants] == ["ReLU", "TANH"]
    assert act.default == "ReLU"
    percent = MapFieldValue(("dropout_percent",), lambda v: v / 100)
    percent.apply_to_schema(schema)
    dropout = schema.root_struct.field("dropout_percent")
    assert dropout is not None and dropout.default == 0.1


def test_change_default_on_schema() -> None:
    schema = old_schema()
    ChangeDefault(("warmup",), 100, 500).apply_to_schema(schema)
    warmup = schema.root_struct.field("warmup")
    assert warmup is not None and (warmup.has_default, warmup.default) == (True, 500)


def test_add_default_on_schema() -> None:
    schema = old_schema()
    AddDefault(("momentum",), 0.9).apply_to_schema(schema)
    added = schema.root_struct.field("momentum")
    # Upgraded files hold exactly the default there; none relies on a default.
    assert added == m.FieldDef(name="momentum", type=m.LiteralOf([0.9]))
    AddDefault(("warmup",), 100).apply_to_schema(schema)
    warmup = schema.root_struct.field("warmup")
    assert warmup is not None and not warmup.has_default


def test_check_value_on_schema() -> None:
    schema = old_schema()
    CheckValue(("mode",), {"train", "eval"}).apply_to_schema(schema)
    mode = schema.root_struct.field("mode")
    assert mode is not None and mode.type == m.LiteralOf(["eval", "train"])


@dataclass
class WithOptionalAndLists:
    name: Optional[str] = None
    tags: List[str] = field(default_factory=list)


def test_check_value_on_schema_keeps_option_and_reaches_items() -> None:
    schema = schema_of_class(WithOptionalAndLists)
    CheckValue(("name",), {"a"}).apply_to_schema(schema)
    CheckValue(("tags", "*"), {"x", "y"}).apply_to_schema(schema)
    assert [f.type for f in schema.root_struct.fields] == [
        m.OptionOf(m.LiteralOf(["a"])),
        m.ListOf(m.LiteralOf(["x", "y"])),
    ]


def test_render() -> None:
    assert (
        RenameField(old_field=["lr"], new_field=("optimizer", "lr")).render()
        == "RenameField(old_field=('lr',), new_field=('optimizer', 'lr'))"
    )
    assert DeleteField(field=("seed",)).render() == "DeleteField(field=('seed',))"
    assert (
        MapFieldValue(field=("a",), map_fn=abs).render()
        == "MapFieldValue(field=('a',), map_fn=lambda v: ...)"
    )
    assert (
        MapFieldValue(field=("a",), map_fn=abs, rendered="abs").render()
        == "MapFieldValue(field=('a',), map_fn=abs)"
    )
    assert (
        ChangeDefault(field=("act",), old_default=Act.RELU, new_default="x").render()
        == "ChangeDefault(field=('act',), old_default=Act.RELU, new_default='x')"
    )
    assert (
        AddDefault(field=("clip",), default=None).render()
        == "AddDefault(field=('clip',), default=None)"
    )
    assert (
        CheckValue(field=("mode",), allowed_values={"train", "eval"}).render()
        == "CheckValue(field=('mode',), allowed_values={'eval', 'train'})"
    )
    # The base class renders as the dataclass repr.
    assert repr(DeleteField(field=("a",))) == "DeleteField(field=('a',))"
