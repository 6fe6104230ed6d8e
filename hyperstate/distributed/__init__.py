"""The rank protocol of a save and a restore: everything that talks across ranks.

Under ``torchrun`` (a default process group is initialised), the manager coordinates all
ranks through :class:`Ranks`: rank 0 chooses the checkpoint to resume from and sends it
to every rank (:mod:`~hyperstate.distributed.restore`); on save every rank plans the same
tensors (:mod:`~hyperstate.distributed.plan`), writes its own blob file (replicated
tensors once in total, ``DTensor`` shards by their owners, ``PerRank`` values by each
rank), and rank 0 commits once every rank succeeded (:mod:`~hyperstate.distributed.save`).
With no process group the same code runs with no-op collectives. See
docs/distributed.md.
"""

from hyperstate.distributed.collectives import DEFAULT_TIMEOUT, Ranks
from hyperstate.distributed.per_rank import PerRank
from hyperstate.distributed.plan import assign
from hyperstate.errors import DistributedError

__all__ = ["DEFAULT_TIMEOUT", "DistributedError", "PerRank", "Ranks", "assign"]
