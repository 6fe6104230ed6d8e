"""DTensors: how a sharded tensor is planned for a save, and laid out again on restore.

A ``DTensor`` with ``Shard`` placements is saved as its shards, each written by one rank
that holds it, at its global offset. On restore, each rank reads only the shards that
overlap its part of the target's layout (which may differ from the saved one: another
mesh, another number of ranks) and builds its local tensor from them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from hyperstate.errors import StateError, ValuePath, format_path
from hyperstate.ron import Struct
from hyperstate.tensors.context import PartsOf
from hyperstate.tensors.dtypes import dtype_name

__all__ = ["DTensorPart", "plan_dtensor", "reshard"]


class DTensorPart(NamedTuple):
    """What this rank holds of a ``DTensor``, for the plan of a save."""

    node: Struct  # its record in the tree (the shards are filled in after the write)
    local: Any  # the local tensor
    placement: str  # "sharded", or the plan's placement of a replicated one
    at: tuple[int, ...] = ()  # global offset of the local shard
    writes: bool = True  # whether this rank writes the shard (one per set of replicas)


def plan_dtensor(obj: Any, where: ValuePath, placement: str) -> DTensorPart:
    """A ``DTensor``: replicated, or a shard written by one of the ranks that hold it."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    local = obj.to_local()
    placements = tuple(obj.placements)
    bad = [p for p in placements if not isinstance(p, Replicate | Shard)]
    if bad:
        raise StateError(
            f"{format_path(where)} is a DTensor with placements {placements}; expected Shard "
            "or Replicate (redistribute() a Partial tensor before saving it)"
        )
    if all(isinstance(p, Replicate) for p in placements):
        return DTensorPart(Struct("Tensor", {}), local, placement)
    mesh = obj.device_mesh
    _, offset = compute_local_shape_and_global_offset(obj.shape, mesh, placements)
    # Ranks that differ only along replicated mesh dimensions hold the same shard: the
    # one at coordinate 0 of those dimensions writes it.
    coordinate = mesh.get_coordinate() or []
    writes = local.numel() > 0 and all(  # an empty shard (more ranks than rows) is not written
        c == 0 for c, p in zip(coordinate, placements, strict=False) if not p.is_shard()
    )
    fields: dict[str, Any] = {
        "dtype": dtype_name(local.dtype),
        "shape": tuple(int(n) for n in obj.shape),
        "shards": [],
    }
    if local.device.type != "cpu":
        fields["device"] = str(local.device)
    at = tuple(int(o) for o in offset)
    return DTensorPart(Struct("Tensor", fields), local, "sharded", at, writes)


def reshard(target: Any, shape: tuple[int, ...], parts: PartsOf, where: ValuePath) -> Any | None:
    """A ``DTensor`` laid out like ``target`` (a DTensor of the same global shape), filled
    from the saved ``parts`` that overlap this rank's part; None for any other target.

    This is the :class:`~hyperstate.tensors.context.Reshard` of every restore.
    """
    if type(target).__name__ != "DTensor" or tuple(target.shape) != shape:
        return None
    lo, hi = _local_box(target)
    return _fit(target, parts(lo, hi), lo, hi, where)


def _local_box(target: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(
        target.shape, target.device_mesh, target.placements
    )
    lo = tuple(int(o) for o in offset)
    return lo, tuple(o + int(n) for o, n in zip(lo, shape, strict=True))


def _fit(
    target: Any,
    parts: list[tuple[tuple[int, ...], Any]],
    lo: tuple[int, ...],
    hi: tuple[int, ...],
    where: ValuePath,
) -> Any:
    import torch
    from torch.distributed.tensor import DTensor

    shape = tuple(h - low for low, h in zip(lo, hi, strict=True))
    device = target.to_local().device
    exact = [
        part
        for at, part in parts
        if at == lo and tuple(part.shape) == shape and part.dtype == target.dtype
    ]
    if exact and exact[0].device == device:
        # The usual resume (same layout): the shard read is this rank's part, no copy.
        local = exact[0]
    else:
        local = torch.empty(shape, dtype=target.dtype, device=device)
        filled = 0
        for at, part in parts:
            if part.dim() != len(lo):
                raise StateError(
                    f"{format_path(where)}: saved with {part.dim()} dimensions, the target "
                    f"has {len(lo)}"
                )
            src, dst = [], []
            for a, n, low, h in zip(at, part.shape, lo, hi, strict=True):
                start, stop = max(a, low), min(a + n, h)
                if start >= stop:
                    break
                src.append(slice(start - a, stop - a))
                dst.append(slice(start - low, stop - low))
            else:
                region = part[tuple(src)]
                local[tuple(dst)] = region
                filled += int(region.numel())
        if filled != local.numel():
            raise StateError(
                f"{format_path(where)}: the checkpoint covers {filled} of the {local.numel()} "
                f"elements of this rank's part of a {tuple(target.shape)} tensor (was the "
                "tensor saved with another shape?)"
            )
    return DTensor.from_local(
        local,
        target.device_mesh,
        target.placements,
        run_check=False,
        shape=target.shape,
        stride=target.stride(),
    )
