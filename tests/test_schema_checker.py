"""SchemaChecker: every kind of change between a schema file and the current classes,
its severity, the proposed rules, and the loop a user goes through to fix them.

The checker matches structs by name, so each old/new pair below is two module-level
classes given the same ``__name__`` (as two versions of one ``config.py`` would be).
"""

from __future__ import annotations

import doctest
import enum
import importlib
import importlib.util
import subprocess
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, TypeVar

import pytest
from schema_versions import v0, v1, v2, v3

import hyperstate
from hyperstate import Versioned
from hyperstate.schema.model import Schema, dump_schema, schema_of_class
from hyperstate.schema.rewrite_rule import (
    AddDefault,
    ChangeDefault,
    CheckValue,
    DeleteField,
    MapFieldValue,
    RenameField,
    RewriteRule,
)
from hyperstate.schema.schema_change import Severity
from hyperstate.schema.schema_checker import SchemaChecker
from hyperstate.schema.types import load_schema

T = TypeVar("T")


def named(name: str) -> Callable[[T], T]:
    """Give a class the name it has in the user's code (the checker compares by name)."""

    def rename(cls: T) -> T:
        cls.__name__ = cls.__qualname__ = name  # type: ignore[attr-defined]
        return cls

    return rename


def changes(checker: SchemaChecker) -> list[str]:
    return [str(c) for c in checker.changes]


def proposed(checker: SchemaChecker) -> dict[str, dict[int, list[str]]]:
    return {
        owner: {version: [r.render() for r in rules] for version, rules in by_version.items()}
        for owner, by_version in checker.proposed_rules().items()
    }


# ---------------------------------------------------------------------------------------
# The README's example: lr renamed to learning_rate


@named("Config")
@dataclass
class ReadmeV0(Versioned):
    lr: float
    batch_size: int

    @classmethod
    def version(cls) -> int:
        return 0


@named("Config")
@dataclass
class ReadmeRenamed(Versioned):
    learning_rate: float
    batch_size: int

    @classmethod
    def version(cls) -> int:
        return 0


@named("Config")
@dataclass
class ReadmeV1(Versioned):
    learning_rate: float
    batch_size: int

    @classmethod
    def version(cls) -> int:
        return 1

    @classmethod
    def upgrade_rules(cls) -> Dict[int, List[RewriteRule]]:
        # pasted from the report below
        return {
            0: [
                RenameField(old_field=("lr",), new_field=("learning_rate",)),
            ],
        }


README_REPORT = """\
WARN  field renamed to learning_rate: lr
WARN  schema changed but version identical
Schema incompatible

Proposed mitigations
- add upgrade rules:
    0: [
        RenameField(old_field=('lr',), new_field=('learning_rate',)),
    ],
- bump version to 1"""


def test_readme_rename_report(capsys: pytest.CaptureFixture[str]) -> None:
    checker = SchemaChecker(schema_of_class(ReadmeV0), ReadmeRenamed)
    assert checker.severity() is Severity.WARN
    assert checker.report() == README_REPORT
    assert checker.print_report() == ""
    assert capsys.readouterr().out == README_REPORT + "\n"


def test_readme_rename_fixed_by_the_proposal() -> None:
    old = schema_of_class(ReadmeV0)
    proposal = SchemaChecker(old, ReadmeRenamed).proposed_rules()
    pasted = {v: [r.render() for r in rules] for v, rules in ReadmeV1.upgrade_rules().items()}
    assert {v: [r.render() for r in rules] for v, rules in proposal["Config"].items()} == pasted
    assert list(proposal) == ["Config"]
    checker = SchemaChecker(old, ReadmeV1)
    assert checker.severity() is Severity.INFO
    assert checker.report() == (
        "INFO  field renamed to learning_rate: lr (handled by upgrade rules)\nSchema compatible"
    )
    old_file = hyperstate.dumps(ReadmeV0(lr=0.1, batch_size=8))
    assert hyperstate.loads(ReadmeV1, old_file) == ReadmeV1(learning_rate=0.1, batch_size=8)


