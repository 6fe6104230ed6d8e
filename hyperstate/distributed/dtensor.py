"""DTensors: how a sharded tensor is planned for a save, and laid out again on restore.

A ``DTensor`` with ``Shard`` placements is saved as its shards, each written by one rank
that holds it, at its global offset. When the layout follows the rule of a mesh (the
ranks numbered row-major, each mesh dimension cutting one tensor dimension as
``torch.chunk`` does: every ``Shard`` placement, and FSDP2's ``_StridedShard``), the
record is one :class:`~hyperstate.tensors.codec.Grid` whatever the number of ranks, and
no rank reports its shards to rank 0; otherwise the shards are listed. On restore, each
rank reads only the shards that overlap its part of the target's layout (which may
differ from the saved one: another mesh, another number of ranks) and builds its local
tensor from them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from hyperstate.errors import StateError, ValuePath, format_path
from hyperstate.ron import Struct
from hyperstate.tensors.codec import Grid
from hyperstate.tensors.context import PartsOf
from hyperstate.tensors.dtypes import dtype_name

__all__ = ["DTensorPart", "plan_dtensor", "reshard"]


class DTensorPart(NamedTuple):
    """What this rank holds of a ``DTensor``, for the plan of a save."""

    node: Struct  # its record in the tree (listed shards are filled in after the write)
    local: Any  # the local tensor
    placement: str  # "grid" (record complete), "sharded" (listed), or replicated's
    at: tuple[int, ...] = ()  # global offset of the local shard
    writes: bool = True  # whether this rank writes the shard (one per set of replicas)


def plan_dtensor(
    obj: Any,
    where: ValuePath,
    placement: str,
    *,
    key: str | None = None,
    files: str | None = None,
    meshes: dict[int, tuple[Any, bool]] | None = None,
) -> DTensorPart:
    """A ``DTensor``: replicated, or a shard written by one of the ranks that hold it.

    With ``key`` and ``files`` (the pattern of every rank's blob file) a layout that
    follows the rule of its mesh is recorded as a ``Grid`` whose shards are entries
    ``key`` of those files; ``meshes`` caches, per mesh, whether its ranks are numbered
    row-major (a check that costs a pass over every rank of the mesh).

    Raises:
        StateError: a placement other than ``Shard``/``Replicate`` (``Partial``), or a
            ``_StridedShard`` whose shards are not contiguous blocks of the tensor.
    """
    from torch.distributed.tensor import Replicate, Shard

    local = obj.to_local()
    placements = tuple(obj.placements)
    bad = [p for p in placements if not isinstance(p, Replicate | Shard) and not _strided(p)]
    if bad:
        raise StateError(
            f"{format_path(where)} is a DTensor with placements {placements}; expected Shard "
            "or Replicate (redistribute() a Partial tensor before saving it)"
        )
    if all(isinstance(p, Replicate) for p in placements):
        return DTensorPart(Struct("Tensor", {}), local, placement)
    mesh = obj.device_mesh
    shape = tuple(int(n) for n in obj.shape)
    extent = tuple(int(n) for n in local.shape)
    grid, at, expected = _layout(obj, where, files or "", key or "")
    if any(_strided(p) for p in placements) and expected != extent:
        raise StateError(
            f"{format_path(where)}: expected a local shard of shape {expected} for "
            f"placements {placements} on a mesh of shape {tuple(mesh.shape)}, found {extent}"
        )
    # Ranks that differ only along replicated mesh dimensions hold the same shard: the
    # one at coordinate 0 of those dimensions writes it.
    coordinate = mesh.get_coordinate() or []
    writes = local.numel() > 0 and all(  # an empty shard (more ranks than rows) is not written
        c == 0 for c, p in zip(coordinate, placements, strict=False) if isinstance(p, Replicate)
    )
    fields: dict[str, Any] = {"dtype": dtype_name(local.dtype), "shape": shape, "shards": []}
    if local.device.type != "cpu":
        fields["device"] = str(local.device)
    if key is not None and files is not None and _row_major(mesh, meshes):
        box = grid.box(shape, coordinate)
        # torch's own layout is the proof that the rule holds (an empty shard has no offset).
        if box[1] == extent and (box[0] == at or local.numel() == 0):
            fields["shards"] = grid.record()
            return DTensorPart(Struct("Tensor", fields), local, "grid", at, writes)
    return DTensorPart(Struct("Tensor", fields), local, "sharded", at, writes)


def _layout(
    obj: Any, where: ValuePath, files: str = "", key: str = ""
) -> tuple[Grid, tuple[int, ...], tuple[int, ...]]:
    """The :class:`~hyperstate.tensors.codec.Grid` that states ``obj``'s layout (refused
    by :func:`_cuts` when its local parts are not contiguous blocks), and the global
    offset and shape of this rank's part.

    The part is the grid's for a ``_StridedShard`` (torch lists every index of such a
    shard to give its first one: a second per large tensor; ``_cuts`` admits only those
    whose shards are the blocks the rule gives, which the tests check against torch's
    indices), and torch's otherwise.
    """
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    mesh, placements = obj.device_mesh, tuple(obj.placements)
    shape = tuple(int(n) for n in obj.shape)
    dims, order = _cuts(shape, tuple(mesh.shape), placements, where)
    grid = Grid(tuple(int(n) for n in mesh.shape), dims, order, files, key)
    if any(_strided(p) for p in placements):
        at, extent = grid.box(shape, mesh.get_coordinate() or [])
        return grid, at, extent
    extent, offset = compute_local_shape_and_global_offset(obj.shape, mesh, placements)
    return grid, tuple(int(o) for o in offset), tuple(int(n) for n in extent)


def _strided(placement: Any) -> bool:
    """Whether ``placement`` is FSDP2's ``_StridedShard`` (not a ``Shard`` subclass)."""
    return type(placement).__name__ == "_StridedShard"


