"""The one codec between the tensor records of ``state.ron`` and the entries of blob files.

A tensor or array in a state is written as one of three records:

* a reference into a blob file, ``Tensor(file: ..., key: ..., dtype: ..., shape: ...,
  checksum: ...)`` (``Array(...)`` for a numpy array; ``stride`` and ``offset`` for a view
  into an entry shared with other tensors; ``device`` when not saved from the CPU);
* a 0-d tensor written inline as text, ``Tensor(dtype: "int64", value: 12)``, so that step
  counters stay readable and editable;
* a tensor saved in shards by several ranks, ``Tensor(dtype: ..., shape: ..., shards:
  [Shard(at: (0, 0), file: ..., key: ..., ...), ...])``, each shard at its global offset.

This module turns those records into :class:`~hyperstate.tensors.safetensors.BlobRef` s and
tensors and back, and checks each record before anything is read: the loader, ``convert``
and the ``hyperstate`` command all read tensors through it.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

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
    "Shard",
    "Sharded",
    "assemble",
    "inline_record",
    "inline_tensor",
    "is_record",
    "read",
    "read_entry",
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


@dataclass(frozen=True)
class Sharded:
    """A checked sharded record: the global tensor and its shards, which tile it exactly."""

    dtype: str
    shape: tuple[int, ...]
    shards: tuple[Shard, ...]

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
    """The checked shards of a ``Tensor(dtype, shape, shards: [...])`` record.

    The shards must tile the global shape exactly: each inside its bounds, none
    overlapping another, no element left out. This is checked on the records alone,
    before anything is read or allocated.
    """
    fields = record.fields
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


def read(record: Struct, where: ValuePath, reader_of: ReaderOf, map_location: Any = None) -> Any:
    """The whole tensor or array of any record: inline, a reference, or shards."""
    fields = record.fields
    if "value" in fields and "file" not in fields:
        return inline_tensor(record, where, map_location)
    if "shards" in fields and "file" not in fields:
        sharded = sharded_of(record, where)
        parts = [
            (
                shard.at,
                read_entry(
                    sharded.shard_ref(i), sharded.shard_where(where, i), reader_of, map_location
                ),
            )
            for i, shard in enumerate(sharded.shards)
        ]
        return assemble(sharded, parts)
    return read_entry(record, where, reader_of, map_location)
