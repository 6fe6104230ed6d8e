"""Bring tensors from other checkpoint formats into hyperstate, and take them out again.

Importing writes a committed checkpoint (``config.ron``, ``state.ron``, a safetensors blob
file, then ``COMMITTED``) under a run directory, from

* a ``torch.save`` file, read with ``torch.load(..., weights_only=True)``;
* a safetensors file;
* a ``torch.distributed.checkpoint`` (DCP) directory, read without running pickled code
  (see :func:`read_dcp`).

Exporting writes every tensor of a checkpoint (or of one subtree) to one safetensors file.

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

import io
import math
import os
import pickle
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from hyperstate import _fs, ron
from hyperstate.distributed.collectives import Ranks
from hyperstate.distributed.save import CheckpointSave
from hyperstate.errors import ConvertError
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
    "ConvertError",
    "Format",
    "Segment",
    "TensorInfo",
    "children",
    "detect_format",
    "export_safetensors",
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
        text = f"{self.kind} {self.dtype}[{', '.join(map(str, self.shape))}]"
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
        shards=len(shards) if isinstance(shards, list) else None,
        device=device,
    )


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
            out += f"[{seg}]"
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
    """``1536`` -> ``1.5 KiB``."""
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
        head = fs.cat_file(fs_path, start=0, end=16)
    except FileNotFoundError:
        raise ConvertError(f"{path}: no such file or directory") from None
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
            with open(fs_path, "rb") as f:
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
    except RuntimeError as e:
        raise ConvertError(f"{path}: not a torch.save file ({e})") from None


def read_safetensors(path: str) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, on the CPU."""
    from safetensors import SafetensorError
    from safetensors.torch import load, load_file

    fs, fs_path = _fs.url_to_fs(path)
    try:
        if _fs.is_local(fs):
            return load_file(fs_path, device="cpu")
        return load(fs.cat_file(fs_path))
    except SafetensorError as e:
        raise ConvertError(f"{path}: not a safetensors file ({e})") from None
    except FileNotFoundError:
        raise ConvertError(f"{path}: no such file") from None


# The globals a DCP .metadata pickle names: DCP's own metadata records and the torch and
# pathlib values inside them. Nothing else is looked up, so the pickle cannot call code.
_DCP_METADATA = "torch.distributed.checkpoint.metadata"
_DCP_GLOBALS = frozenset(
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
                "_MEM_FORMAT_ENCODING",
            )
        ),
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
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


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's ``.metadata`` with a fixed list of globals (Python's "restricting
    globals" recipe), instead of the plain ``pickle.load`` that DCP's reader uses."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _DCP_GLOBALS:
            return super().find_class(module, name)
        if module == "torch":
            import torch

            dtype = getattr(torch, name, None)
            if isinstance(dtype, torch.dtype):
                return dtype
        raise pickle.UnpicklingError(
            f"refusing {module}.{name}: not part of torch.distributed.checkpoint metadata"
        )


def read_dcp(path: str) -> dict[str, Any]:
    """The whole state dict of a ``torch.distributed.checkpoint`` directory, on the CPU.

    Sharded tensors come back whole (every shard is read into one tensor), in one
    process. DCP's own reader unpickles ``.metadata`` with plain ``pickle`` and non-tensor
    values with ``torch.load(weights_only=False)``, either of which would run code from
    the file; here ``.metadata`` is read with a fixed list of allowed classes and every
    value with ``weights_only=True``. Tensors are read by DCP itself (with
    ``weights_only=True``). This uses DCP's private loader
    (``state_dict_loader._load_state_dict`` with ``_EmptyStateDictLoadPlanner``, as
    ``torch.distributed.checkpoint.format_utils.dcp_to_torch_save`` does), so it may need
    a change for a future torch.

    Note DCP's flattening: int keys of nested dicts (an optimizer's ``state`` by param
    index) come back as strings.
    """
    import torch
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.filesystem import FileSystemReader
    from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    fs, fs_path = _fs.url_to_fs(path)
    local = _fs.is_local(fs)
    base: type[FileSystemReader] = FileSystemReader if local else FsspecReader

    marker = f"{fs_path.rstrip('/')}/.metadata"
    if not fs.exists(marker):
        raise ConvertError(f"{path}: not a torch.distributed.checkpoint (no .metadata)")
    with fs.open(marker, "rb") as f:
        try:
            metadata = _MetadataUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as e:
            raise ConvertError(f"{path}/.metadata: {e}") from None
    if not isinstance(metadata, Metadata):
        found = type(metadata).__name__
        raise ConvertError(f"{path}/.metadata: expected DCP Metadata, found {found}")
    checked: Metadata = metadata

    class SafeReader(base):  # type: ignore[valid-type,misc]
        def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
            if kwargs.get("rank") is not None:
                raise FileNotFoundError("only the global .metadata is read")
            if getattr(checked, "storage_meta", None) is None:
                checked.storage_meta = StorageMeta()
            assert checked.storage_meta is not None
            checked.storage_meta.load_id = self.load_id
            return checked

    class SafePlanner(_EmptyStateDictLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            # Load it safely first; the base class (which unpickles without
            # weights_only) then only ever sees bytes that we wrote ourselves.
            try:
                obj = torch.load(value, weights_only=True)
            except pickle.UnpicklingError as e:
                first = str(e).strip().splitlines()[0]
                fqn = read_item.dest_index.fqn
                raise ConvertError(
                    f"{path}: value {fqn!r} refused by weights_only ({first})"
                ) from None
            again = io.BytesIO()
            torch.save(obj, again)
            again.seek(0)
            super().load_bytes(read_item, again)

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
        raise ConvertError(f"{path}: {type(inner).__name__}: {inner}") from None
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

    directory = os.fspath(checkpoint).rstrip("/")
    state_path = f"{directory}/{STATE_FILE}"
    tree = ron.loads(_fs.read_text(state_path, within=directory), path=state_path)
    base: tuple[Segment, ...] = ()
    if select:
        tree = resolve(tree, select)
        base = (parse_path(select)[-1],)
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
