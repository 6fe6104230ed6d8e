"""Distributed checkpointing: everything that talks to ``torch.distributed``.

Under ``torchrun`` (a default process group is initialised), ``StateManager`` /
``HyperState`` coordinate all ranks through :class:`Ranks`: rank 0 writes the text files
and ``COMMITTED``, every rank writes its own blob file (replicated tensors once in total,
shards by their owners, ``PerRank`` values by each rank), and a checkpoint commits only
when every rank succeeded. With no process group the same code runs with no-op
collectives. See docs/distributed.md.
"""

from hyperstate import manager as _manager
from hyperstate.distributed.collectives import DEFAULT_TIMEOUT, DistributedError, Ranks
from hyperstate.distributed.plan import assign

_manager.COORDINATOR = Ranks  # managers coordinate through Ranks (no-ops with one rank)

__all__ = ["DEFAULT_TIMEOUT", "DistributedError", "Ranks", "assign"]
