"""Bring tensors from other checkpoint formats into hyperstate, and take them out again.

Importing writes a committed checkpoint (``config.ron``, ``state.ron``, a safetensors blob
file, then ``COMMITTED``) under a run directory, from

* a ``torch.save`` file, read with ``torch.load(..., weights_only=True)``;
* a safetensors file;
* a ``torch.distributed.checkpoint`` (DCP) directory, read without running pickled code
  (see :func:`read_dcp`).

Exporting writes every tensor of a checkpoint (or of one subtree) to one safetensors file,
the state (or one subtree) as a nested dict to one ``torch.save`` file, or the same dict as
a standard DCP directory that plain ``dcp.load`` reads; the name of the destination says
which (:func:`export_format`).

The module also holds the read-only view of a ``state.ron`` value tree that the
``hyperstate`` command shows and diffs: :func:`tensor_info` recognises a tensor reference
without reading any tensor bytes, :func:`children` and :func:`resolve` walk the tree by
field path.

>>> import tempfile, torch
>>> run = tempfile.mkdtemp()
>>> info = write_checkpoint({"fc.weight": torch.ones(2, 3)}, run, number=7)
>>> info.number, sorted(info.manifest.files)
(7, ['blobs/rank-00000.safetensors', 'config.ron', 'state.ron'])
>>> from pathlib import Path
>>> from hyperstate import ron
>>> tree = ron.loads(Path(info.path, "state.ron").read_text())
>>> tensor_info(resolve(tree, "model.fc.weight")).describe()
'Tensor float32[2, 3] 24 B'
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import math
import os
import pickle
import pickletools
import re
import reprlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from hyperstate import _fs, ron
from hyperstate.distributed.collectives import Ranks
from hyperstate.distributed.save import CheckpointSave
from hyperstate.errors import (
    ConvertError,
    HyperstateError,
    StateError,
    StorageError,
    first_line,
    format_int,
)
from hyperstate.ron import Some, Struct, TupleStruct
from hyperstate.serde import did_you_mean, encode_plain
from hyperstate.storage import (
    COMMITTED,
    CONFIG_FILE,
    STATE_FILE,
    CheckpointInfo,
    CheckpointStore,
    checkpoint_at,
)
from hyperstate.tensors import codec
from hyperstate.tensors.dtypes import ITEMSIZE
from hyperstate.tensors.safetensors import BlobReader, BlobWriter

if TYPE_CHECKING:
    import torch

__all__ = [
    "EXPORT_FORMATS",
    "ConvertError",
    "Format",
    "Segment",
    "TensorInfo",
    "children",
    "detect_format",
    "export",
    "export_dcp",
    "export_format",
    "export_safetensors",
    "export_torch",
    "dotted_name",
    "format_size",
    "import_checkpoint",
    "is_container",
    "iter_tensors",
    "parse_path",
    "read_any",
    "read_dcp",
    "read_safetensors",
    "read_tensor",
    "read_torch_save",
    "resolve",
    "tensor_info",
    "type_name",
    "write_checkpoint",
]

Format = Literal["hyperstate", "dcp", "torch", "safetensors"]
"""The formats :func:`detect_format` tells apart."""

Segment = str | int
"""A step into a value tree: a struct field or string map key, or a list index or int key."""

ExportFormat = Literal["safetensors", "torch", "dcp"]

EXPORT_FORMATS: dict[str, ExportFormat] = {
    ".safetensors": "safetensors",
    ".pt": "torch",
    ".pth": "torch",
    ".bin": "torch",
    ".ckpt": "torch",
    ".dcp": "dcp",
}
"""The file name endings an export understands, and the format each one means."""

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# ---------------------------------------------------------------------------------------
# The tree of state.ron, read without tensor bytes


@dataclass(frozen=True)
class TensorInfo:
    """What ``state.ron`` says about one tensor: enough to show and compare it.

    Attributes:
        kind: the reference's struct name: ``"Tensor"``, ``"Array"``, or the name of a
            reference form this version does not know (a sharded tensor, say).
        dtype: the dtype name (``"float32"``).
        shape: the (global) shape.
        nbytes: bytes of the whole tensor, when the dtype is known.
        checksum: ``"xxh3-64:..."`` of the stored bytes, when recorded.
        value: the value of a 0-d tensor written inline as text, else None.
        inline: whether the tensor is written inline (no blob file).
        shards: the number of shards, for a reference with a ``shards`` list.
        device: the device it was saved from, when not the CPU.
    """

    kind: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int | None
    checksum: str | None = None
    value: Any = None
    inline: bool = False
    shards: int | None = None
    device: str | None = None

    def describe(self) -> str:
        """One line: ``Tensor float32[8, 4] 128 B`` or ``Tensor float32 = 3.0``."""
        if self.inline:
            return f"{self.kind} {self.dtype} = {ron.dumps(self.value)}"
        text = f"{self.kind} {self.dtype}[{', '.join(map(format_int, self.shape))}]"
        if self.nbytes is not None:
            text += f" {format_size(self.nbytes)}"
        if self.shards is not None:
            text += f", {self.shards} shard{'s' if self.shards != 1 else ''}"
        if self.device is not None:
            text += f" ({self.device})"
        return text


def tensor_info(value: Any) -> TensorInfo | None:
    """The tensor that a node of a ``state.ron`` tree refers to, or None if it is no tensor.

    Recognises ``Tensor(file: ..., key: ..., dtype: ..., shape: ...)`` and ``Array(...)``
    references into blob files, 0-d tensors written inline
    (``Tensor(dtype: "float32", value: 3.0)``), and, so that newer reference forms show
    as tensors too, any struct whose name contains ``Tensor`` or ``Array`` or that has a
    ``shards`` list, with a string ``dtype`` and an int-tuple ``shape``. Reads no bytes.
    """
    if type(value) is not Struct:
        return None
    fields = value.fields
    dtype = fields.get("dtype")
    if not isinstance(dtype, str):
        return None
    name = value.name or ""
    device = fields.get("device")
    device = device if isinstance(device, str) and device != "cpu" else None
    if name in ("Tensor", "Array") and "value" in fields and "file" not in fields:
        return TensorInfo(name, dtype, (), ITEMSIZE.get(dtype), None, fields["value"], True)
    shape = fields.get("shape")
    if not isinstance(shape, tuple | list) or not all(type(n) is int and n >= 0 for n in shape):
        return None
    shards = fields.get("shards")
    known = name in ("Tensor", "Array") and "file" in fields and "key" in fields
    if not (known or "Tensor" in name or "Array" in name or isinstance(shards, list)):
        return None
    itemsize = ITEMSIZE.get(dtype)
    checksum = fields.get("checksum")
    return TensorInfo(
        kind=name,
        dtype=dtype,
        shape=tuple(shape),
        nbytes=None if itemsize is None else math.prod(shape) * itemsize,
        checksum=checksum if isinstance(checksum, str) and checksum else None,
        shards=len(shards) if isinstance(shards, list) else _grid_shards(value),
        device=device,
    )


def _grid_shards(record: Struct) -> int | None:
    """The number of non-empty shards of a ``shards: Grid(...)`` record (from its rule,
    reading nothing), or None for another record or a malformed one."""
    if type(record.fields.get("shards")) is not Struct:
        return None
    try:
        sharded = codec.sharded_of(record, ())
    except HyperstateError:
        return None
    return len(sharded.grid.cells(sharded.shape)) if sharded.grid is not None else None


def _is_wrapper(value: Any) -> bool:
    """``Sequential(state: {...})``: how a module, optimizer or ``Serializable`` is written."""
    return (
        type(value) is Struct
        and value.name is not None
        and len(value.fields) == 1
        and "state" in value.fields
        and type(value.fields["state"]) in (dict, Struct)
    )


def children(value: Any) -> list[tuple[Segment, Any]]:
    """The children of a tree node as ``(segment, child)``, in order; ``[]`` for a leaf.

    A tensor reference is a leaf. The ``state`` level of a stateful object
    (``Adam(state: {...})``) is skipped, so paths read ``optimizer.param_groups``.
    Map keys other than strings and ints are named by their RON text.
    """
    kind = type(value)
    if kind is Struct:
        if tensor_info(value) is not None:
            return []
        if _is_wrapper(value):
            return children(value.fields["state"])
        return list(value.fields.items())
    if kind is dict:
        return [(_segment(k), v) for k, v in value.items()]
    if kind is list or kind is tuple:
        return list(enumerate(value))
    if kind is TupleStruct:
        return list(enumerate(value.items))
    if kind is Some:
        return children(value.value)
    return []


def _segment(key: Any) -> Segment:
    if type(key) is str or type(key) is int:
        return key
    return ron.dumps(key)


def is_container(value: Any) -> bool:
    """Whether a node has children in :func:`children`'s sense (a tensor has none)."""
    kind = type(value)
    if kind is Struct:
        return tensor_info(value) is None
    if kind is Some:
        return is_container(value.value)
    return kind in (dict, list, tuple, TupleStruct)


