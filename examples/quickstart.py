"""Config quick start: typed dataclasses <-> RON text, with command-line overrides.

Run it:  python examples/quickstart.py optimizer.lr=0.01 layers[1].width=512
Help:    python examples/quickstart.py --help
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import hyperstate


class Activation(Enum):
    RELU = "relu"
    GELU = "gelu"


@dataclass
class OptimizerConfig:
    lr: float = 3e-4
    """Peak learning rate."""
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.0  # decoupled, as in AdamW


@dataclass
class Layer:
    width: int
    activation: Activation = Activation.RELU


@dataclass
class Config:
    optimizer: OptimizerConfig
    layers: list[Layer] = field(default_factory=lambda: [Layer(256), Layer(256)])
    steps: int = 10_000
    """Number of optimizer steps."""
    run_name: str = "quickstart"
    tags: dict[str, str] = field(default_factory=dict)


EXAMPLE = Path(__file__).with_name("config.ron")


def main() -> None:
    # --config defaults to the example file; any path=value argument overrides a field.
    config = hyperstate.from_args(Config, ["--config", str(EXAMPLE), *sys.argv[1:]])
    print("Loaded config:")
    print(hyperstate.dumps(config))

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.ron"
        hyperstate.dump(config, path)  # atomic write; any fsspec URL works too
        again = hyperstate.load(Config, path)
        assert again == config, "a dumped config loads back equal"
        print(f"\nRound trip through {path.name}: ok")
        print("Only the fields that differ from the defaults:")
        print(hyperstate.dumps(config, elide_defaults=True))


if __name__ == "__main__":
    main()
