"""An error about a name (an unknown field, a map key of the wrong type) points at the
name in the file; an error about a value points at the value."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

import hyperstate
from hyperstate import ConfigError


@dataclass
class Optimizer:
    lr: float = 0.1


@dataclass
class Model:
    layers: int = 1
    optimizer: Optimizer = field(default_factory=Optimizer)


@dataclass
class Config:
    lr: float = 0.1
    batch: int = 3
    model: Model = field(default_factory=Model)
    widths: dict[int, float] = field(default_factory=dict)


def _locations(text: str, tmp_path: Path) -> dict[str, str]:
    """``{issue path: 'line:col'}`` of the issues that loading ``text`` from a file gives."""
    file = tmp_path / "typo.ron"
    file.write_text(text)
    with pytest.raises(ConfigError) as info:
        hyperstate.load(Config, str(file))
    found = {}
    for issue in info.value.issues:
        assert issue.location is not None and issue.location.startswith(f"{file}:")
        found[hyperstate.errors.format_path(issue.path)] = issue.location[len(f"{file}:") :]
    return found


def test_misspelled_nested_field_points_at_its_name(tmp_path: Path) -> None:
    text = (
        "Config(\n"
        "    lr: 0.1,\n"
        "    model: Model(\n"
        "        layers: 2,\n"
        "        optimzer: Optimizer(\n"
        "            lr: 0.1,\n"
        "        ),\n"
        "    ),\n"
        ")\n"
    )
    assert _locations(text, tmp_path) == {"model.optimzer": "5:9"}


def test_the_printed_error_names_the_key_and_suggests_the_field(tmp_path: Path) -> None:
    file = tmp_path / "typo.ron"
    file.write_text(
        "Config(\n    model: Model(\n        optimzer: Optimizer(lr: 0.1),\n    ),\n)\n"
    )
    with pytest.raises(ConfigError) as info:
        hyperstate.load(Config, str(file))
    assert str(info.value) == (
        f"{file}:3:9: unknown field 'optimzer' in Model at model.optimzer; "
        "did you mean 'optimizer'?"
    )


def test_misspelled_field_among_others_on_one_line(tmp_path: Path) -> None:
    assert _locations("Config(lr: 0.1, bach: 3)", tmp_path) == {"bach": "1:17"}


def test_misspelled_key_of_a_struct_written_as_a_map(tmp_path: Path) -> None:
    text = 'Config(\n    model: {\n        "layers": 2,\n        "optimzer": (lr: 0.1),\n    },\n)'
    assert _locations(text, tmp_path) == {"model.optimzer": "4:9"}


def test_map_key_of_the_wrong_type_points_at_the_key(tmp_path: Path) -> None:
    text = 'Config(\n    widths: {\n        1: 0.5,\n        "two": 0.25,\n    },\n)'
    assert _locations(text, tmp_path) == {"widths.two": "4:9"}


def test_value_errors_still_point_at_values(tmp_path: Path) -> None:
    text = 'Config(\n    lr: "fast",\n    bach: 3,\n    widths: {1: "half"},\n)'
    assert _locations(text, tmp_path) == {
        "lr": "2:9",
        "bach": "3:5",
        "widths[1]": "4:17",
    }


def test_an_unknown_field_from_an_override_names_the_override(tmp_path: Path) -> None:
    file = tmp_path / "ok.ron"
    file.write_text("Config(lr: 0.1)")
    with pytest.raises(ConfigError) as info:
        hyperstate.load(Config, str(file), overrides=["model=(layrs: 2)"])
    (issue,) = info.value.issues
    assert issue.about_key and issue.location is None
    assert issue.override == "model=(layrs: 2)"
