"""The one codec between the tensor records of ``state.ron`` and the entries of blob files.

A tensor or array in a state is written as one of three records:

* a reference into a blob file, ``Tensor(file: ..., key: ..., dtype: ..., shape: ...,
  checksum: ...)`` (``Array(...)`` for a numpy array; ``stride`` and ``offset`` for a view
  into an entry shared with other tensors; ``device`` when not saved from the CPU);
* a 0-d tensor written inline as text, ``Tensor(dtype: "int64", value: 12)``, so that step
  counters stay readable and editable;
* a tensor saved in shards by several ranks, ``Tensor(dtype: ..., shape: ..., shards:
  [Shard(at: (0, 0), file: ..., key: ..., ...), ...])``, each shard at its global offset;
* the same, for a layout that follows a rule, as one record whatever the number of ranks:
  ``Tensor(dtype: ..., shape: ..., shards: Grid(mesh: (64, 8), dims: (0, 1), files:
  "blobs/rank-#####.safetensors", key: ...))``: the ranks of a mesh cut the tensor as
  ``torch.chunk`` does (see :class:`Grid`), and each shard's checksum is in its blob
  file's own table (:data:`~hyperstate.tensors.safetensors.CHECKSUMS`).

This module turns those records into :class:`~hyperstate.tensors.safetensors.BlobRef` s and
tensors and back, and checks each record before anything is read: the loader, ``convert``
and the ``hyperstate`` command all read tensors through it.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from hyperstate import _fs
from hyperstate.errors import ConfigError, Issue, StateError, ValuePath, format_path
from hyperstate.ron import Struct
from hyperstate.serde import describe
from hyperstate.tensors.dtypes import (
    INLINE,
    dtype_name,
    is_device_name,
    target_device,
    torch_dtype,
)
from hyperstate.tensors.safetensors import BlobReader, BlobRef

if TYPE_CHECKING:
    import torch

__all__ = [
    "Grid",
    "Shard",
    "Sharded",
    "assemble",
    "inline_record",
    "inline_tensor",
    "is_record",
    "rank_file",
    "read",
    "read_entry",
    "read_parts",
    "record_fields",
    "ref_of",
    "sharded_of",
]

ReaderOf = Callable[[str], BlobReader]
"""The reader of a blob file named as records name it (relative to the checkpoint)."""


def is_record(value: Any) -> bool:
    """Whether ``value`` (a node of a parsed ``state.ron``) is a tensor or array record."""
    if type(value) is not Struct or value.name not in ("Tensor", "Array"):
        return False
    fields = value.fields
    return "file" in fields or "value" in fields or "shards" in fields


def record_fields(ref: BlobRef) -> dict[str, Any]:
    """The fields of the record in ``state.ron`` of a written blob entry."""
    fields: dict[str, Any] = {
        "file": ref.file,
        "key": ref.key,
        "dtype": ref.dtype,
        "shape": tuple(ref.shape),
    }
    if ref.stride is not None:
        fields["stride"] = tuple(ref.stride)
        fields["offset"] = ref.offset
    if ref.device != "cpu":
        fields["device"] = ref.device
    fields["checksum"] = ref.checksum
    return fields


def ref_of(record: Struct, where: ValuePath) -> BlobRef:
    """The checked :class:`BlobRef` of a reference record (``Tensor(file: ...)``)."""
    fields = record.fields
    try:
        return BlobRef(
            file=str(fields["file"]),
            key=str(fields["key"]),
            dtype=str(fields["dtype"]),
            shape=tuple(int(s) for s in fields["shape"]),
            kind="numpy" if record.name == "Array" else "torch",
            stride=tuple(int(s) for s in fields["stride"]) if "stride" in fields else None,
            offset=int(fields.get("offset", 0)),
            checksum=str(fields.get("checksum", "")),
            device=str(fields.get("device", "cpu")),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError([Issue(where, f"malformed blob reference {record!r}: {e}")]) from None


def inline_record(tensor: torch.Tensor) -> Struct | None:
    """The inline record of a 0-d tensor whose dtype is written as text, else None."""
    if tensor.dim() != 0:
        return None
    name = dtype_name(tensor.dtype)
    if name not in INLINE:
        return None
    fields: dict[str, Any] = {"dtype": name, "value": tensor.item()}
    if tensor.device.type != "cpu":
        fields["device"] = str(tensor.device)
    return Struct("Tensor", fields)


def inline_tensor(record: Struct, where: ValuePath, map_location: Any = None) -> torch.Tensor:
    """The 0-d tensor of an inline record (``Tensor(dtype: ..., value: ...)``)."""
    import torch

    fields = record.fields
    name = fields.get("dtype", "float32")
    dtype = torch_dtype(name) if isinstance(name, str) and name in INLINE else None
    if dtype is None:  # a fixed list: never look up names from the file
        found = describe(name)
        raise ConfigError(
            [Issue(where, f"expected a dtype among {', '.join(INLINE)}, found {found}")]
        )
    saved = fields.get("device", "cpu")
    if not is_device_name(saved):
        found = describe(saved)
        raise ConfigError(
            [Issue(where, f"expected a device such as 'cpu' or 'cuda:0', found {found}")]
        )
    value = fields.get("value")
    if not isinstance(value, bool | int | float):
        # Only 0-d tensors are written inline; anything larger is in a blob file.
        found = describe(value)
        raise ConfigError(
            [Issue(where, f"expected a number (an inline tensor is 0-d), found {found}")]
        )
    try:
        return torch.tensor(value, dtype=dtype, device=target_device(saved, map_location))
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise ConfigError([Issue(where, f"expected a {name} value, found {e}")]) from None


def read_entry(
    record: Struct, where: ValuePath, reader_of: ReaderOf, map_location: Any = None
) -> Any:
    """The tensor (or numpy array) a reference record points to, checked and verified."""
    ref = ref_of(record, where)
    return reader_of(ref.file).read(ref, map_location=map_location)


class Shard(NamedTuple):
    """One shard of a sharded record: where it starts, its shape, its own record."""

    at: tuple[int, ...]
    shape: tuple[int, ...]
    record: Struct


# The most ranks a Grid may name; a mesh with more is refused before any work.
_MAX_GRID_RANKS = 1 << 24
_GRID_FIELDS = frozenset({"mesh", "dims", "order", "files", "key"})
_RANK_RUN = re.compile(r"[^#]*#{1,12}[^#]*")


def rank_file(files: str, rank: int) -> str:
    """The file of ``rank`` in a file pattern: the one run of ``#`` is the rank, padded
    with zeros to the run's length.

    >>> rank_file("blobs/rank-#####.safetensors", 17)
    'blobs/rank-00017.safetensors'
    """
    start = files.index("#")
    rest = files[start:].lstrip("#")
    return f"{files[:start]}{rank:0{len(files) - start - len(rest)}d}{rest}"


@dataclass(frozen=True)
class Grid:
    """A regular shard layout: the tensor cut by the dimensions of a mesh of ranks.

    ``mesh`` is the mesh's shape; its ranks are numbered row-major (rank ``r`` is at the
    coordinate ``r`` unravels to). Mesh dimension ``m`` cuts tensor dimension
    ``dims[m]`` into ``mesh[m]`` chunks, or holds copies (``None``). The mesh dimensions
    cut in ``order`` (default: ``0, 1, ...``), each cutting every piece made so far
    along its tensor dimension as ``torch.chunk`` does: chunks of ``ceil(n / k)``, the
    last ones smaller or empty. This is how a ``DTensor`` lays out ``Shard`` placements
    (left to right, or, for FSDP2's ``_StridedShard``, right to left). The shard of a
    set of copies is in the file of the one at coordinate 0 of the copying dimensions:
    ``rank_file(files, rank)``, entry ``key``, of exactly the shard's dtype and shape.

    >>> grid = Grid((2, 2), (0, None), (0, 1), "blobs/rank-#####.safetensors", "w")
    >>> grid.cells((5, 3))  # rows 0-2 in rank 0's file, 3-4 in rank 2's (ranks 1, 3: copies)
    [(0, (0, 0), (3, 3)), (2, (3, 0), (2, 3))]
    >>> grid.cells((5, 3), lo=(3, 0), hi=(4, 3))  # only the cells overlapping a box
    [(2, (3, 0), (2, 3))]
    """

    mesh: tuple[int, ...]
    dims: tuple[int | None, ...]
    order: tuple[int, ...]
    files: str
    key: str

    def record(self) -> Struct:
        """The ``Grid(...)`` record (``order`` only when it is not the default)."""
        fields: dict[str, Any] = {"mesh": self.mesh, "dims": self.dims}
        if self.order != tuple(range(len(self.mesh))):
            fields["order"] = self.order
        fields["files"] = self.files
        fields["key"] = self.key
        return Struct("Grid", fields)

    def box(
        self, shape: tuple[int, ...], coordinate: list[int] | tuple[int, ...]
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The global offset and shape of the shard of the rank at mesh ``coordinate``
        (an empty one starts where its piece ends).

        >>> Grid((4,), (0,), (0,), "f-#", "w").box((5, 3), [3])
        ((5, 0), (0, 3))
        """
        at, extent = [], []
        for d, n in enumerate(shape):
            a, b = 0, n
            for m in self.order:
                if self.dims[m] == d:
                    chunk = -(-(b - a) // self.mesh[m])
                    a = min(a + coordinate[m] * chunk, b)
                    b = min(a + chunk, b)
            at.append(a)
            extent.append(b - a)
        return tuple(at), tuple(extent)

    def cells(
        self,
        shape: tuple[int, ...],
        lo: tuple[int, ...] | None = None,
        hi: tuple[int, ...] | None = None,
    ) -> list[tuple[int, tuple[int, ...], tuple[int, ...]]]:
        """The non-empty shards of a tensor of ``shape`` that overlap the box ``[lo,
        hi)`` (all of them without a box), as (rank, global offset, shape).

        The chunks that overlap a box are found by division, not by visiting every rank:
        a resume with the same layout costs one cell per tensor, not one per rank.
        """
        # Per tensor dimension: (mesh coordinates so far, start, stop) of its pieces.
        per_dim: list[list[tuple[tuple[tuple[int, int], ...], int, int]]] = []
        for d, n in enumerate(shape):
            low, high = (0, n) if lo is None or hi is None else (lo[d], hi[d])
            pieces: list[tuple[tuple[tuple[int, int], ...], int, int]] = [((), 0, n)]
            for m in self.order:
                if self.dims[m] != d:
                    continue
                k = self.mesh[m]
                cut = []
                for coords, a, b in pieces:
                    chunk = -(-(b - a) // k)
                    if chunk == 0:
                        continue
                    first = max(0, (low - a) // chunk)
                    last = min(k - 1, (high - 1 - a) // chunk)
                    for i in range(first, last + 1):
                        start = a + i * chunk
                        stop = min(start + chunk, b)
                        if start < stop and start < high and stop > low:
                            cut.append(((*coords, (m, i)), start, stop))
                pieces = cut
            per_dim.append([p for p in pieces if p[1] < p[2] and p[1] < high and p[2] > low])
        strides = [math.prod(self.mesh[m + 1 :]) for m in range(len(self.mesh))]
        out = []
        for combo in itertools.product(*per_dim):
            rank = sum(strides[m] * i for coords, _, _ in combo for m, i in coords)
            at = tuple(start for _, start, _ in combo)
            extent = tuple(stop - start for _, start, stop in combo)
            out.append((rank, at, extent))
        return out


@dataclass(frozen=True)
class Sharded:
    """A checked sharded record: the global tensor and its shards, which tile it exactly
    (listed one by one in ``shards``, or given by the rule ``grid``)."""

    dtype: str
    shape: tuple[int, ...]
    shards: tuple[Shard, ...]
    grid: Grid | None = None
    device: str = "cpu"

    def shard_where(self, where: ValuePath, i: int) -> ValuePath:
        """The value path of shard ``i``'s record, for messages."""
        return (*where, "shards", i)

    def shard_ref(self, i: int) -> Struct:
        """Shard ``i`` as a reference record of its own (with the tensor's dtype)."""
        fields = {"dtype": self.dtype, **self.shards[i].record.fields}
        fields.pop("at", None)
        return Struct("Tensor", fields)


# A shard layout is checked on a grid of the shards' own boundaries; a layout needing
# more cells than this (no sharding strategy makes one) is refused before any work.
_MAX_GRID_CELLS = 1 << 22


def sharded_of(record: Struct, where: ValuePath) -> Sharded:
    """The checked shards of a ``Tensor(dtype, shape, shards: [...])`` record, or of
    ``Tensor(dtype, shape, shards: Grid(...))``.

    Listed shards must tile the global shape exactly: each inside its bounds, none
    overlapping another, no element left out. This is checked on the records alone,
    before anything is read or allocated. A grid tiles it by construction; its record is
    checked whole (every field, the mesh's size bounded, the file pattern inside the
    checkpoint), and each shard read must be an entry of exactly its dtype and shape.
    """
    fields = record.fields
    if type(fields.get("shards")) is Struct:
        return _grid_of(record, where)
    try:
        shape = _dims(fields["shape"], "shape")
        dtype = fields["dtype"]
        if not isinstance(dtype, str):
            raise TypeError(f"expected a dtype name, found {dtype!r}")
        shards = []
        for s in fields["shards"]:
            if type(s) is not Struct:
                raise TypeError("each shard must be Shard(at: (...), ...)")
            at = _dims(s.fields["at"], "at")
            extent = _dims(s.fields["shape"], "shape")
            if len(at) != len(shape) or len(extent) != len(shape):
                raise ValueError(
                    "each shard must be Shard(at: (...), shape: (...), ...) of the tensor's rank"
                )
            shards.append(Shard(at, extent, s))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ConfigError([Issue(where, f"malformed sharded tensor: {e}")]) from None
    if torch_dtype(dtype) is None:
        raise ConfigError([Issue(where, f"unsupported dtype {dtype!r} of a sharded tensor")])
    problem = _tiling_problem(shape, shards)
    if problem is not None:
        raise StateError(f"{format_path(where)}: the shards of a {shape} tensor {problem}")
    return Sharded(dtype, shape, tuple(shards))


def _grid_of(record: Struct, where: ValuePath) -> Sharded:
    fields = record.fields
    grid = fields["shards"]
    try:
        shape = _dims(fields.get("shape"), "shape")
        dtype = fields.get("dtype")
        if not isinstance(dtype, str) or torch_dtype(dtype) is None:
            raise ValueError(f"expected a dtype name, found {dtype!r}")
        device = fields.get("device", "cpu")
        if not is_device_name(device):
            raise ValueError(f"expected a device such as 'cpu' or 'cuda:0', found {device!r}")
        if grid.name != "Grid" or not _GRID_FIELDS.issuperset(grid.fields):
            unknown = sorted(set(grid.fields) - _GRID_FIELDS)
            raise ValueError(
                f"expected shards: Grid(mesh, dims, [order,] files, key), found {grid.name}"
                + (f" with field(s) {', '.join(unknown)}" if unknown else "")
            )
        g = grid.fields
        mesh = _dims(g.get("mesh"), "mesh")
        if not mesh or 0 in mesh or math.prod(mesh) > _MAX_GRID_RANKS:
            raise ValueError(
                f"expected mesh as a tuple of positive ints with at most {_MAX_GRID_RANKS} "
                f"ranks in all, found {mesh!r}"
            )
        dims = g.get("dims")
        if (
            type(dims) not in (tuple, list)
            or len(dims) != len(mesh)
            or not all(d is None or (type(d) is int and 0 <= d < len(shape)) for d in dims)
        ):
            raise ValueError(
                f"expected dims as one tensor dimension (0 to {len(shape) - 1}) or None per "
                f"mesh dimension, found {dims!r}"
            )
        order = g.get("order", tuple(range(len(mesh))))
        if (
            type(order) not in (tuple, list)
            or not all(type(m) is int for m in order)
            or sorted(order) != list(range(len(mesh)))
        ):
            raise ValueError(f"expected order as a permutation of the mesh dims, found {order!r}")
        files, key = g.get("files"), g.get("key")
        if not isinstance(files, str) or _RANK_RUN.fullmatch(files) is None:
            raise ValueError(
                f"expected files as a path with one run of 1 to 12 '#' (the rank), found {files!r}"
            )
        _fs.check_relpath(rank_file(files, 0))
        if not isinstance(key, str) or not key:
            raise ValueError(f"expected key as a non-empty string, found {key!r}")
    except (TypeError, ValueError) as e:
        raise ConfigError([Issue(where, f"malformed sharded tensor: {e}")]) from None
    rule = Grid(mesh, tuple(dims), tuple(order), files, key)
    return Sharded(dtype, shape, (), rule, device)


def _dims(value: Any, what: str) -> tuple[int, ...]:
    if type(value) not in (tuple, list) or not all(
        type(n) is int and 0 <= n < 1 << 62 for n in value
    ):
        raise ValueError(f"expected {what} as a tuple of non-negative ints, found {value!r}")
    return tuple(value)


def _tiling_problem(shape: tuple[int, ...], shards: list[Shard]) -> str | None:
    """What keeps ``shards`` from tiling ``shape`` exactly, or None when they do."""
    import numpy as np

    for i, shard in enumerate(shards):
        for a, n, dim in zip(shard.at, shard.shape, shape, strict=True):
            if a + n > dim:
                return f"do not fit: shard {i} at {shard.at} of shape {shard.shape} reaches past it"
    total = math.prod(shape)
    covered = sum(math.prod(s.shape) for s in shards)
    if covered != total:
        return f"cover {covered} of {total} elements"
    if total == 0:
        return None
    # Cut each dimension at every shard's boundaries: each shard is then a box of grid
    # cells, and the shards tile the tensor exactly when every cell is covered once.
    cuts = [
        sorted({0, dim, *(s.at[d] for s in shards), *(s.at[d] + s.shape[d] for s in shards)})
        for d, dim in enumerate(shape)
    ]
    cells = math.prod(len(c) - 1 for c in cuts)
    if cells > max(_MAX_GRID_CELLS, 4 * len(shards)):
        return f"are laid out irregularly ({cells} grid cells for {len(shards)} shards)"
    count = np.zeros([len(c) - 1 for c in cuts], dtype=np.int32)
    for s in shards:
        box = tuple(
            slice(bisect.bisect_left(c, a), bisect.bisect_left(c, a + n))
            for c, a, n in zip(cuts, s.at, s.shape, strict=True)
        )
        count[box] += 1
    if (count != 1).any():
        return "overlap (and so leave elements out)"
    return None


def assemble(sharded: Sharded, parts: list[tuple[tuple[int, ...], Any]]) -> torch.Tensor:
    """The whole tensor of ``sharded`` from its ``parts`` (global offset, tensor), which
    :func:`sharded_of` checked tile it."""
    import torch

    dtype = torch_dtype(sharded.dtype)
    assert dtype is not None  # sharded_of checked it
    device = parts[0][1].device if parts else torch.device("cpu")
    whole = torch.empty(sharded.shape, dtype=dtype, device=device)
    for at, part in parts:
        whole[tuple(slice(a, a + n) for a, n in zip(at, part.shape, strict=True))] = part
    return whole


def read_parts(
    sharded: Sharded,
    where: ValuePath,
    reader_of: ReaderOf,
    map_location: Any = None,
    lo: tuple[int, ...] | None = None,
    hi: tuple[int, ...] | None = None,
) -> list[tuple[tuple[int, ...], Any]]:
    """The (global offset, tensor) parts of ``sharded`` that overlap the box ``[lo,
    hi)`` (all of them without a box), read and verified; only those are read."""
    out = []
    if sharded.grid is None:
        for i, shard in enumerate(sharded.shards):
            if lo is not None and hi is not None and not _overlaps(shard, lo, hi):
                continue
            entry = read_entry(
                sharded.shard_ref(i), sharded.shard_where(where, i), reader_of, map_location
            )
            out.append((shard.at, entry))
        return out
    grid = sharded.grid
    for rank, at, extent in grid.cells(sharded.shape, lo, hi):
        reader = reader_of(rank_file(grid.files, rank))
        # The checksum from the file's own table; without one, the whole file's.
        ref = BlobRef(
            reader.file,
            grid.key,
            sharded.dtype,
            extent,
            checksum=reader.checksum_of(grid.key) if reader.verify else "",
            device=sharded.device,
        )
        out.append((at, reader.read(ref, map_location=map_location)))
    return out


def _overlaps(shard: Shard, lo: tuple[int, ...], hi: tuple[int, ...]) -> bool:
    return all(
        a < h and a + n > low for a, n, low, h in zip(shard.at, shard.shape, lo, hi, strict=True)
    )


def read(record: Struct, where: ValuePath, reader_of: ReaderOf, map_location: Any = None) -> Any:
    """The whole tensor or array of any record: inline, a reference, or shards."""
    fields = record.fields
    if "value" in fields and "file" not in fields:
        return inline_tensor(record, where, map_location)
    if "shards" in fields and "file" not in fields:
        sharded = sharded_of(record, where)
        return assemble(sharded, read_parts(sharded, where, reader_of, map_location))
    return read_entry(record, where, reader_of, map_location)
