"""``torch.distributed.checkpoint`` (DCP) through hyperstate: DCP plans, hyperstate stores.

:class:`StorageWriter` and :class:`StorageReader` are DCP storage layers: ``dcp.save``,
``dcp.async_save`` and ``dcp.load`` given one of them write and read a committed hyperstate
checkpoint. DCP's planners decide, as always, which rank writes which chunk of which
tensor and which rank reads which byte of which chunk on a load (resharding to another
world size or layout); these classes only store and serve the chunks::

    <checkpoint_id>/
      state.ron                     the state dict, nested as DCP saw it: each tensor a
                                    hyperstate record (a reference into a blob file, a 0-d
                                    tensor inline as text, or shards at their offsets),
                                    every other value (param_groups, step counters) as text
      dcp.ron                       each DCP entry's key path in that tree
      blobs/rank-00000.safetensors  the chunks rank 0 wrote (hyperstate's checksummed writer)
      blobs/rank-00001.safetensors  ... rank 1's
      COMMITTED                     written last by DCP's coordinator, in ``finish``, after
                                    every rank's write results arrived

So the directory is a hyperstate checkpoint: ``hyperstate verify``, ``show`` and ``convert``
read it, and so does :func:`hyperstate.load`.

Nothing in the directory is ever unpickled. DCP's default save planner hands non-tensor
values to the storage layer as ``torch.save`` bytes, and its default load planner reads
them back with ``torch.load(weights_only=False)``, which runs whatever code a pickle names.
The writer therefore loads those bytes with ``weights_only=True`` (:func:`load_value`,
which runs no code) and stores the value as RON text, refusing anything that is not plain
data (:func:`plain_value`); the reader parses that text and hands the planner bytes it
pickled itself, from plain values. A ``.metadata`` or ``.distcp`` file planted in the
directory is never opened.

>>> import tempfile, warnings, torch
>>> import torch.distributed.checkpoint as dcp
>>> path = tempfile.mkdtemp() + "/step-000000000007"
>>> state = {"model": {"w": torch.arange(4.0)}, "epoch": 3}
>>> with warnings.catch_warnings():
...     warnings.filterwarnings("ignore", "torch.distributed is disabled")
...     _ = dcp.save(state, storage_writer=StorageWriter(path))
...     restored = {"model": {"w": torch.zeros(4)}, "epoch": 0}
...     dcp.load(restored, storage_reader=StorageReader(path))
>>> restored["model"]["w"].tolist(), restored["epoch"]
([0.0, 1.0, 2.0, 3.0], 3)
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
import pickle
import re
import socket
import uuid
from collections import OrderedDict
from typing import IO, Any

import torch
from torch.distributed.checkpoint import storage as _dcp
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    SavePlan,
    SavePlanner,
    WriteItemType,
)
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from hyperstate import _fs, ron
from hyperstate.errors import (
    HyperstateError,
    StateError,
    StorageError,
    first_line,
    format_path,
    format_value,
)
from hyperstate.ron import Struct
from hyperstate.storage import (
    COMMITTED,
    DCP_FILE,
    STATE_FILE,
    CheckpointStore,
    PendingCheckpoint,
    RunInfo,
    blob_file,
    checkpoint_at,
)
from hyperstate.tensors import codec
from hyperstate.tensors.dtypes import ITEMSIZE, dtype_name, torch_dtype
from hyperstate.tensors.safetensors import BlobReader, BlobWriter

__all__ = ["StorageReader", "StorageWriter", "load_value", "plain_value"]

log = logging.getLogger("hyperstate")

_FORMAT = 1
"""The version of the ``dcp.ron`` layout."""

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The files a save of this module leaves behind when it fails before COMMITTED: a new save
# into the same directory removes them (and refuses to touch any other file).
_LEFTOVER = re.compile(
    rf"{re.escape(STATE_FILE)}|{re.escape(DCP_FILE)}|blobs/rank-\d{{5,}}\.safetensors"
    rf"|\.{COMMITTED}\.tmp-[0-9a-f]+"
)
# A checkpoint directory named as CheckpointStore names them: its number is the key.
_NUMBERED = re.compile(r"[A-Za-z0-9_.]+-(\d{12,})")

_KeyPath = tuple[str | int, ...]
"""A DCP key path: the keys and list indices from the state dict to an entry."""

_ABSENT = object()  # no value here (None is a value)


# ---------------------------------------------------------------------------------------
# Values: torch.save bytes <-> plain RON values, running no code


def load_value(data: IO[bytes], fqn: str) -> Any:
    """A DCP bytes value (``torch.save`` bytes, as DCP's planner writes a non-tensor
    value), unpickled with ``weights_only=True``: only tensors and plain containers and
    values come out, and no code named in the bytes runs.

    Raises:
        StateError: the bytes need more than ``weights_only`` allows (a class of your
            own, say), or are no ``torch.save`` data; names the entry.
    """
    try:
        return torch.load(data, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = _first_line(e)
        raise StateError(
            f"refused by weights_only ({reason}); only tensors and plain values are read, "
            "nothing that runs code",
            f"value {fqn!r}",
        ) from None
    except (RuntimeError, EOFError, ValueError) as e:
        found = f"{type(e).__name__}: {_first_line(e)}"
        raise StateError(f"expected torch.save bytes, found {found}", f"value {fqn!r}") from None


_SCALARS = (type(None), bool, int, float, str, bytes)


class _NotPlain(Exception):
    """A value that is not plain data, at ``where`` (a path inside the value)."""

    def __init__(self, where: tuple[Any, ...], message: str) -> None:
        super().__init__(message)
        self.where = where
        self.message = message


def _plain(value: Any, where: tuple[Any, ...], depth: int = 0) -> Any:
    kind = type(value)
    if kind in _SCALARS:
        return value
    if depth >= ron.MAX_DEPTH:
        raise _NotPlain(where, f"expected at most {ron.MAX_DEPTH} levels of nesting, found more")
    if kind is list:
        return [_plain(v, (*where, i), depth + 1) for i, v in enumerate(value)]
    if kind is tuple:
        return tuple(_plain(v, (*where, i), depth + 1) for i, v in enumerate(value))
    if kind is dict or kind is OrderedDict:
        out = {}
        for k, v in value.items():
            out[_plain(k, where, depth + 1)] = _plain(v, (*where, k), depth + 1)
        return out
    raise _NotPlain(
        where,
        f"expected plain data (None, bool, int, float, str, bytes, and lists, tuples and "
        f"dicts of them), found a {kind.__name__}: {format_value(value)[:80]}",
    )


def plain_value(value: Any, fqn: str = "") -> Any:
    """``value`` as a tree of plain data that RON writes and reads back as it was: None,
    bools, ints, floats, strings, bytes, and lists, tuples and dicts (an ``OrderedDict`` as
    a dict) of them.

    >>> plain_value({"lr": 0.1, "betas": (0.9, 0.99), "params": [0, 1]})
    {'lr': 0.1, 'betas': (0.9, 0.99), 'params': [0, 1]}

    Raises:
        StateError: anything else (a tensor, a class of your own), naming where it stands
            in entry ``fqn``.
    """
    try:
        return _plain(value, ())
    except _NotPlain as e:
        where = f"value {fqn!r}" + (f" at {format_path(e.where)}" if e.where else "")
        raise StateError(e.message, where) from None


def _pickled(value: Any, fqn: str) -> io.BytesIO:
    """``torch.save`` bytes of a plain value, made here: what a DCP planner's
    ``load_bytes`` unpickles is never a pickle from the checkpoint directory.

    DCP's default planner unpickles them with ``weights_only=False``, so they are checked
    first by the loader that runs no code (:func:`load_value`): whatever the value held,
    the bytes handed over name nothing beyond plain data. (``value`` is plain already:
    the reader refuses anything else where it stands in ``state.ron``.)
    """
    data = io.BytesIO()
    torch.save(plain_value(value, fqn), data)
    data.seek(0)
    load_value(data, fqn)
    data.seek(0)
    return data


def _first_line(error: BaseException) -> str:
    return first_line(error) or type(error).__name__


# ---------------------------------------------------------------------------------------
# Saving


@dataclasses.dataclass(frozen=True)
class _Written:
    """What a rank wrote of one DCP write item, for the coordinator's ``finish``:
    ``record`` is a tensor record or a plain value tree; ``file`` this rank's blob file
    (with its size and checksum), if it wrote one."""

    record: Any
    host: str
    file: str | None = None
    size: int = 0
    checksum: str = ""


class StorageWriter(_dcp.StorageWriter):
    """The storage layer of ``dcp.save`` and ``dcp.async_save`` that writes a hyperstate
    checkpoint into the directory ``path`` (any fsspec URL).

    Every rank writes its chunks to its own blob file with hyperstate's checksummed
    writer; non-tensor values are stored as RON text in ``state.ron`` (see the module);
    the coordinator writes ``state.ron`` and ``dcp.ron`` and, last, ``COMMITTED``. A
    directory that holds a committed checkpoint is never written into again: save each
    checkpoint into a new directory. A save that failed leaves its files without
    ``COMMITTED`` (not a checkpoint); a later save into the same directory removes them,
    and refuses a directory that holds other files.

    Args:
        path: the checkpoint directory, or None to take ``dcp.save``'s ``checkpoint_id``.
        number: the checkpoint number that ``COMMITTED`` records; by default the number
            in the directory's name when it is named as hyperstate names them
            (``step-000000000100``: 100, so that ``hyperstate ls`` lists it), else 0.

    Use one writer per checkpoint (an ``async_save`` in flight still uses its writer).
    DCP reports a failure of any rank as its ``CheckpointException`` on every rank; the
    :class:`~hyperstate.HyperstateError` raised here is in its ``failures``.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, number: int | None = None):
        super().__init__()
        self.path = None if path is None else os.fspath(path)
        self.number = number
        self.save_id = uuid.uuid4().hex
        self._pending: PendingCheckpoint | None = None

    def reset(self, checkpoint_id: str | os.PathLike[Any] | None = None) -> None:
        """Start a new save (into ``checkpoint_id``, when given)."""
        if checkpoint_id:
            self.path = os.fspath(checkpoint_id)
        self.save_id = uuid.uuid4().hex
        self._pending = None

    @property
    def checkpoint_id(self) -> str | None:
        """The checkpoint directory."""
        return self.path

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[Any]) -> bool:
        """Any local path or fsspec URL names a directory this writer can write."""
        return isinstance(checkpoint_id, str | os.PathLike)

    def storage_meta(self) -> StorageMeta | None:
        """DCP's record of this save: the directory and a fresh save id."""
        return StorageMeta(checkpoint_id=self.path, save_id=self.save_id)

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        """Called by DCP on every rank before planning."""
        self._pending = None
        if self.path is None:
            raise StateError(
                "expected a checkpoint directory: StorageWriter(path) or "
                "dcp.save(..., checkpoint_id=path); found none"
            )
        if not kwargs.get("use_collectives", True):
            raise StateError(
                f"{self.path}: expected dcp.save(..., use_collectives=True): a hyperstate "
                "checkpoint is committed by one coordinator once every rank has written"
            )

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        """This rank's plan, unchanged."""
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        """On the coordinator: begin the checkpoint directory, and give rank ``i`` its
        blob file ``blobs/rank-0000i.safetensors``."""
        self._pending = _begin(self._url, self.number)
        return [dataclasses.replace(p, storage_data=blob_file(i)) for i, p in enumerate(plans)]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        """Write this rank's items: tensors to its blob file (a 0-d tensor of a number
        dtype inline as text instead), non-tensor values as plain RON values."""
        file = str(plan.storage_data)
        host = socket.gethostname()
        writer: BlobWriter | None = None
        written: list[tuple[Any, int, Any]] = []  # (item, bytes, its record; None: in a blob)
        blob_items: list[int] = []
        for item in plan.items:
            fqn = item.index.fqn
            data = planner.resolve_data(item)
            if item.type == WriteItemType.BYTE_IO:
                if not isinstance(data, io.BytesIO):
                    found = type(data).__name__
                    where = f"value {fqn!r}"
                    raise StateError(f"expected bytes (io.BytesIO), found {found}", where)
                data.seek(0)  # DCP's planner leaves it where torch.save stopped
                value = plain_value(load_value(data, fqn), fqn)
                written.append((item, data.getbuffer().nbytes, value))
                continue
            if not isinstance(data, torch.Tensor):
                found = type(data).__name__
                raise StateError(f"expected a tensor, found {found}", f"entry {fqn!r}")
            tensor = data.detach()
            inline = codec.inline_record(tensor)
            if inline is not None:
                written.append((item, tensor.element_size(), inline))
                continue
            if writer is None:
                writer = BlobWriter(self._url, file)
            writer.add(fqn, tensor)
            blob_items.append(len(written))
            written.append((item, tensor.numel() * tensor.element_size(), None))
        size, checksum = 0, ""
        if writer is not None:
            for i, ref in zip(blob_items, writer.write(), strict=True):
                item, nbytes, _ = written[i]
                written[i] = (item, nbytes, Struct("Tensor", codec.record_fields(ref)))
            size, checksum = int(writer.written_bytes), str(writer.file_checksum)
        results = [
            WriteResult(
                index=item.index,
                size_in_bytes=nbytes,
                storage_data=_Written(
                    record, host, file if writer is not None else None, size, checksum
                ),
            )
            for item, nbytes, record in written
        ]
        future: Future[list[WriteResult]] = Future()
        future.set_result(results)
        return future

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        """On the coordinator, once every rank's write results arrived: write ``dcp.ron``
        and ``state.ron``, record every rank's blob file, and commit (``COMMITTED`` last)."""
        pending = self._pending
        if pending is None:
            raise StateError(f"{self._url}: finish() before prepare_global_plan()")
        tree, paths = _state_tree(metadata, results, self._url)
        hosts: list[str] = []
        for rank, rank_results in enumerate(results):
            stored = [r.storage_data for r in rank_results]
            if stored:
                hosts.append(stored[0].host)
            files = {(s.file, s.size, s.checksum) for s in stored if s.file is not None}
            for name, size, checksum in files:
                if name != blob_file(rank):  # only what this writer planned is recorded
                    raise StateError(f"{self._url}: rank {rank} reported blob file {name!r}")
                pending.record(name, size=size, checksum=checksum)
        described = Struct(
            "Dcp",
            {
                "format": _FORMAT,
                "save_id": self.save_id,
                "entries": paths,
            },
        )
        pending.write_file(DCP_FILE, (ron.dumps(described) + "\n").encode("utf-8"))
        pending.write_file(STATE_FILE, (ron.dumps(tree) + "\n").encode("utf-8"))
        pending.commit(RunInfo.of_this_process(world_size=len(results), hosts=hosts))
        self._pending = None

    @property
    def _url(self) -> str:
        if self.path is None:
            raise StateError("expected a checkpoint directory, found none")
        return self.path.rstrip("/") or self.path