def test_unchanged_schema_is_compatible() -> None:
    checker = SchemaChecker(schema_of_class(v3.Config), v3.Config)
    assert checker.changes == []
    assert checker.severity() is Severity.INFO
    assert checker.report() == "Schema compatible"


# ---------------------------------------------------------------------------------------
# The automated test from the README, verbatim, in a user's project

USER_TEST = """\
from hyperstate.schema.schema_change import Severity
from hyperstate.schema.schema_checker import SchemaChecker
from hyperstate.schema.types import load_schema
from config import Config

def test_schema():
    old = load_schema("config-schema.ron")
    checker = SchemaChecker(old, Config)
    if checker.severity() >= Severity.WARN:
        print(checker.print_report())
    assert checker.severity() == Severity.INFO
"""

USER_CONFIG = """\
from dataclasses import dataclass

from hyperstate import Versioned


@dataclass
class Config(Versioned):
    lr: float
    batch_size: int

    @classmethod
    def version(cls) -> int:
        return 0
"""


def run_user_test(project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_schema.py"],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    )


def test_readme_automated_test_in_a_user_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config.py").write_text(USER_CONFIG)
    (tmp_path / "test_schema.py").write_text(USER_TEST)
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location("config", tmp_path / "config.py")
    assert spec is not None and spec.loader is not None
    config = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "config", config)
    spec.loader.exec_module(config)
    dump_schema(config.Config, "config-schema.ron")  # what `dump-schema` writes
    passed = run_user_test(tmp_path)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "1 passed" in passed.stdout


def test_readme_automated_test_fails_after_a_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The same test code, run here: after `lr` is renamed it prints the report and fails.
    monkeypatch.chdir(tmp_path)
    dump_schema(ReadmeV0, "config-schema.ron")
    user_config = types.ModuleType("config")
    user_config.Config = ReadmeRenamed  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "config", user_config)
    namespace: dict[str, Any] = {}
    exec(compile(USER_TEST, "test_schema.py", "exec"), namespace)
    with pytest.raises(AssertionError):
        namespace["test_schema"]()
    assert capsys.readouterr().out == README_REPORT + "\n\n"


def test_schema_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "config-schema.ron"
    for module in (v0, v1, v2, v3):
        text = dump_schema(module.Config, path)
        assert path.read_text() == text + "\n"
        assert load_schema(path) == schema_of_class(module.Config)
    assert isinstance(load_schema(path), Schema)


def test_schema_file_content(tmp_path: Path) -> None:
    # Fields in order with types, defaults and versions; enum variants with values.
    text = dump_schema(v2.Config)
    assert text.startswith('Schema(\n    root: "Config",\n    structs: [\n        StructDef(\n')
    for snippet in (
        'name: "optimizer",\n                    type: StructRef(\n                        '
        'name: "Optimizer",',
        'Variant(\n                                name: "ReLU",\n'
        '                                value: "relu",',
        'type: LiteralOf(\n                        values: ["train", "eval"],',
        "default: 500,",
        "version: 2,",
    ):
        assert snippet in text, snippet


# ---------------------------------------------------------------------------------------
# Loading a v0 schema file with every later version of the chain


@pytest.mark.parametrize("module", [v1, v2, v3], ids=lambda mod: mod.__name__)
def test_chain_is_compatible_with_every_older_schema_file(tmp_path: Path, module: Any) -> None:
    for older in (v0, v1, v2, v3):
        if older.__name__ > module.__name__:
            continue
        path = tmp_path / f"{older.__name__}.ron"
        dump_schema(older.Config, path)
        checker = SchemaChecker(load_schema(path), module.Config)
        assert checker.severity() is Severity.INFO, checker.report()


