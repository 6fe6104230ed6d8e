"""Typed configs: dataclasses <-> RON text, defaults, and the errors users see."""

from __future__ import annotations

import enum
import pathlib
from dataclasses import dataclass, field
from typing import Annotated, Any, Dict, List, Literal, NewType, Optional, Tuple, Union

import config_base
import pytest

import hyperstate
from hyperstate import ConfigError, ParseError


@dataclass
class Config:
    lr: float
    batch_size: int


def test_readme_dump_prints_exactly(capsys: pytest.CaptureFixture[str]) -> None:
    print(hyperstate.dump(Config(lr=0.1, batch_size=256)))
    assert capsys.readouterr().out == "Config(\n    lr: 0.1,\n    batch_size: 256,\n)\n"


class Activation(enum.Enum):
    RELU = "relu"
    GELU = "gelu"


class Color(enum.IntEnum):
    RED = 1
    BLUE = 2


UserId = NewType("UserId", int)


@dataclass(frozen=True)
class Adam:
    lr: float = 1e-3
    betas: Tuple[float, float] = (0.9, 0.999)


@dataclass(frozen=True)
class SGD:
    lr: float = 0.1
    momentum: float = 0.0


@dataclass
class Base:
    seed: int = 0


@dataclass
class Layer:
    width: int
    act: Activation = Activation.RELU


@dataclass
class Everything(Base):
    name: str = "run"
    flag: bool = False
    ratio: float = 0.5
    count: int = 3
    act: Activation = Activation.GELU
    mode: Literal["train", "eval"] = "train"
    maybe: Optional[int] = None
    maybe_new: int | None = 4
    ints: List[int] = field(default_factory=lambda: [1, 2])
    floats: list[float] = field(default_factory=list)
    by_name: Dict[str, float] = field(default_factory=dict)
    by_int: dict[int, str] = field(default_factory=dict)
    by_enum: dict[Activation, int] = field(default_factory=dict)
    pair: Tuple[int, str] = (1, "a")
    many: tuple[int, ...] = ()
    opt: Union[Adam, SGD] = field(default_factory=Adam)
    num: Union[int, str] = 0
    annotated: Annotated[int, "meta"] = 7
    user: UserId = UserId(5)
    where: pathlib.Path = pathlib.Path("/tmp/x")
    anything: Any = None
    layers: list[Layer] = field(default_factory=lambda: [Layer(8)])
    color: Color = Color.RED


def test_every_supported_type_round_trips() -> None:
    value = Everything(
        seed=9,
        name='quote " and \\ and \n newline',
        flag=True,
        ratio=1e-5,
        count=-12,
        act=Activation.RELU,
        mode="eval",
        maybe=3,
        maybe_new=None,
        ints=[5, 6],
        floats=[0.1, float("inf"), -0.0],
        by_name={"a.b": 1.5},
        by_int={3: "three"},
        by_enum={Activation.GELU: 2},
        pair=(4, "b"),
        many=(1, 2, 3),
        opt=SGD(lr=0.5),
        num="text",
        annotated=8,
        user=UserId(6),
        where=pathlib.Path("data/train"),
        anything={"k": [1, (2, "x")]},
        layers=[Layer(4, Activation.GELU), Layer(2)],
        color=Color.BLUE,
    )
    text = hyperstate.dumps(value)
    again = hyperstate.loads(Everything, text)
    assert again == value
    assert type(again.floats[0]) is float
    assert isinstance(again.where, pathlib.Path)
    assert hyperstate.dumps(again) == text  # deterministic


def test_defaults_fill_missing_fields() -> None:
    assert hyperstate.loads(Everything, "Everything()") == Everything()
    assert hyperstate.loads(Everything, "()") == Everything()
    assert hyperstate.load(Everything) == Everything()


def test_int_literal_is_accepted_for_float_and_integral_float_for_int() -> None:
    got = hyperstate.loads(Config, "Config(lr: 1, batch_size: 1e3)")
    assert got == Config(lr=1.0, batch_size=1000)
    assert type(got.lr) is float and type(got.batch_size) is int