def _begin(url: str, number: int | None) -> PendingCheckpoint:
    """The checkpoint directory ``url``, begun for a save: never over a committed
    checkpoint; a failed save's files (and only those) are removed first."""
    if checkpoint_at(url) is not None:
        raise StorageError(
            "begin",
            url,
            "expected a new directory, found a committed checkpoint (a checkpoint is never "
            "overwritten: save each one into a new directory, such as step-<number>)",
        )
    parent, name = _fs.split_url(url)
    fs, fs_path = _fs.url_to_fs(url)
    fs_path = fs_path.rstrip("/")
    try:
        found = [p for p in fs.find(fs_path) if p.startswith(fs_path + "/")]
    except FileNotFoundError:
        found = []
    except OSError as e:
        raise StorageError("list", url, _first_line(e)) from e
    names = [p[len(fs_path) + 1 :] for p in found]
    foreign = sorted(n for n in names if not _LEFTOVER.fullmatch(n))
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise StorageError(
            "begin",
            url,
            f"expected an empty or new directory, found {foreign[0]}{more} (not part of a "
            "hyperstate checkpoint; a save removes only the files of its own failed saves)",
        )
    try:
        for path in found:
            fs.rm(path)
        fs.makedirs(fs_path, exist_ok=True)
    except OSError as e:
        raise StorageError("begin", url, _first_line(e)) from e
    if number is None:
        numbered = _NUMBERED.fullmatch(name)
        number = int(numbered.group(1)) if numbered else 0
    return PendingCheckpoint(CheckpointStore(parent), number, name=name)