def type_name(value: Any) -> str | None:
    """The struct or tuple-struct name of a node (``Sequential`` for a wrapper), if any."""
    if type(value) is Struct or type(value) is TupleStruct:
        return value.name
    if type(value) is Some:
        return type_name(value.value)
    return None


def dotted_name(path: tuple[Segment, ...] | list[Segment]) -> str:
    """The flat name of a tensor (or node) by its path: ``("optimizer", "state", 0,
    "exp_avg")`` -> ``optimizer.state[0].exp_avg``.

    Unlike :func:`hyperstate.errors.format_path`, map keys are joined as they are, so a
    state dict's ``fc.weight`` under ``model`` is named ``model.fc.weight``, the name
    ``load_state_dict`` expects of an exported file.
    """
    out = ""
    for seg in path:
        if type(seg) is int:
            out += f"[{format_int(seg)}]"
        else:
            out += f".{seg}" if out else str(seg)
    return out


def parse_path(text: str) -> list[Segment]:
    """``optimizer.state[0].exp_avg`` -> ``["optimizer", "state", 0, "exp_avg"]``.

    A dotted map key (``model.0.weight`` in a state dict) is matched by :func:`resolve`,
    which joins segments back as needed.
    """
    out: list[Segment] = []
    for index, name in re.findall(r"\[(-?\d+)\]|([^.\[\]]+)", text):
        out.append(int(index) if index else name)
    if not out:
        raise ConvertError(f"expected a field path such as optimizer.lr, found {text!r}")
    return out


def resolve(tree: Any, path: str | list[Segment]) -> Any:
    """The node at a field path (``"optimizer.lr"``, ``"model.fc1.weight"``, ``"x[0]"``).

    Map keys that contain dots match (``model.0.weight`` finds the key ``"0.weight"``
    of the model's state dict), and ``.0`` finds an int key or list index as ``[0]``
    does. The ``state`` level of stateful objects may be named or left out.

    Raises:
        ConvertError: no such field; says which part was not found and suggests the
            closest name.
    """
    segments = parse_path(path) if isinstance(path, str) else list(path)
    node = tree
    done: list[Segment] = []
    i = 0
    while i < len(segments):
        if segments[i] == "state" and _is_wrapper(node):
            node = node.fields["state"]
            i += 1
            continue
        kids = children(node)
        found = None
        for j in range(len(segments), i, -1):
            wanted = segments[i:j]
            for seg, child in kids:
                if _matches(seg, wanted):
                    found = (j, seg, child)
                    break
            if found is not None:
                break
        if found is None:
            where = dotted_name(done) or "the top level"
            names = [str(s) for s, _ in kids]
            if not kids:
                raise ConvertError(f"{where} has no fields (it is a value), so no {segments[i]!r}")
            hint = did_you_mean(str(segments[i]), names)
            raise ConvertError(
                f"{where} has no field {segments[i]!r}" + (f"; {hint}" if hint else "")
            )
        i, seg, node = found
        done.append(seg)
    return node


def _matches(seg: Segment, wanted: list[Segment]) -> bool:
    if len(wanted) == 1:
        one = wanted[0]
        if type(seg) is int:
            return seg == one or (isinstance(one, str) and one == str(seg))
        return seg == one
    if type(seg) is not str or not all(isinstance(w, str) for w in wanted):
        return False
    return seg == ".".join(str(w) for w in wanted)


def iter_tensors(
    tree: Any, path: tuple[Segment, ...] = ()
) -> Iterator[tuple[tuple[Segment, ...], TensorInfo, Struct]]:
    """Every tensor reference in a tree: ``(path, info, node)``, depth first, in order.

    ``Blob(...)`` values (opaque RON text kept in a blob file) are not tensors and are
    skipped.
    """
    info = tensor_info(tree)
    if info is not None:
        yield path, info, tree
        return
    if type(tree) is Struct and tree.name == "Blob" and set(tree.fields) == {"ron"}:
        return
    for seg, child in children(tree):
        yield from iter_tensors(child, (*path, seg))


def format_size(nbytes: int) -> str:
    """``1536`` -> ``1.5 KiB``; a size past any real file (a damaged record's) in bytes,
    abbreviated as :func:`~hyperstate.errors.format_int` does."""
    if nbytes >= 1 << 63:
        return f"{format_int(nbytes)} B"
    size = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def read_tensor(directory: str, node: Struct, readers: dict[str, BlobReader]) -> torch.Tensor:
    """Read the tensor a record points to (on the CPU, checksum verified), whole.

    ``directory`` is the directory of the ``state.ron`` the node comes from; ``readers``
    caches one :class:`~hyperstate.tensors.safetensors.BlobReader` per blob file between
    calls. Numpy arrays come back as tensors that share their memory.
    """
    import torch

    if not codec.is_record(node):
        if tensor_info(node) is None:
            raise ConvertError(f"expected a tensor reference, found {node!r}")
        raise ConvertError(f"cannot read a {node.name} reference with this version of hyperstate")

    def reader_of(file: str) -> BlobReader:
        reader = readers.get(file)
        if reader is None:
            reader = readers[file] = BlobReader(directory, file)
        return reader

    value = codec.read(node, (), reader_of, map_location="cpu")
    return value if isinstance(value, torch.Tensor) else torch.from_numpy(value)