def test_chain_v0_to_v3_report() -> None:
    checker = SchemaChecker(schema_of_class(v0.Config), v3.Config)
    assert changes(checker) == [
        "INFO  field renamed to dropout: lr (handled by upgrade rules)",
        "INFO  field removed: dropout_percent (handled by upgrade rules)",
        "INFO  field removed: seed (handled by upgrade rules)",
        "INFO  required field added without default: optimizer (give it a default, or add "
        "AddDefault(field=('optimizer',), default=...)) (handled by upgrade rules)",
        "INFO  field renamed to layers[*].width: layers[*].size (handled by upgrade rules)",
        "INFO  enum variant renamed in layers[*].act: RELU -> ReLU (handled by upgrade rules)",
        "INFO  field renamed to heads[*].width: heads[*].size (handled by upgrade rules)",
        "INFO  enum variant renamed in heads[*].act: RELU -> ReLU (handled by upgrade rules)",
        "INFO  type changed from str to Literal['train', 'eval', 'test']: mode (handled by "
        "upgrade rules)",
        "INFO  default changed for warmup: 100 -> 500 (handled by upgrade rules)",
        "INFO  enum variant added to layers[*].act: GELU",
        "INFO  enum variant added to heads[*].act: GELU",
        "INFO  literal values added to mode: 'test'",
        "INFO  type widened from Literal[0.9] to float: optimizer.momentum",
    ]


@named("Optimizer")
@dataclass
class OptimizerRenamed(Versioned):
    learning_rate: float

    @classmethod
    def version(cls) -> int:
        return 0


@named("Config")
@dataclass
class NestedUnbumped(Versioned):
    optimizer: OptimizerRenamed
    layers: List[v1.Layer] = field(default_factory=list)
    heads: Dict[str, v1.Layer] = field(default_factory=dict)
    mode: str = "train"
    warmup: int = 100
    dropout_percent: float = 10.0
    seed: int = 0

    @classmethod
    def version(cls) -> int:
        return 1

    @classmethod
    def upgrade_rules(cls) -> Dict[int, List[RewriteRule]]:
        return v1.Config.upgrade_rules()


def test_change_in_a_nested_versioned_struct_is_its_own() -> None:
    checker = SchemaChecker(schema_of_class(v1.Config), NestedUnbumped)
    assert changes(checker) == [
        "WARN  field renamed to optimizer.learning_rate: optimizer.lr",
        "WARN  schema of Optimizer changed but version identical",
    ]
    assert checker.mitigations() == [
        "- add upgrade rules to Optimizer:",
        "    0: [",
        "        RenameField(old_field=('lr',), new_field=('learning_rate',)),",
        "    ],",
        "- bump version of Optimizer to 1",
    ]


# ---------------------------------------------------------------------------------------
# Fields added, removed, renamed


@named("Config")
@dataclass
class FieldsV0(Versioned):
    batch_size: int = 32
    seed: int = 0
    lr: float = 0.1

    @classmethod
    def version(cls) -> int:
        return 0


@named("Config")
@dataclass
class FieldsChanged(Versioned):
    clip: Optional[float]
    steps: int
    batch_size: int = 32
    learning_rate: float = 0.1
    warmup: int = 100

    @classmethod
    def version(cls) -> int:
        return 0


@named("Config")
@dataclass
class FieldsFixed(Versioned):
    clip: Optional[float]
    steps: int
    batch_size: int = 32
    learning_rate: float = 0.1
    warmup: int = 100

    @classmethod
    def version(cls) -> int:
        return 1

    @classmethod
    def upgrade_rules(cls) -> Dict[int, List[RewriteRule]]:
        return {
            0: [
                RenameField(old_field=("lr",), new_field=("learning_rate",)),
                DeleteField(field=("seed",)),
                AddDefault(field=("clip",), default=None),
                AddDefault(field=("steps",), default=1000),  # what the ERROR asks for
            ],
        }


def test_fields_added_removed_renamed() -> None:
    checker = SchemaChecker(schema_of_class(FieldsV0), FieldsChanged)
    assert [(c.severity, c.kind, c.path) for c in checker.changes] == [
        (Severity.WARN, "field_renamed", "learning_rate"),
        (Severity.WARN, "field_removed", "seed"),
        (Severity.WARN, "field_added", "clip"),
        (Severity.ERROR, "field_added", "steps"),
        (Severity.INFO, "field_added", "warmup"),
        (Severity.WARN, "version_identical", ""),
    ]
    assert changes(checker) == [
        "WARN  field renamed to learning_rate: lr",
        "WARN  field removed: seed",
        "WARN  field added without default: clip",
        "ERROR required field added without default: steps (give it a default, or add "
        "AddDefault(field=('steps',), default=...))",
        "INFO  field added: warmup",
        "WARN  schema changed but version identical",
    ]
    assert checker.severity() is Severity.ERROR
    assert proposed(checker) == {
        "Config": {
            0: [
                "RenameField(old_field=('lr',), new_field=('learning_rate',))",
                "DeleteField(field=('seed',))",
                "AddDefault(field=('clip',), default=None)",
            ]
        }
    }
    assert checker.report().endswith("- bump version to 1")