def _state_tree(
    metadata: Metadata, results: list[list[WriteResult]], url: str
) -> tuple[Any, dict[str, _KeyPath]]:
    """The tree of ``state.ron`` and each entry's key path, from DCP's global metadata
    and every rank's write results."""
    stored: dict[tuple[str, tuple[int, ...] | None], _Written] = {}
    for rank_results in results:
        for r in rank_results:
            offset = None if r.index.offset is None else tuple(r.index.offset)
            stored[(r.index.fqn, offset)] = r.storage_data
    key_paths = metadata.planner_data
    if key_paths is not None and not isinstance(key_paths, dict):
        raise StateError(
            f"{url}: expected DCP's planner data to be the key paths of a flattened state "
            f"dict (a dict, as DefaultSavePlanner makes), found a {type(key_paths).__name__}"
        )
    paths: dict[str, _KeyPath] = {}
    root = _Node("dict")
    for fqn, entry in metadata.state_dict_metadata.items():
        path = tuple(key_paths[fqn]) if key_paths and fqn in key_paths else (fqn,)
        if not path or not all(type(s) in (str, int) for s in path) or type(path[0]) is not str:
            raise StateError(f"{url}: entry {fqn!r}: expected a key path, found {path!r}")
        if isinstance(entry, BytesStorageMetadata):
            written = stored.get((fqn, None))
            if written is None:
                raise StateError(f"{url}: entry {fqn!r}: no rank wrote its value")
            node = written.record
        else:
            node = _tensor_node(fqn, entry, stored, url)
        root.put(path, node, fqn, url)
        paths[fqn] = path
    tree = root.build()
    if all(_IDENTIFIER.fullmatch(k) for k in tree):
        return Struct("State", tree), paths
    return tree, paths


