"""Version 0: a flat config, as first written."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Dict, List

from hyperstate import Versioned


class Activation(enum.Enum):
    RELU = "relu"
    TANH = "tanh"


@dataclass
class Layer:
    size: int
    act: Activation = Activation.RELU


@dataclass
class Config(Versioned):
    lr: float
    layers: List[Layer] = field(default_factory=list)
    heads: Dict[str, Layer] = field(default_factory=dict)
    mode: str = "train"
    warmup: int = 100
    dropout_percent: float = 10.0
    seed: int = 0

    @classmethod
    def version(cls) -> int:
        return 0
