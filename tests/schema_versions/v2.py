"""Version 2: the ``RELU`` variant is renamed ``ReLU`` (same value) and ``GELU`` is new;
``mode`` becomes a ``Literal``; the default of ``warmup`` changes from 100 to 500."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Dict, List, Literal

from hyperstate import Versioned
from hyperstate.schema.rewrite_rule import (
    ChangeDefault,
    CheckValue,
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
    lr: float

    @classmethod
    def version(cls) -> int:
        return 0


def relu_renamed(name: str) -> str:
    return {"RELU": "ReLU"}.get(name, name)


@dataclass
class Config(Versioned):
    optimizer: Optimizer
    layers: List[Layer] = field(default_factory=list)
    heads: Dict[str, Layer] = field(default_factory=dict)
    mode: Literal["train", "eval"] = "train"
    warmup: int = 500
    dropout_percent: float = 10.0
    seed: int = 0

    @classmethod
    def version(cls) -> int:
        return 2

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
        }