def test_enum_reads_name_quoted_name_or_value() -> None:
    for text in ("RELU", '"RELU"', '"relu"'):
        assert hyperstate.loads(Layer, f"(width: 1, act: {text})").act is Activation.RELU
    with pytest.raises(ConfigError, match=r"expected one of Activation \{RELU, GELU\}"):
        hyperstate.loads(Layer, "(width: 1, act: RELUU)")


def test_files_of_earlier_releases_load() -> None:
    # No struct names, enums as strings: what pyron-based releases wrote.
    text = '(\n    layers: [(width: 3, act: "GELU")],\n    opt: SGD(lr: 0.2, momentum: 0.9),\n)'
    got = hyperstate.loads(Everything, text)
    assert got.layers == [Layer(3, Activation.GELU)]
    assert got.opt == SGD(lr=0.2, momentum=0.9)


def test_union_of_dataclasses_chosen_by_struct_name() -> None:
    assert hyperstate.loads(Everything, "(opt: Adam(lr: 0.5))").opt == Adam(lr=0.5)
    with pytest.raises(ConfigError, match=r"expected one of Adam \| SGD, found struct Sgd"):
        hyperstate.loads(Everything, "(opt: Sgd(lr: 0.5))")
    with pytest.raises(ConfigError, match="did you mean 'SGD'"):
        hyperstate.loads(Everything, "(opt: SGDD(lr: 0.5))")


def test_union_of_primitives_keeps_exact_types() -> None:
    assert hyperstate.loads(Everything, "(num: 3)").num == 3
    assert hyperstate.loads(Everything, '(num: "3")').num == "3"


@dataclass
class Inner:
    a: int
    b: int = 2


@dataclass
class Outer:
    inner: Inner
    other: Inner
    x: float


def test_every_missing_path_is_listed_in_one_error() -> None:
    with pytest.raises(ConfigError) as info:
        hyperstate.loads(Outer, "Outer(other: (b: 1))", path="outer.ron")
    paths = sorted(str(issue).split(" at ")[1].split()[0] for issue in info.value.issues)
    assert paths == ["inner.a", "other.a", "x"]
    assert "3 problems" in str(info.value)
    assert "missing required field 'a' (int) of Inner" in str(info.value)


@dataclass
class Nested:
    opt: Adam


def test_nested_dataclass_without_default_is_built_from_its_defaults() -> None:
    assert hyperstate.loads(Nested, "Nested()") == Nested(Adam())


def test_unknown_field_names_path_and_suggests_closest() -> None:
    with pytest.raises(ConfigError) as info:
        hyperstate.loads(Config, "Config(\n    lr: 0.1,\n    bach_size: 3,\n)", path="c.ron")
    message = str(info.value)
    assert "unknown field 'bach_size' in Config at bach_size; did you mean 'batch_size'?" in message
    assert "c.ron:3:" in message
    assert "missing required field 'batch_size'" in message  # both problems in one error


def test_ignore_extra_fields() -> None:
    got = hyperstate.loads(Config, "(lr: 1.0, batch_size: 2, old: 3)", ignore_extra_fields=True)
    assert got == Config(1.0, 2)


def test_type_mismatch_names_path_expected_found_and_position() -> None:
    text = (
        'Outer(\n    inner: Inner(a: 1),\n    other: Inner(\n        a: "abc",\n    ),\n'
        "    x: 1.0,\n)"
    )

    with pytest.raises(ConfigError) as info:
        hyperstate.loads(Outer, text, path="config.ron")
    assert str(info.value) == 'config.ron:4:12: expected int, found "abc" at other.a'
    (issue,) = info.value.issues
    assert issue.path == ("other", "a") and issue.location == "config.ron:4:12"


def test_errors_inside_lists_and_maps_name_the_index_and_key() -> None:
    with pytest.raises(ConfigError, match=r"expected int, found true at layers\[1\]\.width"):
        hyperstate.loads(Everything, "(layers: [(width: 1), (width: true)])")
    with pytest.raises(ConfigError, match=r'expected float, found "x" at by_name\["a\.b"\]'):
        hyperstate.loads(Everything, '(by_name: {"a.b": "x"})')


