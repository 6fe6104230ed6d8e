"""The one table of tensor dtypes, and where a saved tensor goes back to (its device).

Every dtype name that a blob file, a ``state.ron`` record or a header may hold is looked
up here, and only here: names from a file are never passed to ``getattr(torch, ...)`` or
``numpy.dtype`` unless this table has them.

>>> ITEMSIZE["bfloat16"], CODES["bfloat16"], NAME_OF_CODE["BF16"]
(2, 'BF16', 'bfloat16')
>>> STORED_AS["complex128"]
('float64', 2)
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import torch

__all__ = [
    "ALIGN",
    "CODES",
    "COMPLEX",
    "INLINE",
    "ITEMSIZE",
    "NAME_OF_CODE",
    "NUMPY_NAMES",
    "STORED_AS",
    "TABLE",
    "DType",
    "dtype_name",
    "is_device_name",
    "target_device",
    "torch_dtype",
]


class DType(NamedTuple):
    """One dtype, by its torch name without ``torch.``.

    Attributes:
        itemsize: bytes per element.
        code: its safetensors dtype code, or None when safetensors cannot name it.
        stored_as: for those: the entry dtype with the same bytes, and the trailing
            dimension the entry adds (0 for none). The record keeps the real dtype.
        numpy: whether numpy has it under the same name.
        inline: whether a 0-d tensor of it is written as text in ``state.ron``.
    """

    itemsize: int
    code: str | None
    stored_as: tuple[str, int] | None = None
    numpy: bool = False
    inline: bool = False


TABLE: dict[str, DType] = {
    "float64": DType(8, "F64", numpy=True, inline=True),
    "float32": DType(4, "F32", numpy=True, inline=True),
    "float16": DType(2, "F16", numpy=True, inline=True),
    "bfloat16": DType(2, "BF16", inline=True),
    "int64": DType(8, "I64", numpy=True, inline=True),
    "int32": DType(4, "I32", numpy=True, inline=True),
    "int16": DType(2, "I16", numpy=True, inline=True),
    "int8": DType(1, "I8", numpy=True, inline=True),
    "uint64": DType(8, "U64", numpy=True, inline=True),
    "uint32": DType(4, "U32", numpy=True, inline=True),
    "uint16": DType(2, "U16", numpy=True, inline=True),
    "uint8": DType(1, "U8", numpy=True, inline=True),
    "bool": DType(1, "BOOL", numpy=True, inline=True),
    "complex64": DType(8, "C64", numpy=True),
    "complex128": DType(16, None, ("float64", 2), numpy=True),
    "complex32": DType(4, None, ("float16", 2)),
    "float8_e4m3fn": DType(1, "F8_E4M3"),
    "float8_e5m2": DType(1, "F8_E5M2"),
    "float8_e4m3fnuz": DType(1, "F8_E4M3FNUZ"),
    "float8_e5m2fnuz": DType(1, "F8_E5M2FNUZ"),
    "float8_e8m0fnu": DType(1, "F8_E8M0"),
    "float4_e2m1fn_x2": DType(1, None, ("uint8", 0)),
}

# Views of the table, for the lookups on hot paths.
ITEMSIZE: dict[str, int] = {name: d.itemsize for name, d in TABLE.items()}
CODES: dict[str, str] = {name: d.code for name, d in TABLE.items() if d.code is not None}
NAME_OF_CODE: dict[str, str] = {code: name for name, code in CODES.items()}
STORED_AS: dict[str, tuple[str, int]] = {
    name: d.stored_as for name, d in TABLE.items() if d.stored_as is not None
}
NUMPY_NAMES: frozenset[str] = frozenset(name for name, d in TABLE.items() if d.numpy)
INLINE: tuple[str, ...] = tuple(name for name, d in TABLE.items() if d.inline)
COMPLEX: frozenset[str] = frozenset({"complex32", "complex64", "complex128"})
# Entries start at multiples of this, so that views of them are aligned.
ALIGN: dict[str, int] = {name: min(size, 8) for name, size in ITEMSIZE.items()}

_NAMES: dict[Any, str] = {}  # torch.dtype -> name, filled as dtypes are seen


def dtype_name(dtype: torch.dtype) -> str:
    """The table's name of a torch dtype (``torch.float32`` -> ``"float32"``)."""
    name = _NAMES.get(dtype)
    if name is None:
        name = _NAMES[dtype] = str(dtype).removeprefix("torch.")
    return name


@functools.cache
def _torch_dtypes() -> dict[str, torch.dtype]:
    import torch

    return {name: getattr(torch, name) for name in TABLE if hasattr(torch, name)}


def torch_dtype(name: str) -> torch.dtype | None:
    """The torch dtype of a table name, or None (not in the table, or not in this torch)."""
    return _torch_dtypes().get(name) if isinstance(name, str) else None


@functools.cache
def _cpu() -> torch.device:
    import torch

    return torch.device("cpu")


@functools.lru_cache(maxsize=64)
def _saved_device(name: str) -> torch.device:
    """The device a tensor was saved from if this process has it, else the CPU."""
    import torch

    try:
        saved = torch.device(name)
    except RuntimeError:
        return _cpu()
    index = saved.index or 0
    if saved.type == "cpu":
        return saved
    if saved.type == "cuda":
        available = torch.cuda.is_available() and index < torch.cuda.device_count()
    else:
        accelerator = getattr(torch, "accelerator", None)
        current = accelerator.current_accelerator() if accelerator is not None else None
        available = (
            current is not None
            and current.type == saved.type
            and index < accelerator.device_count()  # type: ignore[union-attr]
        )
    return saved if available else _cpu()


_DEVICE_RE = re.compile(r"[a-z][a-z0-9_]*(:[0-9]+)?")


def is_device_name(name: object) -> bool:
    """Whether ``name`` is a device a record may say a tensor was saved from: ``cpu``,
    ``cuda:1``, any accelerator's ``type[:index]``; not ``meta`` (a meta tensor has no
    data, so no record holds one).

    >>> is_device_name("cuda:0"), is_device_name("meta"), is_device_name(5)
    (True, False, False)
    """
    return (
        isinstance(name, str)
        and _DEVICE_RE.fullmatch(name) is not None
        and name.partition(":")[0] != "meta"
    )


def target_device(saved: str, map_location: str | torch.device | None = None) -> torch.device:
    """Where a tensor saved from device ``saved`` is loaded.

    ``map_location`` wins, as in ``torch.load``; otherwise the saved device when this
    process has it (CUDA or any other accelerator), else the CPU.
    """
    import torch

    if map_location is None:
        return _saved_device(saved) if saved != "cpu" else _cpu()
    return torch.device(map_location) if isinstance(map_location, str) else map_location