# ---------------------------------------------------------------------------------------
# Reading other formats


def detect_format(path: str) -> Format:
    """Which format ``path`` holds, from its content (and its name as a last resort).

    A directory with ``COMMITTED`` (a checkpoint) or with committed checkpoints under it
    (a run directory) is ``"hyperstate"``; one with ``.metadata`` is ``"dcp"``. A file
    that starts like a zip archive or a pickle is ``"torch"``; one that starts with a
    safetensors header is ``"safetensors"``.
    """
    fs, fs_path = _fs.url_to_fs(path)
    fs_path = fs_path.rstrip("/") or "/"
    if fs.isdir(fs_path):
        if checkpoint_at(path) is not None or CheckpointStore(path).latest() is not None:
            return "hyperstate"
        if fs.exists(f"{fs_path}/.metadata"):
            return "dcp"
        raise ConvertError(
            f"{path}: a directory that is neither a hyperstate checkpoint (no {COMMITTED}) "
            "nor a torch.distributed.checkpoint (no .metadata)"
        )
    try:
        with _fs.open_from(fs, fs_path, path) as f:  # a FIFO or a device is refused
            head = f.read(16)
    except FileNotFoundError:
        raise ConvertError(f"{path}: no such file or directory") from None
    except StorageError as e:
        raise ConvertError(f"{path}: {e.reason}") from None
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "torch"
    if len(head) > 8 and head[8:9] == b"{":
        return "safetensors"
    if path.endswith(".safetensors"):
        return "safetensors"
    if path.endswith((".pt", ".pth", ".bin", ".ckpt")):
        return "torch"
    raise ConvertError(f"{path}: cannot tell its format; name it with --from")


def read_torch_save(path: str) -> Any:
    """What ``torch.save`` wrote to ``path``, loaded with ``weights_only=True`` on the CPU.

    ``weights_only`` unpickles only tensors and plain containers and values, so a file
    from a stranger cannot run code; a file that needs more is refused with a
    :class:`ConvertError`. Local zip-format files are memory-mapped.
    """
    import torch

    fs, fs_path = _fs.url_to_fs(path)
    try:
        if _fs.is_local(fs):
            with _fs.open_regular(fs_path, path) as f:
                zipped = f.read(4) == b"PK\x03\x04"
            return torch.load(fs_path, map_location="cpu", weights_only=True, mmap=zipped)
        with fs.open(fs_path, "rb") as f:
            return torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConvertError(
            f"{path}: torch.load(weights_only=True) refused it ({first}); only tensors and "
            "plain values are imported, nothing that runs code"
        ) from None
    except FileNotFoundError:
        raise ConvertError(f"{path}: no such file") from None
    except StorageError as e:
        raise ConvertError(f"{path}: {e.reason}") from None
    except RuntimeError as e:
        raise ConvertError(f"{path}: not a torch.save file ({e})") from None


def read_safetensors(path: str) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, on the CPU."""
    from safetensors import SafetensorError
    from safetensors.torch import load, load_file

    fs, fs_path = _fs.url_to_fs(path)
    try:
        if _fs.is_local(fs):
            _fs.open_regular(fs_path, path).close()  # a FIFO or a device is refused
            return load_file(fs_path, device="cpu")
        return load(fs.cat_file(fs_path))
    except SafetensorError as e:
        raise ConvertError(f"{path}: not a safetensors file ({e})") from None
    except FileNotFoundError:
        raise ConvertError(f"{path}: no such file") from None
    except StorageError as e:
        raise ConvertError(f"{path}: {e.reason}") from None


# ---------------------------------------------------------------------------------------
# DCP checkpoints, read without trusting them
#
# A .metadata file is a pickle. It is checked in three steps before DCP reads a byte of
# tensor data: its opcodes (_pickle_problem, before anything is unpickled), the classes
# it names (_MetadataUnpickler), and the records it holds (_dcp_layout, then the files
# they name). What passes describes a state dict that DCP can read in memory bounded by
# the size of the files.

_MAX_METADATA_BYTES = 1 << 30
"""The largest ``.metadata`` read: 1 GiB. DCP writes about 150 bytes per tensor chunk,
so this is some seven million chunks; checking it takes seconds per 10 MiB."""

_MAX_RANK = 64
"""The most dimensions of a tensor in DCP metadata (torch's own limit)."""

_MAX_NAME = 4096
"""The longest file name (``relative_path``) in DCP metadata, in characters."""

# The opcodes a protocol 2-5 pickler writes for plain data and objects. Left out: those
# that call out of the pickle (persistent ids, the copyreg extension registry, out-of-band
# buffers), protocol 0-1 forms (INST, OBJ, text ints and strings, PUT/GET by decimal
# text) and DUP, none of which a DCP pickle contains.
# fmt: off
_PICKLE_OPCODES = frozenset([
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "NONE", "NEWTRUE", "NEWFALSE",
    "BININT", "BININT1", "BININT2", "LONG1", "LONG4", "BINFLOAT",
    "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8",
    "SHORT_BINBYTES", "BINBYTES", "BINBYTES8", "BYTEARRAY8",
    "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
    "EMPTY_LIST", "APPEND", "APPENDS", "EMPTY_DICT", "SETITEM", "SETITEMS",
    "EMPTY_SET", "ADDITEMS", "FROZENSET",
    "GLOBAL", "STACK_GLOBAL", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD",
    "BINPUT", "LONG_BINPUT", "MEMOIZE", "BINGET", "LONG_BINGET",
])
# fmt: on
_STRINGS = frozenset(["SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"])
_GETS = frozenset(["BINGET", "LONG_BINGET"])
_FILLS = frozenset(["APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS"])


def _stack_effects() -> dict[str, tuple[int | None, int, int]]:
    """Per opcode: how many values below a MARK it takes (None: it takes no MARK), how
    many values it takes, how many it leaves; from pickletools' description of each."""
    effects = {}
    for op in pickletools.opcodes:
        if op.name in _PICKLE_OPCODES:
            before, after = op.stack_before, op.stack_after
            below = (
                before.index(pickletools.markobject) if pickletools.markobject in before else None
            )
            effects[op.name] = (below, len(before), len(after))
    return effects


_STACK_EFFECTS = _stack_effects()
# Opcodes that only push a plain value.
_PUSHES = frozenset(
    name
    for name, effect in _STACK_EFFECTS.items()
    if effect == (None, 0, 1) and name not in _STRINGS | _GETS | {"GLOBAL", "MARK"}
)

_DCP_METADATA = "torch.distributed.checkpoint.metadata"
_DCP_FILESYSTEM = "torch.distributed.checkpoint.filesystem"
# DCP's records: the classes whose fresh instances a pickle may fill in (BUILD).
_DCP_RECORDS = frozenset(
    [
        *(
            (_DCP_METADATA, name)
            for name in (
                "Metadata",
                "TensorStorageMetadata",
                "BytesStorageMetadata",
                "ChunkStorageMetadata",
                "TensorProperties",
                "MetadataIndex",
                "StorageMeta",
            )
        ),
        (_DCP_FILESYSTEM, "_StorageInfo"),
    ]
)
# The globals a DCP .metadata pickle names: DCP's records and the torch and pathlib values
# inside them (dtypes are looked up apart). Nothing else is looked up, so the pickle
# cannot call code.
_DCP_GLOBALS = frozenset(
    [
        *_DCP_RECORDS,
        (_DCP_METADATA, "_MEM_FORMAT_ENCODING"),
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),
        ("collections", "OrderedDict"),
        *(
            (module, name)
            for module in ("pathlib", "pathlib._local")
            for name in ("Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath")
        ),
    ]
)

