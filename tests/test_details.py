"""Small things a new user runs into: hints in messages, the version, the docs' promises."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import hyperstate

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class Optimizer:
    lr: float = 0.1


@dataclasses.dataclass
class Config:
    optimizer: Optimizer = dataclasses.field(default_factory=Optimizer)
    name: str = "run"


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        ("1e-2@0 cos 1e-4@300", "did you mean 'step: 1e-2@0 cos 1e-4@300'?"),
        ("1e-2 cos 1e-4@300", "a schedule is written 'step: VALUE@STEP KIND VALUE@STEP ...'"),
    ],
)
def test_a_schedule_without_its_prefix_gets_a_hint(value: str, hint: str) -> None:
    with pytest.raises(hyperstate.ConfigError) as info:
        hyperstate.load(Config, None, [f"optimizer.lr={value}"])
    assert str(info.value).endswith(hint)
    # Written as the hint says, it is a schedule.
    fixed = "step: 1e-2@0 cos 1e-4@300"
    assert hyperstate.load(Config, None, [f"optimizer.lr={fixed}"]).optimizer.lr == 1e-2


def test_no_schedule_hint_for_other_bad_numbers() -> None:
    with pytest.raises(hyperstate.ConfigError) as info:
        hyperstate.load(Config, None, ["optimizer.lr=1e-2 3"])
    assert "schedule" not in str(info.value)


def test_the_version_follows_the_0_4_series() -> None:
    major, minor, _ = (int(n) for n in hyperstate.__version__.split("."))
    assert (major, minor) >= (0, 5)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(rf'^version = "{re.escape(hyperstate.__version__)}"$', pyproject, re.M)
    assert "## Upgrading from hyperstate 0.4" in (ROOT / "README.md").read_text()