def _tensor_node(
    fqn: str,
    entry: TensorStorageMetadata,
    stored: dict[tuple[str, tuple[int, ...] | None], _Written],
    url: str,
) -> Any:
    """A tensor's record: the one chunk that is the whole tensor, or its shards."""
    size = tuple(int(n) for n in entry.size)
    chunks = []
    for chunk in entry.chunks:
        at = tuple(int(n) for n in chunk.offsets)
        written = stored.get((fqn, at))
        if written is None:
            raise StateError(f"{url}: entry {fqn!r}: no rank wrote its chunk at {at}")
        chunks.append((at, tuple(int(n) for n in chunk.sizes), written.record))
    if len(chunks) == 1 and chunks[0][1] == size and not any(chunks[0][0]):
        return chunks[0][2]
    shards = sorted(
        (Struct("Shard", {"at": at, **record.fields}) for at, _, record in chunks),
        key=lambda s: s.fields["at"],
    )
    fields = {"dtype": dtype_name(entry.properties.dtype), "shape": size, "shards": shards}
    return Struct("Tensor", fields)


class _Node:
    """A dict or list of the tree being built, by key (ints for a list)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.children: dict[str | int, Any] = {}

    def put(self, path: _KeyPath, value: Any, fqn: str, url: str) -> None:
        node = self
        for depth, seg in enumerate(path):
            last = depth == len(path) - 1
            if (type(seg) is int) != (node.kind == "list"):
                where = format_path(path[:depth]) or "the top level"
                raise StateError(
                    f"{url}: entry {fqn!r}: expected key paths that agree, found {where} "
                    "both a dict and a list"
                )
            child = node.children.get(seg, _ABSENT)
            if last:
                if child is not _ABSENT:
                    raise StateError(f"{url}: entry {fqn!r}: its key path {path!r} is taken")
                node.children[seg] = value
                return
            kind = "list" if type(path[depth + 1]) is int else "dict"
            if child is _ABSENT:
                child = node.children[seg] = _Node(kind)
            elif not isinstance(child, _Node):
                where = format_path(path[: depth + 1])
                raise StateError(
                    f"{url}: entry {fqn!r}: expected key paths that agree, found {where} "
                    "both a value and a container"
                )
            node = child

    def build(self) -> Any:
        values = {k: v.build() if isinstance(v, _Node) else v for k, v in self.children.items()}
        if self.kind == "dict":
            return values
        if sorted(values) != list(range(len(values))):
            raise StateError(f"expected lists without gaps, found indices {sorted(values)}")
        return [values[i] for i in range(len(values))]


# ---------------------------------------------------------------------------------------
# Loading


@dataclasses.dataclass(frozen=True)
class _Chunk:
    """Where a load finds one chunk: its record in ``state.ron`` (a reference or an
    inline 0-d tensor), and the record's value path, for messages."""

    record: Struct
    where: tuple[Any, ...]