# What the opcode check knows of a value on the pickle's stack.
_RECORD = ("record",)  # a fresh instance of one of _DCP_RECORDS (NEWOBJ)
_TagOf = Any  # None (any other value), _RECORD, ("str", s) or ("global", module, name)


def _pickle_problem(data: bytes) -> str | None:
    """What makes ``data`` unfit to unpickle as DCP metadata, or None.

    Every opcode is read (with :mod:`pickletools`, which reads only what is there) and
    its effect on the stack followed, so that the unpickler never sees:

    * a memo index out of order: the C unpickler grows its memo to twice the largest
      index, so a 9-byte pickle storing entry ``2**30`` would take 16 GiB; a pickler
      numbers its entries in order, so an index may be at most the number stored so far;
    * a length (of a string, bytes or a frame) longer than the data that follows;
    * an opcode outside :data:`_PICKLE_OPCODES`, or a protocol other than 2 to 5;
    * BUILD on anything but a fresh DCP record: it sets attributes, and on a class or an
      enum member that the pickle named it would change them for the whole process.
    """
    if len(data) < 2 or data[0] != pickle.PROTO[0] or not 2 <= data[1] <= 5:
        return f"expected a pickle of protocol 2 to 5, found {_shown(data[:2])} first"
    stack: list[_TagOf] = []
    marks: list[int] = []
    memo: list[_TagOf] = []
    end = -1
    value: Any
    try:
        for op, value, at in pickletools.genops(data):
            name = op.name
            # The common cases first: a DCP pickle is mostly these.
            if name == "MEMOIZE":
                if len(stack) <= (marks[-1] if marks else 0):
                    return f"MEMOIZE at byte {at} has no value to store"
                memo.append(stack[-1])
                continue
            if name in _GETS:
                if value >= len(memo):
                    return f"{name} at byte {at} fetches memo entry {value} of {len(memo)}"
                stack.append(memo[value])
                continue
            if name in _PUSHES:
                stack.append(None)
                continue
            effect = _STACK_EFFECTS.get(name)
            if effect is None or (name == "PROTO" and at):
                return f"found the opcode {name} at byte {at}, which DCP metadata has no use for"
            floor = marks[-1] if marks else 0
            if name == "MARK":
                marks.append(len(stack))
            elif name == "POP" and marks and marks[-1] == len(stack):
                marks.pop()
            elif name in ("BINPUT", "LONG_BINPUT"):
                if len(stack) <= floor:
                    return f"{name} at byte {at} has no value to store"
                if value > len(memo):
                    return (
                        f"{name} at byte {at} stores memo entry {value} when {len(memo)} are "
                        "stored (a pickler numbers them in order)"
                    )
                if value == len(memo):
                    memo.append(stack[-1])
                else:
                    memo[value] = stack[-1]
            elif name == "FRAME":
                if value > len(data) - (at or 0) - 9:
                    return f"a frame of {value} bytes at byte {at} runs past the end"
            elif name != "PROTO":
                below, takes, leaves = effect
                if below is not None:
                    if not marks:
                        return f"{name} at byte {at} has no MARK"
                    del stack[marks.pop() :]
                    floor = marks[-1] if marks else 0
                    takes = below
                if len(stack) - takes < floor:
                    return f"{name} at byte {at} takes {takes} values, found {len(stack) - floor}"
                taken = stack[len(stack) - takes :]
                del stack[len(stack) - takes :]
                tag: _TagOf = None
                if name == "GLOBAL":
                    module, _, attr = value.partition(" ")
                    tag = ("global", module, attr)
                elif name == "STACK_GLOBAL":
                    if not all(type(t) is tuple and t[0] == "str" for t in taken):
                        return f"STACK_GLOBAL at byte {at} needs two strings"
                    tag = ("global", taken[0][1], taken[1][1])
                elif name in _STRINGS:
                    tag = ("str", value) if len(value) <= 256 else None
                elif name in ("NEWOBJ", "NEWOBJ_EX"):
                    cls = taken[0]
                    record = type(cls) is tuple and cls[0] == "global" and cls[1:] in _DCP_RECORDS
                    tag = _RECORD if record else None
                elif name == "BUILD":
                    if taken[0] is not _RECORD:
                        target = taken[0]
                        what = (
                            f"{target[1]}.{target[2]} itself"
                            if type(target) is tuple and target[0] == "global"
                            else "a value that is not a new DCP record"
                        )
                        return f"BUILD at byte {at} sets attributes of {what}"
                    tag = _RECORD
                elif name in _FILLS:
                    tag = taken[0]
                if name == "STOP":
                    end = at or 0
                elif leaves:
                    stack.append(tag)
    except Exception as e:  # genops: ValueError (and its subclasses) on what is no pickle
        return f"not a pickle ({_reason(e)})"
    if end < 0:
        return "not a pickle (no STOP)"
    if end + 1 != len(data):
        return f"{len(data) - end - 1} bytes follow the end of the pickle"
    return None


@functools.cache
def _torch_dtypes() -> dict[str, Any]:
    """The dtypes of the ``torch`` module by name (``float32``, ``bfloat16``, ...).

    Read from ``vars(torch)``: ``getattr(torch, name)`` would import a submodule such as
    ``torch._dynamo`` or ``torch.onnx`` for a name in a pickle.
    """
    import torch

    return {name: v for name, v in vars(torch).items() if isinstance(v, torch.dtype)}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's ``.metadata`` with a fixed list of globals (Python's "restricting
    globals" recipe), instead of the plain ``pickle.load`` that DCP's reader uses."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _DCP_GLOBALS:
            return super().find_class(module, name)
        if module == "torch":
            dtype = _torch_dtypes().get(name)
            if dtype is not None:
                return dtype
        named = f"{module}.{name}"
        if len(named) > 120 or not named.isprintable():
            named = _shown(named)
        raise pickle.UnpicklingError(
            f"refusing {named}: not part of torch.distributed.checkpoint metadata"
        )


# A safe, short rendering of a value from a hostile file, for messages.
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlevel = 2
_MISSING = object()


def _shown(value: Any) -> str:
    if value is _MISSING:
        return "nothing"
    if value is None or isinstance(value, str | bytes | int | float | tuple | list | dict):
        try:
            return _REPR.repr(value)
        except Exception:  # an int too long to print, say
            pass
    return f"a {type(value).__name__}"


def _reason(error: BaseException) -> str:
    """``KeyError: 'x'``: one short line for any exception."""
    message = first_line(error)
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _attr(record: Any, name: str) -> Any:
    """A field of a record from the pickle, or _MISSING (NEWOBJ without BUILD sets none)."""
    return getattr(record, name, _MISSING)


