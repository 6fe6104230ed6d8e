"""The rank protocol of a save and a restore: everything that talks across ranks.

Under ``torchrun`` (a default process group is initialised), the manager coordinates all
ranks through :class:`Ranks`: rank 0 chooses the checkpoint to resume from and sends it
to every rank (:mod:`~hyperstate.distributed.restore`); on save every rank plans the same
tensors (:mod:`~hyperstate.distributed.plan`), writes its own blob file (replicated
tensors once in total, ``DTensor`` shards by their owners, ``PerRank`` values by each
rank), and rank 0 commits once every rank succeeded (:mod:`~hyperstate.distributed.save`).
With no process group the same code runs with no-op collectives. See
docs/distributed.md.

``torch.distributed.checkpoint`` saves and loads hyperstate checkpoints through
:class:`StorageWriter` and :class:`StorageReader` (:mod:`~hyperstate.distributed.dcp`),
imported on first use so that ``import hyperstate`` does not import torch.
"""

from typing import TYPE_CHECKING, Any

from hyperstate.distributed.collectives import DEFAULT_TIMEOUT, Ranks
from hyperstate.distributed.per_rank import PerRank
from hyperstate.distributed.plan import assign
from hyperstate.errors import DistributedError

if TYPE_CHECKING:
    from hyperstate.distributed.dcp import StorageReader, StorageWriter

__all__ = [
    "DEFAULT_TIMEOUT",
    "DistributedError",
    "PerRank",
    "Ranks",
    "StorageReader",
    "StorageWriter",
    "assign",
]


def __getattr__(name: str) -> Any:
    # The DCP storage layers subclass torch's: importing them imports torch.
    if name in ("StorageReader", "StorageWriter"):
        from hyperstate.distributed import dcp

        return getattr(dcp, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