class StorageReader(_dcp.StorageReader):
    """The storage layer of ``dcp.load`` that reads a hyperstate checkpoint that
    :class:`StorageWriter` wrote, at ``path`` (any fsspec URL).

    ``read_metadata`` reads ``COMMITTED``, ``dcp.ron`` and ``state.ron`` (a directory
    without ``COMMITTED`` is no checkpoint) and checks every record before DCP plans:
    shards that tile their tensor, files inside the checkpoint and listed in
    ``COMMITTED``, no more bytes claimed than the blob files hold. DCP's planner then
    decides what each rank reads (resharding as DCP does); the reader serves each chunk
    from its blob file (memory-mapped on local disk, one byte range per entry remotely),
    checked against its checksum, and each non-tensor value from ``state.ron``, pickled
    here from the plain value. Values edited by hand in ``state.ron`` load as edited
    (a warning says the file changed since it was committed).

    Args:
        path: the checkpoint directory, or None to take ``dcp.load``'s ``checkpoint_id``.
        verify: check every entry read against its checksum (turn off only for data you
            already trust).

    DCP reports a failure as its ``CheckpointException``; the
    :class:`~hyperstate.HyperstateError` raised here is in its ``failures``.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, verify: bool = True):
        super().__init__()
        self.path = None if path is None else os.fspath(path)
        self.verify = verify
        self.load_id = uuid.uuid4().hex
        self._chunks: dict[MetadataIndex, Any] = {}
        self._checksums: dict[str, str] = {}
        self._readers: dict[str, BlobReader] = {}
        self._failed: HyperstateError | None = None
        self._edited: list[str] = []

    def reset(self, checkpoint_id: str | os.PathLike[Any] | None = None) -> None:
        """Start a new load (from ``checkpoint_id``, when given)."""
        if checkpoint_id:
            self.path = os.fspath(checkpoint_id)
        self.load_id = uuid.uuid4().hex
        self._chunks = {}
        self._readers = {}
        self._failed = None

    @property
    def checkpoint_id(self) -> str | None:
        """The checkpoint directory."""
        return self.path

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[Any]) -> bool:
        """Any local path or fsspec URL may name a checkpoint this reader reads."""
        return isinstance(checkpoint_id, str | os.PathLike)

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        """DCP's metadata of the checkpoint, made from ``dcp.ron`` and ``state.ron``."""
        self._failed = None
        self._edited = []
        try:
            return self._read_metadata()
        except HyperstateError as e:
            # DCP turns an error here into an AssertionError that keeps only its text;
            # raised from set_up_storage_reader, next, it reaches the caller as it is.
            self._failed = e
            return Metadata(state_dict_metadata={})

    def set_up_storage_reader(
        self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any
    ) -> None:
        """Called by DCP on every rank after :meth:`read_metadata`."""
        if self._failed is not None:
            raise self._failed
        if is_coordinator:  # said once, not by every rank
            for url in self._edited:
                log.warning("%s: edited since it was committed; loading it as it is now", url)

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        """This rank's plan, unchanged."""
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        """Every rank's plan, unchanged."""
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        """Read this rank's items: each chunk's bytes from its blob file (checked), each
        value from ``state.ron``, pickled here."""
        try:
            for item in plan.items:
                chunk = self._chunks.get(item.storage_index)
                fqn = item.storage_index.fqn
                if item.type == LoadItemType.BYTE_IO:
                    if isinstance(chunk, _Chunk) or item.storage_index not in self._chunks:
                        raise StateError(f"{self._url}: expected a value at entry {fqn!r}")
                    planner.load_bytes(item, _pickled(chunk, fqn))
                    continue
                if not isinstance(chunk, _Chunk):
                    raise StateError(f"{self._url}: expected a tensor at entry {fqn!r}")
                tensor = codec.read(chunk.record, chunk.where, self._reader, map_location="cpu")
                for dim, (start, length) in enumerate(
                    zip(item.storage_offsets, item.lengths, strict=True)
                ):
                    tensor = tensor.narrow(dim, int(start), int(length))
                target = planner.resolve_tensor(item).detach()
                if target.size() != tensor.size():
                    raise StateError(
                        f"{self._url}: entry {fqn!r}: expected a part of shape "
                        f"{tuple(target.size())}, found {tuple(tensor.size())}"
                    )
                target.copy_(tensor)
                planner.commit_tensor(item, target)
        finally:
            for reader in self._readers.values():
                reader.close()  # what was read is copied into the planner's tensors
            self._readers = {}
        future: Future[None] = Future()
        future.set_result(None)
        return future

    # -- internals ---------------------------------------------------------------------

    @property
    def _url(self) -> str:
        if self.path is None:
            raise StateError(
                "expected a checkpoint directory: StorageReader(path) or "
                "dcp.load(..., checkpoint_id=path); found none"
            )
        return self.path.rstrip("/") or self.path

    def _reader(self, file: str) -> BlobReader:
        reader = self._readers.get(file)
        if reader is None:
            reader = self._readers[file] = BlobReader(
                self._url, file, verify=self.verify, file_checksum=self._checksums.get(file)
            )
        return reader

    def _text(self, name: str, files: dict[str, Any]) -> tuple[str, str]:
        """(URL, text) of a text file of the checkpoint; a warning if it was edited."""
        url = f"{self._url}/{name}"
        entry = files.get(name)
        if entry is None:
            raise StorageError("read", url, f"expected a file that {COMMITTED} lists, found none")
        try:
            data = _fs.read_bytes(url, within=self._url)
        except FileNotFoundError:
            raise StorageError("read", url, f"missing (listed in {COMMITTED})") from None
        if _fs.checksum(data) != entry.checksum:
            self._edited.append(url)
        return url, _fs.decode_text(data, url)

    def _read_metadata(self) -> Metadata:
        url = self._url
        info = checkpoint_at(url)
        if info is None:
            raise StorageError(
                "read",
                url,
                f"expected a committed hyperstate checkpoint, found no {COMMITTED} (a save in "
                "progress, one that failed, or another kind of directory)",
            )
        files = dict(info.manifest.files)
        self._checksums = {name: e.checksum for name, e in files.items()}
        dcp_url, dcp_text = self._text(DCP_FILE, files)
        state_url, state_text = self._text(STATE_FILE, files)
        paths, save_id = _entries(ron.loads(dcp_text, path=dcp_url), dcp_url)
        tree = ron.loads(state_text, path=state_url)

        def located(path: _KeyPath, what: str) -> StateError:
            line, col = ron.locate(state_text, [path], state_url)[path]
            where = format_path(path) or "the top level"
            return StateError(what, f"{state_url}:{line}:{col}: at {where}")

        entries: dict[str, Any] = {}
        chunks: dict[MetadataIndex, Any] = {}
        claimed: dict[str, dict[str, int]] = {}  # file -> entry key -> bytes it must hold
        for fqn, path in paths.items():
            node = _child_at(tree, path)
            if node is _ABSENT:
                raise located(path, f"expected entry {fqn!r} of {DCP_FILE} here, found nothing")
            if not codec.is_record(node):
                try:
                    value = _plain(node, ())
                except _NotPlain as e:
                    raise located((*path, *e.where), e.message) from None
                entries[fqn] = BytesStorageMetadata()
                chunks[MetadataIndex(fqn)] = value
                continue
            try:
                entries[fqn] = _tensor_entry(fqn, node, path, chunks, claimed)
            except HyperstateError as e:
                raise located(path, str(e)) from None
        prefixes = {path[:n] for path in paths.values() for n in range(1, len(path))}
        for fqn, path in paths.items():
            if path in prefixes:
                raise located(path, f"expected entry {fqn!r} to be a value, found a container")
        for file, sizes in claimed.items():
            entry = files.get(file)
            if entry is None:
                found = f"a record into {file}, which {COMMITTED} does not list"
                raise StorageError("read", f"{url}/{STATE_FILE}", f"expected blob files, {found}")
            needed = sum(sizes.values())
            if needed > entry.size:
                raise StorageError(
                    "read",
                    f"{url}/{file}",
                    f"expected at least {needed} bytes (what the records of {STATE_FILE} "
                    f"claim), found a file of {entry.size}",
                )
        self._chunks = chunks
        self._readers = {}
        return Metadata(
            state_dict_metadata=entries,
            planner_data=dict(paths),
            storage_meta=StorageMeta(checkpoint_id=url, save_id=save_id, load_id=self.load_id),
        )


