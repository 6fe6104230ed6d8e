"""Which rank writes which tensor of a checkpoint (no communication: every rank computes
the same answer from the same plan)."""

from __future__ import annotations

from collections.abc import Sequence

from hyperstate.state import Planned

__all__ = ["assign"]


def assign(items: Sequence[Planned], rank: int, world_size: int) -> list[int]:
    """Indices of the ``items`` that ``rank`` writes.

    Replicated tensors are written once in total: tensors sharing storage form one group,
    and groups go, largest first, to the rank with the fewest bytes so far (ties to the
    lowest rank), so all ranks write about the same amount in parallel. A shard is written
    by the rank that holds it (one per set of replicas); per-rank values by their rank.
    """
    sizes: dict[int, int] = {}
    for item in items:
        if item.placement == "replicated":
            sizes[item.group] = max(sizes.get(item.group, 0), item.nbytes)
    loads = [0] * world_size
    owner: dict[int, int] = {}
    for group in sorted(sizes, key=lambda g: (-sizes[g], g)):
        least = min(range(world_size), key=lambda r: (loads[r], r))
        owner[group] = least
        loads[least] += sizes[group]
    owned = []
    for i, item in enumerate(items):
        if item.placement == "replicated":
            if owner[item.group] == rank:
                owned.append(i)
        elif item.placement == "rank" or item.writes:
            owned.append(i)
    return owned