def _dims(value: Any) -> tuple[int, ...] | None:
    if not isinstance(value, tuple) or len(value) > _MAX_RANK:
        return None
    if not all(_is_count(n) for n in value):
        return None
    return tuple(value)


def _is_count(value: Any) -> bool:
    return type(value) is int and 0 <= value < 1 << 62


@dataclass(frozen=True)
class _Span:
    """Where a DCP entry's bytes are: ``length`` bytes at ``offset`` of file ``file``."""

    file: str
    offset: int
    length: int
    entry: str


_CHUNK = Struct("Chunk", {})  # codec's tiling check reads a shard's place, not its record


def _dcp_layout(metadata: Any, where: str) -> list[_Span]:
    """Check DCP metadata record by record; return where every entry is stored.

    Each tensor's chunks must tile it exactly (checked on the records, before anything
    is allocated) and each chunk's bytes fit in its storage entry; entries must be
    stored in plain relative files, without transforms, without sharing bytes; DCP's
    key paths (``planner_data``) must rebuild the state dict without conflict. So DCP
    allocates no more for its tensors than the files hold.

    Raises:
        ConvertError: naming ``where`` (the ``.metadata`` file), the record, and what
            was expected and found.
    """
    import torch
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        BytesStorageMetadata,
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        StorageMeta,
        TensorProperties,
        TensorStorageMetadata,
    )

    def bad(what: str, expected: str, found: Any) -> ConvertError:
        return ConvertError(f"{where}: {what}: expected {expected}, found {_shown(found)}")

    if type(metadata) is not Metadata:
        raise bad("the pickle", "DCP Metadata", metadata)
    entries = _attr(metadata, "state_dict_metadata")
    storage = _attr(metadata, "storage_data")
    meta = _attr(metadata, "storage_meta")
    if type(entries) is not dict:
        raise bad("state_dict_metadata", "a dict of tensor and bytes entries", entries)
    if type(storage) is not dict:
        raise bad("storage_data", "a dict of where each entry is stored", storage)
    if meta is not None and type(meta) is not StorageMeta:
        raise bad("storage_meta", "None or a StorageMeta", meta)

    stored: dict[tuple[str, tuple[int, ...] | None], _Span] = {}
    for index, info in storage.items():
        if type(index) is not MetadataIndex:
            raise bad("a key of storage_data", "a MetadataIndex", index)
        fqn, offset = _attr(index, "fqn"), _attr(index, "offset")
        if type(fqn) is not str:
            raise bad("a key of storage_data", "an entry name (a string)", fqn)
        at = f"storage_data[{_shown(fqn)}]"
        dims = None if offset is None else _dims(offset)
        if offset is not None and dims is None:
            raise bad(f"{at}.offset", "None or a torch.Size", offset)
        if offset is not None:
            at = f"storage_data[{_shown(fqn)} at {_shown(dims)}]"
        if type(info) is not _StorageInfo:
            raise bad(at, "a _StorageInfo", info)
        file = _attr(info, "relative_path")
        if type(file) is not str or len(file) > _MAX_NAME:
            raise bad(f"{at}.relative_path", f"a file name of at most {_MAX_NAME} characters", file)
        try:
            _fs.check_relpath(file)
        except ValueError as e:
            raise ConvertError(f"{where}: {at}.relative_path: {e}") from None
        start, length = _attr(info, "offset"), _attr(info, "length")
        if not _is_count(start):
            raise bad(f"{at}.offset", "a byte offset (an int >= 0)", start)
        if not _is_count(length):
            raise bad(f"{at}.length", "a byte count (an int >= 0)", length)
        transforms = _attr(info, "transform_descriptors")
        if not (transforms is None or (type(transforms) in (list, tuple) and not transforms)):
            raise bad(
                f"{at}.transform_descriptors",
                "none (compressed or otherwise transformed entries are not imported)",
                transforms,
            )
        stored[(fqn, dims)] = _Span(file, start, length, fqn)

    def span_of(fqn: str, dims: tuple[int, ...] | None, at: str) -> _Span:
        span = stored.get((fqn, dims))
        if span is None:
            raise ConvertError(f"{where}: {at}: expected an entry in storage_data, found none")
        return span

    for fqn, entry in entries.items():
        if type(fqn) is not str:
            raise bad("a key of state_dict_metadata", "an entry name (a string)", fqn)
        at = f"state_dict_metadata[{_shown(fqn)}]"
        if type(entry) is BytesStorageMetadata:
            span_of(fqn, None, at)
            continue
        if type(entry) is not TensorStorageMetadata:
            raise bad(at, "TensorStorageMetadata or BytesStorageMetadata", entry)
        properties = _attr(entry, "properties")
        dtype = _attr(properties, "dtype")
        if type(properties) is not TensorProperties or type(dtype) is not torch.dtype:
            raise bad(f"{at}.properties", "TensorProperties with a torch dtype", properties)
        size, chunks = _dims(_attr(entry, "size")), _attr(entry, "chunks")
        if size is None:
            expected = f"a torch.Size of at most {_MAX_RANK} dims"
            raise bad(f"{at}.size", expected, _attr(entry, "size"))
        if type(chunks) is not list:
            raise bad(f"{at}.chunks", "a list of ChunkStorageMetadata", chunks)
        shards = []
        for i, chunk in enumerate(chunks):
            cat = f"{at}.chunks[{i}]"
            if type(chunk) is not ChunkStorageMetadata:
                raise bad(cat, "ChunkStorageMetadata", chunk)
            offsets, sizes = _dims(_attr(chunk, "offsets")), _dims(_attr(chunk, "sizes"))
            if offsets is None or sizes is None or not len(offsets) == len(sizes) == len(size):
                expected = f"offsets and sizes as a torch.Size of {len(size)} dims each"
                raise bad(cat, expected, (_attr(chunk, "offsets"), _attr(chunk, "sizes")))
            nbytes = math.prod(sizes) * dtype.itemsize
            span = span_of(fqn, offsets, cat)
            if nbytes > span.length:
                raise ConvertError(
                    f"{where}: {cat}: expected its {nbytes} bytes ({dtype} {list(sizes)}) in "
                    f"storage, found an entry of {span.length} bytes"
                )
            shards.append(codec.Shard(offsets, sizes, _CHUNK))
        problem = codec._tiling_problem(size, shards)
        if problem is not None:
            raise ConvertError(f"{where}: {at}: the chunks of a {list(size)} tensor {problem}")

    _check_key_paths(_attr(metadata, "planner_data"), entries, where)

    spans = sorted(stored.values(), key=lambda s: (s.file, s.offset, s.length))
    for a, b in itertools.pairwise(spans):
        if a.file == b.file and b.offset < a.offset + a.length:
            raise ConvertError(
                f"{where}: storage_data: expected every entry stored in bytes of its own, "
                f"found {_shown(a.entry)} and {_shown(b.entry)} sharing bytes of {a.file}"
            )
    return spans