def test_fields_fixed_by_the_proposal_and_the_errors_advice() -> None:
    old = schema_of_class(FieldsV0)
    checker = SchemaChecker(old, FieldsFixed)
    assert checker.severity() is Severity.INFO, checker.report()
    assert changes(checker) == [
        "INFO  field renamed to learning_rate: lr (handled by upgrade rules)",
        "INFO  field removed: seed (handled by upgrade rules)",
        "INFO  field added without default: clip (handled by upgrade rules)",
        "INFO  required field added without default: steps (give it a default, or add "
        "AddDefault(field=('steps',), default=...)) (handled by upgrade rules)",
        "INFO  field added: warmup",
        "INFO  type widened from Literal[None] to float | None: clip",
        "INFO  type widened from Literal[1000] to int: steps",
    ]
    old_file = hyperstate.dumps(FieldsV0(batch_size=8, seed=3, lr=0.5))
    assert hyperstate.loads(FieldsFixed, old_file) == FieldsFixed(
        clip=None, steps=1000, batch_size=8, learning_rate=0.5
    )


@named("Config")
@dataclass
class TwoRenamesV0:
    hidden_size: int = 64
    num_layers: int = 2


@named("Config")
@dataclass
class TwoRenamesV1:
    layers: int = 2
    hidden: int = 64


def test_rename_detection_pairs_fields_by_default_and_name() -> None:
    checker = SchemaChecker(schema_of_class(TwoRenamesV0), TwoRenamesV1)
    assert changes(checker) == [
        "WARN  field renamed to hidden: hidden_size",
        "WARN  field renamed to layers: num_layers",
        "WARN  Config changed but is not Versioned",
    ]
    assert checker.mitigations() == [
        "- inherit hyperstate.Versioned in Config, with version() returning 1",
        "- add upgrade rules:",
        "    0: [",
        "        RenameField(old_field=('hidden_size',), new_field=('hidden',)),",
        "        RenameField(old_field=('num_layers',), new_field=('layers',)),",
        "    ],",
    ]


# ---------------------------------------------------------------------------------------
# Defaults


@named("Config")
@dataclass
class DefaultsV0(Versioned):
    warmup: int = 100
    seed: int = 3

    @classmethod
    def version(cls) -> int:
        return 0


@named("Config")
@dataclass
class DefaultsChanged(Versioned):
    seed: int
    warmup: int = 500

    @classmethod
    def version(cls) -> int:
        return 0


@named("Config")
@dataclass
class DefaultsFixed(Versioned):
    seed: int
    warmup: int = 500

    @classmethod
    def version(cls) -> int:
        return 1

    @classmethod
    def upgrade_rules(cls) -> Dict[int, List[RewriteRule]]:
        return {
            0: [
                ChangeDefault(field=("warmup",), old_default=100, new_default=500),
                AddDefault(field=("seed",), default=3),
            ],
        }


def test_default_changed_and_removed() -> None:
    checker = SchemaChecker(schema_of_class(DefaultsV0), DefaultsChanged)
    assert changes(checker) == [
        "WARN  default changed for warmup: 100 -> 500",
        "WARN  default removed for seed (was 3)",
        "WARN  schema changed but version identical",
    ]
    assert proposed(checker) == {
        "Config": {
            0: [
                "ChangeDefault(field=('warmup',), old_default=100, new_default=500)",
                "AddDefault(field=('seed',), default=3)",
            ]
        }
    }


