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

from hyperstate import distributed
from hyperstate.args import from_args
from hyperstate.configs import dump, dumps, load, loads
from hyperstate.distributed import DistributedError
from hyperstate.errors import ConfigError, HyperstateError, Issue, ParseError
from hyperstate.manager import CheckpointPolicy, HyperState, StateManager
from hyperstate.schedule import ScheduleError
from hyperstate.schema.cli import schema_evolution_cli
from hyperstate.schema.versioned import Versioned
from hyperstate.state import Blob, Lazy, PerRank, Serializable, StateError
from hyperstate.storage import StorageError

__version__ = "0.1.0"

__all__ = [
    "Blob",
    "CheckpointPolicy",
    "ConfigError",
    "DistributedError",
    "HyperState",
    "HyperstateError",
    "Issue",
    "Lazy",
    "ParseError",
    "PerRank",
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
