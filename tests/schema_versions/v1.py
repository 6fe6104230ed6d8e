"""Version 1: ``lr`` moves into a nested, itself versioned ``Optimizer``; ``size`` of
every layer (in the list and in the map) is renamed to ``width``."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Dict, List

from hyperstate import Versioned
from hyperstate.schema.rewrite_rule import RenameField, RewriteRule


class Activation(enum.Enum):
    RELU = "relu"
    TANH = "tanh"


@dataclass
class Layer:
    width: int
    act: Activation = Activation.RELU


@dataclass
class Optimizer(Versioned):
    lr: float

    @classmethod
    def version(cls) -> int:
        return 0


@dataclass
class Config(Versioned):
    optimizer: Optimizer
    layers: List[Layer] = field(default_factory=list)
    heads: Dict[str, Layer] = field(default_factory=dict)
    mode: str = "train"
    warmup: int = 100
    dropout_percent: float = 10.0
    seed: int = 0

    @classmethod
    def version(cls) -> int:
        return 1

    @classmethod
    def upgrade_rules(cls) -> Dict[int, List[RewriteRule]]:
        return {
            0: [
                RenameField(old_field=("lr",), new_field=("optimizer", "lr")),
                RenameField(old_field=("layers", "*", "size"), new_field=("layers", "*", "width")),
                RenameField(old_field=("heads", "*", "size"), new_field=("heads", "*", "width")),
            ],
        }