def _cuts(
    shape: tuple[int, ...], mesh: tuple[int, ...], placements: tuple[Any, ...], where: ValuePath
) -> tuple[tuple[int | None, ...], tuple[int, ...]]:
    """The tensor dimension each mesh dimension cuts (None: it holds copies), and the order
    in which they cut, as :class:`~hyperstate.tensors.codec.Grid` states them.

    ``Shard`` placements cut left to right. A ``_StridedShard(d, split_factor=k)`` (FSDP2
    over a tensor-parallel ``Shard(d)``) cuts after the one later mesh dimension of size
    ``k`` that shards ``d``; its shards are contiguous blocks (as the saved offsets and
    the reshard need) when ``k`` divides the dimension, and are refused otherwise.
    """
    dims = [None if not (p.is_shard() or _strided(p)) else p.dim % len(shape) for p in placements]
    order = list(range(len(mesh)))
    for m, p in enumerate(placements):
        if not _strided(p):
            continue
        d = dims[m]
        assert d is not None
        before = [k for k in range(m) if dims[k] == d]
        after = [k for k in range(m + 1, len(mesh)) if dims[k] == d]
        k = p.split_factor
        if before or len(after) != 1 or _strided(placements[after[0]]) or mesh[after[0]] != k:
            raise StateError(
                f"{format_path(where)} is a DTensor with placements {placements} on a mesh of "
                f"shape {mesh}; expected a _StridedShard as FSDP2 makes it (over one later "
                f"Shard({d}) whose mesh dimension has split_factor ranks); redistribute() it"
            )
        if shape[d] % k:
            raise StateError(
                f"{format_path(where)} is a DTensor of shape {shape} with placements "
                f"{placements}: its dimension {d} ({shape[d]}) is not a multiple of "
                f"split_factor {k}, so its shards are not contiguous blocks, which a "
                "checkpoint cannot record; redistribute() it first"
            )
        order.remove(m)
        order.insert(order.index(after[0]) + 1, m)
    return tuple(dims), tuple(order)


def _row_major(mesh: Any, cache: dict[int, tuple[Any, bool]] | None) -> bool:
    """Whether ``mesh`` numbers its ranks 0, 1, ... row-major, as a Grid reads them."""
    known = cache.get(id(mesh)) if cache is not None else None
    if known is not None:
        return bool(known[1])
    ranks = mesh.mesh.flatten().tolist()
    row_major = bool(ranks == list(range(len(ranks))))
    if cache is not None:
        cache[id(mesh)] = (mesh, row_major)  # the mesh kept: its id stays its own
    return row_major


def reshard(target: Any, shape: tuple[int, ...], parts: PartsOf, where: ValuePath) -> Any | None:
    """A ``DTensor`` laid out like ``target`` (a DTensor of the same global shape), filled
    from the saved ``parts`` that overlap this rank's part; None for any other target.

    This is the :class:`~hyperstate.tensors.context.Reshard` of every restore.
    """
    if type(target).__name__ != "DTensor" or tuple(target.shape) != shape:
        return None
    lo, hi = _local_box(target, where)
    return _fit(target, parts(lo, hi), lo, hi, where)


def _local_box(target: Any, where: ValuePath) -> tuple[tuple[int, ...], tuple[int, ...]]:
    _, lo, shape = _layout(target, where)
    return lo, tuple(o + n for o, n in zip(lo, shape, strict=True))


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
