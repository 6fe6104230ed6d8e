"""Version 3: ``Optimizer`` (now at its own version 1) renames ``lr`` to
``learning_rate`` and gains a required ``momentum``; ``dropout_percent`` becomes the
fraction ``dropout``; ``seed`` is gone; ``mode`` also allows ``"test"``."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Dict, List, Literal

from hyperstate import Versioned
from hyperstate.schema.rewrite_rule import (
    AddDefault,
    ChangeDefault,
    CheckValue,
    DeleteField,
    MapFieldValue,
    RenameField,
    RewriteRule,
)


class Activation(enum.Enum):
    ReLU = "relu"
    TANH = "tanh"
    GELU = "gelu"


@dataclass
class Layer:
    width: int
    act: Activation = Activation.ReLU


@dataclass
class Optimizer(Versioned):
    learning_rate: float
    momentum: float

    @classmethod
    def version(cls) -> int:
        return 1

    @classmethod
    def upgrade_rules(cls) -> Dict[int, List[RewriteRule]]:
        return {
            0: [
                RenameField(old_field=("lr",), new_field=("learning_rate",)),
                AddDefault(field=("momentum",), default=0.9),
            ],
        }


def relu_renamed(name: str) -> str:
    return {"RELU": "ReLU"}.get(name, name)


def percent_to_fraction(percent: float) -> float:
    return percent / 100


@dataclass
class Config(Versioned):
    optimizer: Optimizer
    layers: List[Layer] = field(default_factory=list)
    heads: Dict[str, Layer] = field(default_factory=dict)
    mode: Literal["train", "eval", "test"] = "train"
    warmup: int = 500
    dropout: float = 0.1

    @classmethod
    def version(cls) -> int:
        return 3

    @classmethod
    def upgrade_rules(cls) -> Dict[int, List[RewriteRule]]:
        return {
            0: [
                RenameField(old_field=("lr",), new_field=("optimizer", "lr")),
                RenameField(old_field=("layers", "*", "size"), new_field=("layers", "*", "width")),
                RenameField(old_field=("heads", "*", "size"), new_field=("heads", "*", "width")),
            ],
            1: [
                MapFieldValue(field=("layers", "*", "act"), map_fn=relu_renamed),
                MapFieldValue(field=("heads", "*", "act"), map_fn=relu_renamed),
                CheckValue(field=("mode",), allowed_values={"train", "eval"}),
                ChangeDefault(field=("warmup",), old_default=100, new_default=500),
            ],
            2: [
                RenameField(old_field=("dropout_percent",), new_field=("dropout",)),
                MapFieldValue(field=("dropout",), map_fn=percent_to_fraction),
                DeleteField(field=("seed",)),
            ],
        }