def _child_at(tree: Any, path: _KeyPath) -> Any:
    """The node at key path ``path``: a field of the state (or a key of a top-level
    map), then keys of maps and indices of lists (never fields of a record)."""
    node = tree
    for seg in path:
        if node is tree and isinstance(node, Struct):
            node = node.fields.get(seg, _ABSENT) if isinstance(seg, str) else _ABSENT
        elif isinstance(node, dict):
            node = node.get(seg, _ABSENT)
        elif isinstance(node, list) and type(seg) is int and 0 <= seg < len(node):
            node = node[seg]
        else:
            return _ABSENT
        if node is _ABSENT:
            return _ABSENT
    return node


def _entries(value: Any, url: str) -> tuple[dict[str, _KeyPath], str | None]:
    """The entries of ``dcp.ron`` (name -> key path) and the save id."""

    def bad(what: str) -> StateError:
        return StateError(what, url)

    if not isinstance(value, Struct) or value.name != "Dcp":
        raise bad(f"expected Dcp(format: ..., entries: {{...}}), found {format_value(value)[:80]}")
    fields = value.fields
    version = fields.get("format")
    if type(version) is not int or not 1 <= version <= _FORMAT:
        raise bad(f"expected format 1 to {_FORMAT}, found {format_value(version)[:80]}")
    entries = fields.get("entries")
    if not isinstance(entries, dict):
        raise bad("expected entries: {name: (key, ...)}, found none")
    paths: dict[str, _KeyPath] = {}
    for fqn, path in entries.items():
        if (
            type(fqn) is not str
            or type(path) is not tuple
            or not path
            or type(path[0]) is not str
            or not all(type(s) is str or (type(s) is int and s >= 0) for s in path)
            or ".".join(map(str, path)) != fqn
        ):
            found = format_value((fqn, path))[:200]
            raise bad(f"expected entries as name: (key, ...) that joins to the name, found {found}")
        paths[fqn] = path
    save_id = fields.get("save_id")
    return paths, save_id if isinstance(save_id, str) else None