def test_parse_errors_carry_file_line_and_column(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "config.ron"
    path.write_text("Config(\n    lr: 0.1,\n    batch_size: 256\n")
    with pytest.raises(ParseError) as info:
        hyperstate.load(Config, path)
    assert info.value.path == str(path)
    assert (info.value.line, info.value.col) == (4, 1)
    assert isinstance(info.value, ValueError) and isinstance(info.value, hyperstate.HyperstateError)


@dataclass
class Positive:
    n: int

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise ValueError("n must be positive")


@dataclass
class Holder:
    p: Positive


def test_post_init_validation_is_reported_with_the_path() -> None:
    with pytest.raises(ConfigError, match=r"n must be positive at p"):
        hyperstate.loads(Holder, "(p: (n: -1))")


def test_dump_and_load_files_and_fsspec_urls(tmp_path: pathlib.Path) -> None:
    value = Everything(name="disk")
    text = hyperstate.dump(value, tmp_path / "a" / "config.ron")
    assert (tmp_path / "a" / "config.ron").read_text() == text + "\n"
    assert hyperstate.load(Everything, tmp_path / "a" / "config.ron") == value
    hyperstate.dump(value, "memory://hyperstate-test/config.ron")
    assert hyperstate.load(Everything, "memory://hyperstate-test/config.ron") == value
    assert hyperstate.load(Everything, f"file://{tmp_path}/a/config.ron") == value


def test_failed_dump_leaves_the_old_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "config.ron"
    hyperstate.dump(Config(0.1, 1), path)
    before = path.read_bytes()
    with pytest.raises(ConfigError, match=r"cannot write str 'x' as float at lr"):
        hyperstate.dump(Config("x", 1), path)  # type: ignore[arg-type]
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["config.ron"]


def test_elide_defaults() -> None:
    text = hyperstate.dumps(Everything(count=4), elide_defaults=True)
    assert text == "Everything(\n    count: 4,\n)"
    assert hyperstate.loads(Everything, text) == Everything(count=4)


@dataclass
class Tree:
    value: int = 0
    children: list[Tree] = field(default_factory=list)


def test_recursive_dataclasses_and_forward_references() -> None:
    tree = Tree(1, [Tree(2), Tree(3, [Tree(4)])])
    assert hyperstate.loads(Tree, hyperstate.dumps(tree)) == tree


def test_unsupported_annotation_fails_early_naming_class_field_and_type() -> None:
    @dataclass
    class Bad:
        ok: int = 0
        items: set[int] = field(default_factory=set)

    with pytest.raises(TypeError, match=r"Bad\.items: unsupported type annotation set\[int\]"):
        hyperstate.loads(Bad, "()")
    with pytest.raises(TypeError, match=r"dict keys must be str, int or an Enum"):

        @dataclass
        class BadKey:
            d: dict[float, int]

        hyperstate.load(BadKey)


def test_load_rejects_non_dataclass() -> None:
    with pytest.raises(TypeError, match="expected a dataclass type, got int"):
        hyperstate.loads(int, "1")


@dataclass
class Derived(config_base.BaseConfig):
    extra: int = 1


def test_inherited_fields_resolve_in_the_base_class_module() -> None:
    # `Mode` is not importable from this module: the base's own globals must be used.
    got = hyperstate.loads(Derived, "Derived(mode: SLOW, extra: 2)")
    assert got == Derived(mode=config_base.Mode.SLOW, extra=2)


@dataclass
class PerActivation:
    gains: Dict[Activation, float] = field(default_factory=dict)


def test_error_path_names_an_enum_key_as_written() -> None:
    with pytest.raises(ConfigError) as info:
        hyperstate.loads(PerActivation, 'PerActivation(gains: {RELU: "high"})', path="g.ron")
    assert str(info.value) == 'g.ron:1:29: expected float, found "high" at gains[RELU]'