def test_defaults_fixed_by_the_proposal() -> None:
    checker = SchemaChecker(schema_of_class(DefaultsV0), DefaultsFixed)
    assert changes(checker) == [
        "INFO  default changed for warmup: 100 -> 500 (handled by upgrade rules)",
        "INFO  default removed for seed (was 3) (handled by upgrade rules)",
    ]
    assert hyperstate.loads(DefaultsFixed, "Config()") == DefaultsFixed(seed=3, warmup=100)
    assert hyperstate.loads(DefaultsFixed, "Config(warmup: 7, seed: 1)") == DefaultsFixed(1, 7)


@named("Optimizer")
@dataclass
class OptimizerV0(Versioned):
    lr: float = 0.1

    @classmethod
    def version(cls) -> int:
        return 0


@named("Optimizer")
@dataclass
class OptimizerV1(Versioned):
    learning_rate: float = 0.1
    momentum: float = 0.9  # a new field with a default: the struct's default is unchanged

    @classmethod
    def version(cls) -> int:
        return 1

    @classmethod
    def upgrade_rules(cls) -> Dict[int, List[RewriteRule]]:
        return {0: [RenameField(old_field=("lr",), new_field=("learning_rate",))]}


@named("Config")
@dataclass
class StructDefaultV0:
    optimizer: OptimizerV0 = field(default_factory=OptimizerV0)


@named("Config")
@dataclass
class StructDefaultV1:
    optimizer: OptimizerV1 = field(default_factory=OptimizerV1)


def test_struct_default_of_an_upgraded_versioned_struct_is_unchanged() -> None:
    # The old default {version: 0, lr: 0.1} loads as the new default Optimizer(0.1, 0.9).
    checker = SchemaChecker(schema_of_class(StructDefaultV0), StructDefaultV1)
    assert changes(checker) == [
        "INFO  field renamed to optimizer.learning_rate: optimizer.lr (handled by upgrade rules)",
        "INFO  field added: optimizer.momentum",
    ]


# ---------------------------------------------------------------------------------------
# Types


@named("Config")
@dataclass
class TypesV0(Versioned):
    steps: int = 1
    mode: str = "train"
    name: Optional[str] = None
    count: int = 3
    path: str = "out"

    @classmethod
    def version(cls) -> int:
        return 0


@named("Config")
@dataclass
class TypesChanged(Versioned):
    steps: float = 1.0
    mode: Literal["train", "eval"] = "train"
    name: Optional[Literal["a", "b"]] = None
    count: List[int] = field(default_factory=list)
    path: Optional[str] = "out"

    @classmethod
    def version(cls) -> int:
        return 0


@named("Config")
@dataclass
class TypesFixed(Versioned):
    steps: float = 1.0
    mode: Literal["train", "eval"] = "train"
    name: Optional[Literal["a", "b"]] = None
    count: List[int] = field(default_factory=list)
    path: Optional[str] = "out"

    @classmethod
    def version(cls) -> int:
        return 1

    @classmethod
    def upgrade_rules(cls) -> Dict[int, List[RewriteRule]]:
        return {
            0: [
                CheckValue(field=("mode",), allowed_values={"eval", "train"}),
                CheckValue(field=("name",), allowed_values={"a", "b"}),
                MapFieldValue(field=("count",), map_fn=lambda v: [v]),
                ChangeDefault(field=("count",), old_default=[3], new_default=[]),
            ],
        }


def test_type_changes() -> None:
    checker = SchemaChecker(schema_of_class(TypesV0), TypesChanged)
    assert changes(checker) == [
        "INFO  type widened from int to float: steps",
        "WARN  type changed from str to Literal['train', 'eval']: mode",
        "WARN  type changed from str to Literal['a', 'b']: name",
        "WARN  default changed for count: 3 -> []",
        "ERROR type changed from int to list[int]: count (convert old values with MapFieldValue)",
        "INFO  type widened from str to str | None: path",
        "WARN  schema changed but version identical",
    ]
    assert checker.severity() is Severity.ERROR
    assert proposed(checker)["Config"][0][:2] == [
        "CheckValue(field=('mode',), allowed_values={'eval', 'train'})",
        "CheckValue(field=('name',), allowed_values={'a', 'b'})",
    ]


