"""hyperstate: typed hyperparameter configs in RON, and the state of training runs.

>>> from dataclasses import dataclass
>>> import hyperstate
>>> @dataclass
... class Config:
...     lr: float = 0.001
...     batch_size: int = 32
>>> hyperstate.load(Config, overrides=["lr=0.1"])
Config(lr=0.1, batch_size=32)
"""

from hyperstate import distributed, typeinfo
from hyperstate.args import from_args
from hyperstate.configs import dump, dumps, load, loads
from hyperstate.distributed import per_rank
from hyperstate.errors import (
    BlobError,
    ConfigError,
    ConvertError,
    DistributedError,
    HyperstateError,
    Issue,
    ParseError,
    Preempted,
    ScheduleError,
    StateError,
    StorageError,
)
from hyperstate.manager import CheckpointPolicy, HyperState, StateManager
from hyperstate.schema.versioned import Versioned
from hyperstate.tensors import nodes
from hyperstate.tensors.nodes import Blob, Lazy, Serializable
from hyperstate.tools.schema_cli import schema_evolution_cli

PerRank = per_rank.PerRank

# The one place where node kinds defined above serde reach the schema tree (see
# docs/architecture.md): tensors, Serializable, stateful objects, Blob[T], PerRank[T].
typeinfo.register(nodes.EXTENSION)
typeinfo.register(per_rank.EXTENSION)

__version__ = "0.5.0"

__all__ = [
    "Blob",
    "BlobError",
    "CheckpointPolicy",
    "ConfigError",
    "ConvertError",
    "DistributedError",
    "HyperState",
    "HyperstateError",
    "Issue",
    "Lazy",
    "ParseError",
    "PerRank",
    "Preempted",
    "ScheduleError",
    "Serializable",
    "StateError",
    "StateManager",
    "StorageError",
    "Versioned",
    "__version__",
    "distributed",
    "dump",
    "dumps",
    "from_args",
    "load",
    "loads",
    "schema_evolution_cli",
]