def _check_key_paths(paths: Any, entries: dict[str, Any], where: str) -> None:
    """DCP rebuilds the state dict by setting each entry at its key path
    (``planner_data``, ``("optimizer", "state", "0", "exp_avg")``), growing lists to
    each index. The paths must join to their entry's name, and agree: no value also a
    container, no container both a dict and a list, and no list with a gap (DCP cannot
    load one, and a gap of 2**40 would be allocated)."""
    if paths is not None and type(paths) is not dict:
        raise ConvertError(f"{where}: planner_data: expected a dict, found {_shown(paths)}")
    # A tree of the paths: node = [kind, children, max index + 1].
    root: dict[Any, list[Any]] = {}
    lists: list[tuple[str, list[Any]]] = []
    for fqn in entries:
        path = (fqn,) if paths is None or fqn not in paths else paths[fqn]
        at = f"planner_data[{_shown(fqn)}]"
        if (
            type(path) is not tuple
            or not 0 < len(path) <= len(fqn) + 1
            or type(path[0]) is not str
            or not all(type(s) is str or _is_count(s) for s in path)
            or ".".join(map(str, path)) != fqn
        ):
            raise ConvertError(
                f"{where}: {at}: expected a tuple of keys and indices that joins to "
                f"{_shown(fqn)}, found {_shown(path)}"
            )
        children = root
        for depth, seg in enumerate(path):
            last = depth == len(path) - 1
            kind = "value" if last else "list" if type(path[depth + 1]) is int else "dict"
            node = children.get(seg)
            if node is None:
                node = children[seg] = [kind, {}, 0]
                if kind == "list":
                    lists.append((fqn, node))
            elif node[0] != kind or last:
                raise ConvertError(
                    f"{where}: {at}: expected key paths that agree, found {_shown(path)} "
                    f"making {_shown(list(path[: depth + 1]))} both a {node[0]} and a {kind}"
                )
            if kind == "list":
                node[2] = max(node[2], path[depth + 1] + 1)
            children = node[1]
    for fqn, node in lists:
        if node[2] != len(node[1]):
            raise ConvertError(
                f"{where}: planner_data: expected lists without gaps, found one of "
                f"{len(node[1])} items reaching index {node[2] - 1} (at {_shown(fqn)})"
            )


def _check_dcp_files(fs: Any, root: str, url: str, spans: list[_Span]) -> None:
    """Every file that the metadata names is a regular file inside the checkpoint
    directory (no link out of it), and holds the bytes of its entries."""
    ends: dict[str, _Span] = {}
    for span in spans:
        last = ends.get(span.file)
        if last is None or span.offset + span.length > last.offset + last.length:
            ends[span.file] = span
    for file, span in ends.items():
        file_url = f"{url}/{file}"
        try:
            with _fs.open_from(fs, f"{root}/{file}", file_url, within=root) as f:
                size = f.seek(0, os.SEEK_END)
        except FileNotFoundError:
            raise ConvertError(f"{file_url}: no such file (storage_data names it)") from None
        except (StorageError, OSError) as e:
            raise ConvertError(str(e) if isinstance(e, StorageError) else _reason(e)) from None
        if span.offset + span.length > size:
            raise ConvertError(
                f"{file_url}: expected at least {span.offset + span.length} bytes (entry "
                f"{_shown(span.entry)} ends there), found {size}"
            )


def read_dcp(path: str) -> dict[str, Any]:
    """The whole state dict of a ``torch.distributed.checkpoint`` directory, on the CPU.

    Sharded tensors come back whole (every shard is read into one tensor), in one
    process. DCP's own reader unpickles ``.metadata`` with plain ``pickle`` and non-tensor
    values with ``torch.load(weights_only=False)``, either of which would run code from
    the file; here ``.metadata`` (of at most 1 GiB) has its opcodes checked, is read with
    a fixed list of allowed classes, and its records are checked before DCP reads
    anything (files inside the directory, byte ranges inside the files, chunks that tile
    their tensors), and every value is read with ``weights_only=True``. Tensors are read
    by DCP itself (with ``weights_only=True``). This uses DCP's private loader
    (``state_dict_loader._load_state_dict`` with ``_EmptyStateDictLoadPlanner``, as
    ``torch.distributed.checkpoint.format_utils.dcp_to_torch_save`` does), so it may need
    a change for a future torch. Entries stored with transforms (compression) are not
    imported.

    Note DCP's flattening: int keys of nested dicts (an optimizer's ``state`` by param
    index) come back as strings.

    Raises:
        ConvertError: anything wrong with the directory, its metadata or its files.
    """
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader
    from torch.distributed.checkpoint._traverse import set_element
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.filesystem import FileSystemReader
    from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    from hyperstate.distributed.dcp import load_value

    fs, fs_path = _fs.url_to_fs(path)
    local = _fs.is_local(fs)
    base: type[FileSystemReader] = FileSystemReader if local else FsspecReader
    root = fs_path.rstrip("/") or "/"
    url = path.rstrip("/") or "/"
    where = f"{url}/.metadata"

    try:
        with _fs.open_from(fs, f"{root}/.metadata", where, within=root) as f:
            data = f.read(_MAX_METADATA_BYTES + 1)
    except FileNotFoundError:
        raise ConvertError(f"{path}: not a torch.distributed.checkpoint (no .metadata)") from None
    except (StorageError, OSError) as e:
        raise ConvertError(str(e) if isinstance(e, StorageError) else _reason(e)) from None
    if len(data) > _MAX_METADATA_BYTES:
        raise ConvertError(f"{where}: expected at most {_MAX_METADATA_BYTES} bytes, found more")
    problem = _pickle_problem(data)
    if problem is not None:
        raise ConvertError(f"{where}: refused: {problem}")
    try:
        metadata = _MetadataUnpickler(io.BytesIO(data), fix_imports=False).load()
    except pickle.UnpicklingError as e:
        raise ConvertError(f"{where}: {first_line(e)}") from None
    except Exception as e:  # an allowed class called with bad arguments, say
        raise ConvertError(f"{where}: not DCP metadata ({_reason(e)})") from None
    del data
    spans = _dcp_layout(metadata, where)
    _check_dcp_files(fs, root, url, spans)
    checked: Metadata = metadata

    class SafeReader(base):  # type: ignore[valid-type,misc]
        def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
            if kwargs.get("rank") is not None:
                raise FileNotFoundError("only the global .metadata is read")
            if checked.storage_meta is None:
                checked.storage_meta = StorageMeta()
            checked.storage_meta.load_id = self.load_id
            return checked

    class SafePlanner(_EmptyStateDictLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            # What the base class does, with weights_only (load_value, shared with the
            # DCP storage writer): its own torch.load would unpickle the file's bytes
            # without it, and so run code they name.
            fqn = read_item.dest_index.fqn
            try:
                obj = load_value(value, fqn)
            except StateError as e:
                raise ConvertError(f"{path}: {e}") from None
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[fqn], obj)
            else:
                self.state_dict[fqn] = obj

    state: dict[str, Any] = {}
    try:
        _load_state_dict(
            state,
            storage_reader=SafeReader(path if not local else fs_path),
            planner=SafePlanner(),  # type: ignore[no-untyped-call]
            no_dist=True,
        )
    except CheckpointException as e:
        # DCP wraps what failed; say that, not DCP's traceback.
        inner = next(iter(e.failures.values()))[0] if e.failures else e
        if isinstance(inner, ConvertError):
            raise inner from None
        raise ConvertError(f"{path}: {_reason(inner)}") from None
    except ConvertError:
        raise
    except Exception as e:
        raise ConvertError(f"{path}: {_reason(e)}") from None
    return state