def _tensor_entry(
    fqn: str,
    record: Struct,
    path: _KeyPath,
    chunks: dict[MetadataIndex, Any],
    claimed: dict[str, dict[str, int]],
) -> TensorStorageMetadata:
    """DCP's metadata of a tensor record (reference, inline or sharded), after checking
    it; its chunks go to ``chunks``, the bytes each entry must hold to ``claimed``."""
    if record.name != "Tensor":
        raise StateError(f"expected a Tensor record, found {record.name}(...)")
    fields = record.fields
    if "value" in fields and "file" not in fields:
        tensor = codec.inline_tensor(record, path, "cpu")
        chunks[MetadataIndex(fqn, ())] = _Chunk(record, path)
        return _tensor_metadata(tensor.dtype, (), [((), ())])
    if "shards" in fields and "file" not in fields:
        sharded = codec.sharded_of(record, path)
        dtype = torch_dtype(sharded.dtype)
        assert dtype is not None  # sharded_of checked it
        parts = []
        for i, shard in enumerate(sharded.shards):
            ref_record = sharded.shard_ref(i)
            where = sharded.shard_where(path, i)
            ref = codec.ref_of(ref_record, where)
            if ref.dtype != sharded.dtype or ref.shape != shard.shape or ref.kind != "torch":
                raise StateError(
                    f"expected shard {i} of dtype {sharded.dtype} and shape {shard.shape}, "
                    f"found {ref.dtype} {ref.shape}"
                )
            _claim(claimed, ref)
            chunks[MetadataIndex(fqn, shard.at)] = _Chunk(ref_record, where)
            parts.append((shard.at, shard.shape))
        return _tensor_metadata(dtype, sharded.shape, parts)
    ref = codec.ref_of(record, path)
    dtype = torch_dtype(ref.dtype)
    if dtype is None or ref.kind != "torch":
        raise StateError(f"expected a tensor of a torch dtype, found {ref.dtype}")
    _claim(claimed, ref)
    chunks[MetadataIndex(fqn, (0,) * len(ref.shape))] = _Chunk(record, path)
    return _tensor_metadata(dtype, ref.shape, [((0,) * len(ref.shape), ref.shape)])


def _claim(claimed: dict[str, dict[str, int]], ref: Any) -> None:
    """Note the bytes that the entry ``ref`` points into must hold for it (a view counts
    to its last element)."""
    itemsize = ITEMSIZE[ref.dtype]
    if math.prod(ref.shape) == 0:
        nbytes = 0
    elif ref.stride is None:
        nbytes = math.prod(ref.shape) * itemsize
    else:
        last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride, strict=True))
        nbytes = (last + 1) * itemsize
    sizes = claimed.setdefault(ref.file, {})
    sizes[ref.key] = max(sizes.get(ref.key, 0), nbytes)


def _tensor_metadata(
    dtype: torch.dtype,
    size: tuple[int, ...],
    parts: list[tuple[tuple[int, ...], tuple[int, ...]]],
) -> TensorStorageMetadata:
    return TensorStorageMetadata(
        properties=TensorProperties(dtype=dtype),
        size=torch.Size(size),
        chunks=[
            ChunkStorageMetadata(offsets=torch.Size(at), sizes=torch.Size(shape))
            for at, shape in parts
        ],
    )