def test_type_changes_fixed_by_rules() -> None:
    checker = SchemaChecker(schema_of_class(TypesV0), TypesFixed)
    assert checker.severity() is Severity.INFO, checker.report()
    old_file = 'Config(version: 0, mode: "eval", name: Some("a"), count: 4)'
    assert hyperstate.loads(TypesFixed, old_file) == TypesFixed(mode="eval", name="a", count=[4])
    with pytest.raises(hyperstate.ConfigError, match="value 'c' is no longer allowed"):
        hyperstate.loads(TypesFixed, 'Config(name: "c")')
    assert hyperstate.loads(TypesFixed, "Config(name: None)").name is None


# ---------------------------------------------------------------------------------------
# Enums and literals


class ActivationV0(enum.Enum):
    RELU = "relu"
    TANH = "tanh"
    SIGMOID = "sigmoid"


class ActivationV1(enum.Enum):
    ReLU = "relu"  # renamed: same value
    TANH = "tanh2"  # value changed
    GELU = "gelu"  # added; SIGMOID removed


@named("Config")
@dataclass
class EnumsV0(Versioned):
    act: ActivationV0 = ActivationV0.RELU
    acts: List[ActivationV0] = field(default_factory=list)
    mode: Literal["a", "b"] = "a"

    @classmethod
    def version(cls) -> int:
        return 0


@named("Config")
@dataclass
class EnumsChanged(Versioned):
    act: ActivationV1 = ActivationV1.ReLU
    acts: List[ActivationV1] = field(default_factory=list)
    mode: Literal["a", "c"] = "a"

    @classmethod
    def version(cls) -> int:
        return 0


@named("Config")
@dataclass
class EnumsFixed(Versioned):
    act: ActivationV1 = ActivationV1.ReLU
    acts: List[ActivationV1] = field(default_factory=list)
    mode: Literal["a", "c"] = "a"

    @classmethod
    def version(cls) -> int:
        return 1

    @classmethod
    def upgrade_rules(cls) -> Dict[int, List[RewriteRule]]:
        return {
            0: [
                MapFieldValue(field=("act",), map_fn=lambda v: {"RELU": "ReLU"}.get(v, v)),
                MapFieldValue(field=("acts", "*"), map_fn=lambda v: {"RELU": "ReLU"}.get(v, v)),
            ],
        }


def test_enum_and_literal_changes() -> None:
    checker = SchemaChecker(schema_of_class(EnumsV0), EnumsChanged)
    assert changes(checker) == [
        "WARN  enum variant renamed in act: RELU -> ReLU",
        "WARN  enum variant removed from act: SIGMOID",
        "INFO  enum variant added to act: GELU",
        "WARN  enum value of TANH changed in act: 'tanh' -> 'tanh2' (files that hold the "
        "value, not the name)",
        "WARN  enum variant renamed in acts[*]: RELU -> ReLU",
        "WARN  enum variant removed from acts[*]: SIGMOID",
        "INFO  enum variant added to acts[*]: GELU",
        "WARN  enum value of TANH changed in acts[*]: 'tanh' -> 'tanh2' (files that hold the "
        "value, not the name)",
        "WARN  literal values removed from mode: 'b'",
        "INFO  literal values added to mode: 'c'",
        "WARN  schema changed but version identical",
    ]
    # The default RELU -> ReLU is the rename, not a changed default.
    assert proposed(checker) == {
        "Config": {
            0: [
                "MapFieldValue(field=('act',), map_fn=lambda v: {'RELU': 'ReLU'}.get(v, v))",
                "MapFieldValue(field=('acts', '*'), map_fn=lambda v: {'RELU': 'ReLU'}.get(v, v))",
            ]
        }
    }


def test_proposed_enum_rules_upgrade_old_files() -> None:
    checker = SchemaChecker(schema_of_class(EnumsV0), EnumsChanged)
    rules = checker.proposed_rules()["Config"][0]
    tree = hyperstate.ron.loads("Config(act: RELU, acts: [RELU, TANH])")
    for rule in rules:
        tree = rule.apply(tree)
    assert hyperstate.serde.from_value(EnumsChanged, tree) == EnumsChanged(
        act=ActivationV1.ReLU, acts=[ActivationV1.ReLU, ActivationV1.TANH]
    )