def read_any(path: str, format: Format | Literal["auto"] = "auto") -> Any:
    """The state dict in a ``torch.save``, safetensors or DCP file or directory."""
    kind = detect_format(path) if format == "auto" else format
    if kind == "torch":
        return read_torch_save(path)
    if kind == "safetensors":
        return read_safetensors(path)
    if kind == "dcp":
        return read_dcp(path)
    raise ConvertError(f"{path} is a hyperstate checkpoint already; export it instead")


# ---------------------------------------------------------------------------------------
# Writing hyperstate checkpoints


def write_checkpoint(
    state: Any,
    run_dir: str | os.PathLike[str],
    *,
    number: int = 0,
    field: str | None = "model",
    stateful: bool = False,
    config_text: str | None = None,
    prefix: str = "step",
) -> CheckpointInfo:
    """Write ``state`` (a state dict) as committed checkpoint ``number`` of ``run_dir``.

    ``state.ron`` holds ``State(<field>: {...})``: the state dict under one field, its
    tensors as references into ``blobs/rank-00000.safetensors``. A state dataclass with a
    field ``model: dict[str, torch.Tensor]`` (or ``Any``) loads it with
    :func:`hyperstate.load`. With ``stateful``, the dict is written as the state of a
    stateful object, ``State(model: Module(state: {...}))``, so that a field typed
    ``nn.Module`` (or an optimizer) loads it with ``load_state_dict``, and the
    checkpoint resumes a :class:`~hyperstate.HyperState` run. With ``field=None`` the
    top-level keys of ``state`` (identifiers, e.g. ``model``, ``optimizer``, ``epoch``)
    become the state's fields.

    ``config_text`` is written as ``config.ron``; by default ``Config()``, which loads as
    the config class's defaults. The checkpoint is written through
    :class:`~hyperstate.storage.CheckpointStore`: files first, ``COMMITTED`` last, so a
    failed import leaves nothing that looks like a checkpoint.

    Raises:
        ConvertError: bad ``field`` or top-level keys.
        StorageError: checkpoint ``number`` exists already, or the write failed.
        ConfigError: a value that RON cannot hold (named by its path).
    """
    if field is None:
        if not isinstance(state, Mapping):
            found = type(state).__name__
            raise ConvertError(f"expected a dict to split into fields, found {found}")
        bad = [k for k in state if not (isinstance(k, str) and _IDENTIFIER.fullmatch(k))]
        if bad:
            raise ConvertError(
                f"top-level keys must be identifiers to become fields, found {bad[0]!r}; "
                "put the whole dict under one field instead"
            )
        fields = dict(state)
    else:
        if not _IDENTIFIER.fullmatch(field):
            raise ConvertError(f"expected a field name (an identifier), found {field!r}")
        fields = {field: state}
    if config_text is None:
        config_text = "Config()\n"
    else:
        ron.loads(config_text, path=CONFIG_FILE)  # refuse a config that does not parse

    def encode() -> Struct:
        values = {}
        for name, value in fields.items():
            encoded = encode_plain(value, (name,))
            values[name] = Struct("Module", {"state": encoded}) if stateful else encoded
        return Struct("State", values)

    store = CheckpointStore(os.fspath(run_dir), prefix=prefix)
    save = CheckpointSave(Ranks.alone(), store, number)
    save.prepare(encode)
    return save.finish({CONFIG_FILE: config_text.encode("utf-8")})


def import_checkpoint(
    source: str,
    run_dir: str | os.PathLike[str],
    *,
    format: Format | Literal["auto"] = "auto",
    number: int = 0,
    field: str | None = "model",
    stateful: bool = False,
    config: str | None = None,
) -> CheckpointInfo:
    """Import a ``torch.save`` file, safetensors file or DCP directory as a checkpoint.

    ``config`` is a config file (any fsspec URL) to record as the checkpoint's
    ``config.ron``. The other arguments are those of :func:`read_any` and
    :func:`write_checkpoint`.
    """
    state = read_any(source, format)
    config_text = _fs.read_text(config) if config is not None else None
    return write_checkpoint(
        state, run_dir, number=number, field=field, stateful=stateful, config_text=config_text
    )


# ---------------------------------------------------------------------------------------
# Exporting


def _state_tree(
    checkpoint: str | os.PathLike[str], select: str | None
) -> tuple[str, str, Any, tuple[Segment, ...]]:
    """(directory, state.ron URL, value tree, path of ``select``) of a checkpoint: the
    whole tree, or the subtree at field path ``select``."""
    directory = os.fspath(checkpoint).rstrip("/")
    state_path = f"{directory}/{STATE_FILE}"
    tree = ron.loads(_fs.read_text(state_path, within=directory), path=state_path)
    if not select:
        return directory, state_path, tree, ()
    return directory, state_path, resolve(tree, select), tuple(parse_path(select))


def export_safetensors(
    checkpoint: str | os.PathLike[str], dst: str | os.PathLike[str], *, select: str | None = None
) -> list[str]:
    """Write the tensors of a checkpoint directory to one safetensors file; return names.

    Each tensor is named by its field path (``model.fc1.weight``,
    ``optimizer.state[0].exp_avg``). With ``select`` (a field path such as ``model``),
    only that subtree is exported and names are relative to it, so that
    ``model.load_state_dict(safetensors.torch.load_file(dst))`` works. Every entry read is
    checked against its checksum. Local blob files are memory-mapped and streamed to the
    new file; tensors tied to others are written as copies of their own.
    """
    import torch

    directory, state_path, tree, selected = _state_tree(checkpoint, select)
    base: tuple[Segment, ...] = selected[-1:]
    found = list(iter_tensors(tree))
    if not found:
        raise ConvertError(f"no tensors in {state_path}" + (f" under {select}" if select else ""))
    out_dir, out_file = _fs.split_url(os.fspath(dst))
    writer = BlobWriter(out_dir, out_file)
    readers: dict[str, BlobReader] = {}
    entries: set[tuple[str, str]] = set()
    for path, _, node in found:
        name = dotted_name(path or base)
        tensor = read_tensor(directory, node, readers)
        if "file" in node.fields:
            entry = (str(node.fields["file"]), str(node.fields.get("key")))
            if "stride" in node.fields or entry in entries:
                # A view into a shared entry becomes a contiguous tensor of its own.
                tensor = tensor.clone(memory_format=torch.contiguous_format)
            entries.add(entry)
        writer.add(name, tensor)
    refs = writer.write()
    return [ref.key for ref in refs]


