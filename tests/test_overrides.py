"""Command-line overrides and from_args."""

from __future__ import annotations

import enum
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import pytest

import hyperstate
from hyperstate import ConfigError
from hyperstate.overrides import parse_override


class Act(enum.Enum):
    RELU = 1
    GELU = 2


@dataclass
class Adam:
    lr: float = 1e-3
    eps: float = 1e-8


@dataclass
class SGD:
    lr: float = 0.1


@dataclass
class Layer:
    width: int = 64
    act: Act = Act.RELU


@dataclass
class Dropout:
    p: float = 0.1
    inplace: bool = False


@dataclass
class Config:
    optimizer: Union[Adam, SGD] = field(default_factory=Adam)
    layers: list[Layer] = field(default_factory=lambda: [Layer(), Layer(), Layer()])
    tags: dict[str, int] = field(default_factory=dict)
    by_act: dict[Act, float] = field(default_factory=dict)
    task_id: str = "default"
    debug: bool = False
    steps: int = 100
    dropout: Optional[Dropout] = None
    betas: tuple[float, float] = (0.9, 0.99)
    maybe: Optional[int] = 3
    """A number that can be unset."""


def load(*overrides: str) -> Config:
    return hyperstate.load(Config, overrides=list(overrides))


def test_dotted_paths_and_list_indices_both_ways() -> None:
    got = load("layers[2].width=7", "layers.1.width=5", "layers[-3].act=GELU")
    assert [layer.width for layer in got.layers] == [64, 5, 7]
    assert got.layers[0].act is Act.GELU


def test_map_keys_dotted_and_quoted() -> None:
    got = load("tags.foo=1", 'tags["a.b"]=2', "tags['x=y']=3", "by_act.GELU=0.5")
    assert got.tags == {"foo": 1, "a.b": 2, "x=y": 3}
    assert got.by_act == {Act.GELU: 0.5}


def test_ron_values() -> None:
    got = load("layers=[(width: 1), Layer(width: 2, act: GELU)]", "betas=(0.5, 0.6)")
    assert got.layers == [Layer(1), Layer(2, Act.GELU)]
    assert got.betas == (0.5, 0.6)
    assert load("maybe=None").maybe is None
    assert load("maybe=Some(4)").maybe == 4


def test_union_member_chosen_by_struct_name_then_field_set() -> None:
    got = load("optimizer=SGD(lr: 0.5)")
    assert got.optimizer == SGD(0.5)
    assert load("optimizer=SGD()", "optimizer.lr=0.2").optimizer == SGD(0.2)
    assert load("optimizer.eps=1e-6").optimizer == Adam(eps=1e-6)


def test_bare_words_are_strings_for_str_fields() -> None:
    assert load("task_id=CherryPick").task_id == "CherryPick"
    assert load('task_id="quoted words"').task_id == "quoted words"
    assert load("task_id=123").task_id == "123"
    assert load("task_id=two words").task_id == "two words"


@pytest.mark.parametrize(("text", "expected"), [("true", True), ("True", True), ("1", True)])
def test_bool_spellings_true(text: str, expected: bool) -> None:
    assert load(f"debug={text}").debug is expected


@pytest.mark.parametrize("text", ["false", "False", "0"])
def test_bool_spellings_false(text: str) -> None:
    assert load("debug=true", f"debug={text}").debug is False


def test_setting_inside_a_none_optional_dataclass_creates_it() -> None:
    assert load("dropout.p=0.5").dropout == Dropout(p=0.5)
    assert load("dropout.inplace=true").dropout == Dropout(inplace=True)


def test_append_to_list_and_merge_into_map() -> None:
    got = load("layers+=[(width: 9)]", "tags.a=1", 'tags+={"b": 2}')
    assert [layer.width for layer in got.layers] == [64, 64, 64, 9]
    assert got.tags == {"a": 1, "b": 2}


def test_overrides_apply_on_top_of_a_file() -> None:
    text = "Config(steps: 5, layers: [(width: 1)])"
    got = hyperstate.loads(Config, text, overrides=["steps=6", "layers[0].width=2"])
    assert got.steps == 6 and got.layers == [Layer(2)]


def test_unknown_path_suggests_closest() -> None:
    with pytest.raises(ConfigError) as info:
        load("optimizer.lrr=0.1")
    assert str(info.value) == (
        "unknown field 'lrr' in Adam at optimizer.lrr "
        "(from override 'optimizer.lrr=0.1'); did you mean 'lr'?"
    )


def test_type_mismatch_names_the_override() -> None:
    with pytest.raises(ConfigError) as info:
        load("steps=abc")
    assert str(info.value) == (
        "expected int, found identifier abc at steps (from override 'steps=abc')"
    )
    (issue,) = info.value.issues
    assert issue.override == "steps=abc" and issue.location is None


def test_all_bad_overrides_are_reported_together() -> None:
    with pytest.raises(ConfigError) as info:
        load("nope=1", "layers[7].width=1", "steps", "betas=(1, ")
    overrides = [issue.override for issue in info.value.issues]
    assert overrides == ["nope=1", "layers[7].width=1", "steps", "betas=(1, "]
    text = str(info.value)
    assert "4 problems" in text
    assert "index 7 out of range for layers (length 3)" in text
    assert "malformed override" in text and "no '='" in text
    assert "cannot parse value '(1,' for betas" in text


def test_malformed_paths() -> None:
    for bad in ("=1", "a..b=1", "a[x]=1", ".a=1"):
        with pytest.raises(ConfigError, match="malformed override"):
            parse_override(bad)
    assert parse_override("a.b[2]+=[1]").path == ("a", "b", 2)


def test_override_into_scalar_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"steps is int; it has no field or item 'x'"):
        load("steps.x=1")


def test_from_args_reads_config_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.ron"
    hyperstate.dump(Config(steps=7), path)
    got = hyperstate.from_args(Config, ["--config", str(path), "debug=true", "--hps", "steps=8"])
    assert got.steps == 8 and got.debug is True
    assert hyperstate.from_args(Config, [f"--config={path}"]).steps == 7
    assert hyperstate.from_args(Config, []) == Config()


def test_from_args_help_lists_paths_types_defaults_and_docs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        hyperstate.from_args(Config, ["--help"], prog="train.py")
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: train.py [--config PATH] [path=value ...]")
    assert "  steps: int = 100\n" in out
    assert "  layers[i].width: int = 64\n" in out
    assert "  dropout.p: float = 0.1\n" in out
    assert "  maybe: int | None = 3\n      A number that can be unset.\n" in out


def test_from_args_bad_input_exits_2_with_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        hyperstate.from_args(Config, ["stepz=1"], prog="train.py")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "train.py: error: unknown field 'stepz' in Config" in err
    assert "did you mean 'steps'?" in err


def test_from_args_in_a_real_script(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(
            """
            from dataclasses import dataclass
            import hyperstate

            @dataclass
            class Config:
                lr: float = 0.1  # learning rate
                name: str = "x"

            config = hyperstate.from_args(Config)
            print(config)
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script), "lr=0.5", "name=abc"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "Config(lr=0.5, name='abc')"
    helped = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "  lr: float = 0.1\n      learning rate\n" in helped