def test_enum_rename_handled_leaves_the_unfixable_changes() -> None:
    checker = SchemaChecker(schema_of_class(EnumsV0), EnumsFixed)
    assert [str(c) for c in checker.changes if c.severity >= Severity.WARN] == [
        "WARN  enum variant removed from act: SIGMOID",
        "WARN  enum value of TANH changed in act: 'tanh' -> 'tanh2' (files that hold the "
        "value, not the name)",
        "WARN  enum variant removed from acts[*]: SIGMOID",
        "WARN  enum value of TANH changed in acts[*]: 'tanh' -> 'tanh2' (files that hold the "
        "value, not the name)",
        "WARN  literal values removed from mode: 'b'",
    ]
    assert hyperstate.loads(EnumsFixed, "Config(act: RELU, acts: [RELU, GELU])") == EnumsFixed(
        act=ActivationV1.ReLU, acts=[ActivationV1.ReLU, ActivationV1.GELU]
    )


# ---------------------------------------------------------------------------------------
# Rules that do not fit, and versions


@named("Config")
@dataclass
class BadRule(Versioned):
    learning_rate: float
    batch_size: int

    @classmethod
    def version(cls) -> int:
        return 1

    @classmethod
    def upgrade_rules(cls) -> Dict[int, List[RewriteRule]]:
        return {
            0: [
                RenameField(old_field=("lr",), new_field=("learning_rate",)),
                DeleteField(field=("dropout",)),
            ],
        }


def test_rule_that_does_not_fit_the_old_schema_is_an_error() -> None:
    checker = SchemaChecker(schema_of_class(ReadmeV0), BadRule)
    message = (
        "upgrade rule for version 0 does not fit the old schema: "
        "DeleteField(field=('dropout',)): no field dropout to delete"
    )
    assert changes(checker) == [
        f"ERROR {message}",
        "INFO  field renamed to learning_rate: lr (handled by upgrade rules)",
    ]
    assert checker.severity() is Severity.ERROR
    assert checker.report().endswith(
        f"Schema incompatible\n\nProposed mitigations\n- fix the upgrade rule: {message}"
    )


@named("Config")
@dataclass
class RulesWithoutBump(Versioned):
    learning_rate: float
    batch_size: int

    @classmethod
    def version(cls) -> int:
        return 0

    @classmethod
    def upgrade_rules(cls) -> Dict[int, List[RewriteRule]]:
        return {}


def test_rules_only_count_with_a_version_bump() -> None:
    # Same as the README case: without a bump, no rule runs on old files.
    checker = SchemaChecker(schema_of_class(ReadmeV0), RulesWithoutBump)
    assert checker.report() == README_REPORT


def test_older_schema_file_only_needs_the_later_rules() -> None:
    # A schema file written at version 2: the version 0 and 1 rules are not applied to it.
    checker = SchemaChecker(schema_of_class(v2.Config), v3.Config)
    assert checker.severity() is Severity.INFO
    assert "enum variant renamed" not in checker.report()
    assert changes(checker)[:2] == [
        "INFO  field renamed to dropout: dropout_percent (handled by upgrade rules)",
        "INFO  default changed for dropout: 10.0 -> 0.1 (handled by upgrade rules)",
    ]


def test_schema_file_newer_than_the_code_is_an_error() -> None:
    checker = SchemaChecker(schema_of_class(v3.Config), v1.Config)
    assert checker.severity() is Severity.ERROR
    assert changes(checker)[:2] == [
        "ERROR version of Config decreased from 3 to 1: the schema file was written by newer code",
        "ERROR version of Optimizer decreased from 1 to 0: the schema file was written by "
        "newer code",
    ]


@pytest.mark.parametrize(
    "module",
    ["hyperstate.schema.schema_checker", "hyperstate.schema.versioned"],
)
def test_docstring_examples(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), raise_on_error=False)
    assert result.attempted > 0
    assert result.failed == 0