def export_format(dst: str | os.PathLike[str]) -> ExportFormat:
    """The format an export to ``dst`` writes, from the end of its name.

    >>> export_format("model.safetensors"), export_format("model.pt"), export_format("ckpt.dcp/")
    ('safetensors', 'torch', 'dcp')

    Raises:
        ConvertError: an ending that names no format (the message lists them).
    """
    name = os.fspath(dst)
    ending = os.path.splitext(name.rstrip("/"))[1].lower()
    fmt = EXPORT_FORMATS.get(ending)
    if fmt is None:
        by_format: dict[str, list[str]] = {}
        for known, f in EXPORT_FORMATS.items():
            by_format.setdefault(f, []).append(known)
        named = {"torch": "torch.save", "dcp": "a torch.distributed.checkpoint directory"}
        listed = "; ".join(f"{', '.join(e)} ({named.get(f, f)})" for f, e in by_format.items())
        found = f"'{ending}'" if ending else "no ending"
        raise ConvertError(
            f"{name}: expected a file name that says the format to write: {listed}; found {found}"
        )
    return fmt


def export(
    checkpoint: str | os.PathLike[str], dst: str | os.PathLike[str], *, select: str | None = None
) -> list[str]:
    """Export a checkpoint directory to ``dst`` in the format its name says
    (:func:`export_format`): :func:`export_safetensors`, :func:`export_torch` or
    :func:`export_dcp`."""
    fmt = export_format(dst)
    if fmt == "torch":
        return export_torch(checkpoint, dst, select=select)
    if fmt == "dcp":
        return export_dcp(checkpoint, dst, select=select)
    return export_safetensors(checkpoint, dst, select=select)


def export_torch(
    checkpoint: str | os.PathLike[str], dst: str | os.PathLike[str], *, select: str | None = None
) -> list[str]:
    """Write the state of a checkpoint directory to a ``torch.save`` file; return the
    names of the tensors in it.

    The file holds the state tree as plain Python: structs and maps as dicts, lists and
    tuples as they are, numbers, strings, bools and None as they are, enum variants as
    their names, tensors (and numpy arrays) as tensors on the CPU. A module's or an
    optimizer's state is its state dict, so ``model.load_state_dict(torch.load(dst,
    weights_only=True)["model"])`` works; with ``select`` (``"model"``) the file holds
    that subtree only. Every tensor read is checked against its checksum; tensors that
    shared memory (a view, a tied weight) are written as copies of their own.
    ``torch.load(dst, weights_only=True)`` reads the file.
    """
    import torch

    directory, _, tree, base = _state_tree(checkpoint, select)
    names: list[str] = []
    readers: dict[str, BlobReader] = {}
    value = _as_python(tree, base, directory, readers, names)
    fs, fs_path = _fs.url_to_fs(os.fspath(dst))
    parent = fs._parent(fs_path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    try:
        with fs.open(fs_path, "wb") as f:  # streamed: no second copy of the tensors in memory
            torch.save(value, f)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.rm(fs_path)  # no half-written file that looks like an export
        raise
    return names


def export_dcp(
    checkpoint: str | os.PathLike[str], dst: str | os.PathLike[str], *, select: str | None = None
) -> list[str]:
    """Write the state of a checkpoint directory as a standard ``torch.distributed.checkpoint``
    directory (``.metadata`` and ``__0_0.distcp``, by DCP's own ``FileSystemWriter``, or
    its fsspec writer for a URL); return the names of the tensors in it.

    The state dict is the one :func:`export_torch` writes (structs and maps as dicts, a
    module's or optimizer's state as its state dict, sharded tensors whole), so a plain
    ``dcp.load(state_dict, checkpoint_id=dst)`` loads it, resharding as DCP does; with
    ``select`` (``"model"``) it holds that subtree only. Every tensor read is checked
    against its checksum. This writes DCP's format, a pickled ``.metadata`` among it: load
    only directories you trust with DCP's own reader (``hyperstate convert`` imports one
    without unpickling anything but DCP's records).

    Raises:
        ConvertError: ``dst`` holds a DCP checkpoint already, or DCP failed to write.
    """
    import warnings

    from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.filesystem import FileSystemWriter
    from torch.distributed.checkpoint.state_dict_saver import save

    url = os.fspath(dst).rstrip("/") or os.fspath(dst)
    fs, fs_path = _fs.url_to_fs(url)
    if fs.exists(f"{fs_path.rstrip('/')}/.metadata"):
        raise ConvertError(f"{url}: expected a new directory, found a DCP checkpoint there")
    directory, _, tree, base = _state_tree(checkpoint, select)
    names: list[str] = []
    readers: dict[str, BlobReader] = {}
    value = _as_python(tree, base, directory, readers, names)
    if not isinstance(value, dict):  # one tensor or value: named by its field, as in a file
        value = {dotted_name(base[-1:]) or "value": value}
    local = _fs.is_local(fs)
    writer = FileSystemWriter(fs_path) if local else FsspecWriter(url)
    try:
        with warnings.catch_warnings():
            # DCP warns that with no process group it saves from one process: as meant.
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            save(value, storage_writer=writer, no_dist=True)
    except CheckpointException as e:
        inner = next(iter(e.failures.values()))[0] if e.failures else e
        raise ConvertError(f"{url}: {_reason(inner)}") from None
    return names


def _as_python(
    node: Any,
    path: tuple[Segment, ...],
    directory: str,
    readers: dict[str, BlobReader],
    names: list[str],
) -> Any:
    """A state tree as the plain Python (and tensors) that ``torch.save`` writes."""
    if tensor_info(node) is not None:
        tensor = read_tensor(directory, node, readers)
        if (
            tensor.storage_offset() != 0
            or not tensor.is_contiguous()
            or tensor.untyped_storage().nbytes() != tensor.nbytes
        ):
            tensor = tensor.clone()  # only its own bytes, not those of what it shares
        names.append(dotted_name(path))
        return tensor
    kind = type(node)
    if kind is Struct and node.name == "Blob" and set(node.fields) == {"ron"}:
        data = read_tensor(directory, node.fields["ron"], readers)
        where = f"{dotted_name(path)} (Blob)"
        text = _fs.decode_text(data.numpy().tobytes(), where)
        return _as_python(ron.loads(text, path=where), path, directory, readers, names)
    if kind is Struct and _is_wrapper(node):
        return _as_python(node.fields["state"], path, directory, readers, names)
    if kind is Struct:
        return {
            k: _as_python(v, (*path, k), directory, readers, names) for k, v in node.fields.items()
        }
    if kind is dict:
        return {
            _as_key(k): _as_python(v, (*path, _segment(k)), directory, readers, names)
            for k, v in node.items()
        }
    if kind is list:
        return [_as_python(v, (*path, i), directory, readers, names) for i, v in enumerate(node)]
    if kind is tuple or kind is TupleStruct:
        items = node.items if kind is TupleStruct else node
        return tuple(
            _as_python(v, (*path, i), directory, readers, names) for i, v in enumerate(items)
        )
    if kind is Some:
        return _as_python(node.value, path, directory, readers, names)
    if kind is ron.Ident:
        return node.name
    return node


def _as_key(key: Any) -> Any:
    """A map key as Python: an enum variant by its name, a tuple of keys as a tuple."""
    if type(key) is ron.Ident:
        return key.name
    if type(key) is tuple:
        return tuple(_as_key(k) for k in key)
    if type(key) is Some:
        return _as_key(key.value)
    return key
