"""Schedules in config fields: load, update from the state, dump back unchanged."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest

import hyperstate
from hyperstate.scheduled import check_schedule_fields, schedules, update_schedules


@dataclass
class Optimizer:
    lr: float = 1e-3
    warmup: int = 10


@dataclass
class Config:
    optimizer: Optimizer = field(default_factory=Optimizer)
    heads: list[Optimizer] = field(default_factory=list)
    by_name: dict[str, Optimizer] = field(default_factory=dict)
    batch_size: int = 32


@dataclass
class Progress:
    samples: int = 0


@dataclass
class State:
    step: int = 0
    progress: Progress = field(default_factory=Progress)


TEXT = """Config(
    optimizer: (lr: "step: 3e-4@0 lin 3e-3@1000 cos 0@100000", warmup: "step: 0@0 lin 100@100"),
    heads: [(lr: "progress.samples: 1.0@0 exp 0.01@1e6")],
    by_name: {"a": (lr: "step: 2@0 step 1@10")},
    batch_size: "step: 32@0 lin 64@10",
)"""


def test_schedules_load_update_and_dump_unchanged() -> None:
    config = hyperstate.loads(Config, TEXT)
    assert config.optimizer.lr == 3e-4 and config.optimizer.warmup == 0
    assert set(schedules(config)) == {
        ("optimizer", "lr"),
        ("optimizer", "warmup"),
        ("heads", 0, "lr"),
        ("by_name", "a", "lr"),
        ("batch_size",),
    }
    update_schedules(config, State(step=500, progress=Progress(samples=10**6)))
    assert math.isclose(config.optimizer.lr, 3e-4 + (3e-3 - 3e-4) / 2)
    assert config.optimizer.warmup == 100
    assert math.isclose(config.heads[0].lr, 0.01)
    assert config.by_name["a"].lr == 1.0
    assert config.batch_size == 64 and type(config.batch_size) is int
    update_schedules(config, State(step=5))
    assert config.batch_size == 48  # ints are rounded
    text = hyperstate.dumps(config)
    for schedule in ("step: 3e-4@0 lin 3e-3@1000 cos 0@100000", "step: 32@0 lin 64@10"):
        assert f'"{schedule}"' in text
    assert schedules(hyperstate.loads(Config, text)) == schedules(config)


def test_schedule_from_an_override_needs_no_quotes() -> None:
    config = hyperstate.load(Config, overrides=["optimizer.lr=step: 1@0 cos 0@10"])
    assert config.optimizer.lr == 1.0
    update_schedules(config, State(step=10))
    assert config.optimizer.lr == 0.0
    quoted = hyperstate.load(Config, overrides=['optimizer.lr="step: 1@0 cos 0@10"'])
    assert schedules(quoted) == schedules(config)


def test_malformed_schedule_points_at_the_token_and_the_file() -> None:
    with pytest.raises(hyperstate.ConfigError) as info:
        hyperstate.loads(Config, 'Config(\n    batch_size: "step: 1@0 cosx 2@5",\n)', path="c.ron")
    message = str(info.value)
    assert message.startswith("c.ron:2:17: invalid schedule for an int field:")
    assert "found 'cosx'" in message
    with pytest.raises(hyperstate.ConfigError, match=r"invalid schedule for optimizer\.lr"):
        hyperstate.load(Config, overrides=["optimizer.lr=step: 1@0 cosx 2@5"])


def test_a_plain_string_is_still_a_type_error() -> None:
    with pytest.raises(hyperstate.ConfigError, match='expected float, found "fast"'):
        hyperstate.loads(Config, 'Config(optimizer: (lr: "fast"))')


def test_unknown_x_field_is_an_error_naming_the_field() -> None:
    config = hyperstate.load(Config, overrides=["optimizer.lr=epoch: 1@0 lin 0@10"])
    with pytest.raises(hyperstate.ConfigError) as info:
        check_schedule_fields(config, State())
    assert "follows 'epoch', which is not a field of the state (State)" in str(info.value)
    assert "state fields: progress, step" in str(info.value)
