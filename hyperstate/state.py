"""Program state: tensors, arrays, ``Serializable`` objects and stateful torch objects.

This module teaches the schema and serde layers the types that training state holds:

- ``torch.Tensor`` / ``numpy.ndarray`` fields (and containers of them): stored in blob
  files (safetensors, see :mod:`hyperstate.blobs`); ``state.ron`` holds a small reference
  record ``Tensor(file: ..., key: ..., dtype: ..., shape: ..., checksum: ...)``. 0-d
  tensors are written inline as text (``Tensor(dtype: "float32", value: 5.0)``) so that
  step counters stay readable and editable.
- :class:`Serializable`: ``serialize()`` gives a tree of dicts, lists, primitives and
  tensors; ``deserialize(state_dict, ctx)`` rebuilds the object.
- Objects with ``state_dict()`` / ``load_state_dict()`` (``nn.Module``, optimizers, LR
  schedulers, ``GradScaler``) and ``torch.Generator``: saved from their state dict, and
  restored *into* the object that ``initial_state(config)`` builds.
- ``Blob[T]``: the whole value is stored in a blob file, opaque in the text.
- :class:`Lazy`: a state dataclass whose blob-backed fields load on first access.

torch and numpy are imported only when such a type is used.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from hyperstate import ron
from hyperstate.errors import ConfigError, HyperstateError, Issue, PathSegment, format_path
from hyperstate.ron import Struct
from hyperstate.schema import types as t
from hyperstate.serde import (
    Hooks,
    decoder_of,
    describe,
    encode_plain,
    encoder_of,
    from_value,
    plain,
    to_value,
)

__all__ = [
    "Blob",
    "BlobPlan",
    "Lazy",
    "PerRank",
    "Planned",
    "Serializable",
    "StateError",
    "deferred_fields",
    "loading_lazily",
    "planning_blobs",
    "reading_blobs",
    "writing_blobs",
]

T = TypeVar("T")
Path = tuple[PathSegment, ...]


class StateError(HyperstateError):
    """A state cannot be saved or restored (e.g. a stateful field with no object to load into)."""


class Serializable(ABC):
    """A class with its own serialization logic.

    ``serialize`` returns a tree of dicts, lists, tuples, primitives, numpy arrays and
    torch tensors; ``deserialize`` gets that tree back (tensors restored) and ``ctx``:
    a dict holding ``"config"``, ``"state"`` (the state being loaded, whose other fields
    load on demand) and whatever the caller passed to ``load(..., ctx=...)``.
    """

    @abstractmethod
    def serialize(self) -> Any:
        """The object's state as a plain tree."""

    @classmethod
    @abstractmethod
    def deserialize(cls, state_dict: Any, ctx: dict[str, Any]) -> Any:
        """Rebuild an object from what :meth:`serialize` returned."""


class Blob(Generic[T]):
    """``Blob[T]`` marks a field whose value is stored only in a blob file.

    The text holds a reference; the value (of type ``T``, written as RON bytes with its
    tensors beside them) is read when the field is loaded.
    """


class PerRank(Generic[T]):
    """``PerRank[T]`` marks a field whose value differs between the ranks of a job.

    Every rank saves its own value (RNG states, a data loader's position); ``state.ron``
    holds them as ``PerRank(ranks: [rank 0's, rank 1's, ...])`` and each rank restores its
    own. A checkpoint written by another number of ranks cannot be mapped: loading it is a
    :class:`StateError`, unless the manager is told to re-initialise such fields
    (``per_rank="reinit"``), which keeps the value that ``initial_state`` built.
    """


class Lazy:
    """Base class of state dataclasses whose blob-backed fields load on first access.

    A field holding tensors, arrays, ``Serializable`` or ``Blob`` values is read from its
    blob file only when the attribute is first read. A ``deserialize`` may read other
    fields of the same state; a cycle of such reads is a ``StateError`` naming the fields.
    """

    __hyperstate_lazy__ = True

    def __getattribute__(self, name: str) -> Any:
        value = object.__getattribute__(self, name)
        if type(value) is _Pending:
            value = value.resolve(self, name)
        return value


# ---------------------------------------------------------------------------------------
# Schema nodes


@dataclass(frozen=True)
class TensorType(t.SchemaType):
    """``torch.Tensor`` (``kind="torch"``) or ``numpy.ndarray`` (``kind="numpy"``)."""

    kind: str

    def encoder(self) -> Callable[[Any, Path, bool], Any]:
        return lambda obj, path, elide: _encode_array(obj, path, self.kind)

    def decoder(self) -> Callable[[Any, Path, Any], Any]:
        def dec(v: Any, path: Path, cx: Any) -> Any:
            if type(v) is Struct and v.name in ("Tensor", "Array"):
                return _decode_array(v, path)
            return cx.fail(path, f"expected a Tensor(...) reference, found {describe(v)}")

        return dec


@dataclass(frozen=True)
class SerializableType(t.SchemaType):
    """A :class:`Serializable` subclass."""

    cls: type

    def encoder(self) -> Callable[[Any, Path, bool], Any]:
        def enc(obj: Any, path: Path, elide: bool) -> Any:
            if not isinstance(obj, Serializable):
                raise ConfigError([Issue(path, f"expected {self.cls.__name__}, found {obj!r}")])
            return Struct(type(obj).__name__, {"state": _encode_plain(obj.serialize(), path)})

        return enc

    def decoder(self) -> Callable[[Any, Path, Any], Any]:
        def dec(v: Any, path: Path, cx: Any) -> Any:
            inner = v.fields.get("state") if type(v) is Struct else None
            if type(v) is not Struct or "state" not in v.fields:
                return cx.fail(
                    path, f"expected {self.cls.__name__}(state: ...), found {describe(v)}"
                )
            source = _SOURCE.get()
            ctx = dict(source.ctx) if source is not None else {}
            return self.cls.deserialize(_decode_plain(inner, path), ctx)  # type: ignore[attr-defined]

        return dec


@dataclass(frozen=True)
class StatefulType(t.SchemaType):
    """An object restored in place: ``nn.Module``, optimizer, scheduler, ``Generator``..."""

    cls: type

    def encoder(self) -> Callable[[Any, Path, bool], Any]:
        def enc(obj: Any, path: Path, elide: bool) -> Any:
            return Struct(type(obj).__name__, {"state": _encode_plain(_state_dict(obj), path)})

        return enc

    def decoder(self) -> Callable[[Any, Path, Any], Any]:
        def dec(v: Any, path: Path, cx: Any) -> Any:
            if type(v) is not Struct or "state" not in v.fields:
                return cx.fail(
                    path, f"expected {self.cls.__name__}(state: ...), found {describe(v)}"
                )
            target = _initial_object(path)
            if target is None:
                raise StateError(
                    f"{format_path(path)} holds a {self.cls.__name__}, which is restored by "
                    "loading its state into an existing object; pass initial_state= (a "
                    "function of the config, or a state object) to load()"
                )
            _load_state_dict(target, _decode_plain(v.fields["state"], path))
            return target

        return dec


@dataclass(frozen=True)
class BlobType(t.SchemaType):
    """``Blob[T]``: the value of type ``inner`` is stored in a blob, opaque in the text."""

    inner: t.SchemaType

    def encoder(self) -> Callable[[Any, Path, bool], Any]:
        def enc(obj: Any, path: Path, elide: bool) -> Any:
            import numpy as np

            text = ron.dumps(to_value(obj, self.inner, elide_defaults=elide))
            data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
            ref = _encode_array(data, path, "numpy")
            return Struct("Blob", {"ron": ref})

        return enc

    def decoder(self) -> Callable[[Any, Path, Any], Any]:
        def dec(v: Any, path: Path, cx: Any) -> Any:
            if type(v) is not Struct or v.name != "Blob" or "ron" not in v.fields:
                return cx.fail(path, f"expected Blob(ron: Tensor(...)), found {describe(v)}")
            data = _decode_array(v.fields["ron"], path)
            tree = ron.loads(bytes(data).decode("utf-8"), path=f"<blob at {format_path(path)}>")
            return from_value(self.inner, tree)

        return dec


@dataclass(frozen=True)
class PerRankType(t.SchemaType):
    """``PerRank[T]``: one value of type ``inner`` per rank."""

    inner: t.SchemaType

    def encoder(self) -> Callable[[Any, Path, bool], Any]:
        inner = encoder_of(self.inner)

        def enc(obj: Any, path: Path, elide: bool) -> Any:
            sink = _SINK.get()
            if sink is not None:
                sink.local += 1  # tensors inside belong to this rank alone
            try:
                value = inner(obj, path, elide)
            finally:
                if sink is not None:
                    sink.local -= 1
            node = Struct("PerRank", {"ranks": [value]})
            if sink is not None and sink.plan is not None:
                sink.per_rank.append(node)  # the other ranks' values are added by rank 0
            return node

        return enc

    def decoder(self) -> Callable[[Any, Path, Any], Any]:
        inner = decoder_of(self.inner)

        def dec(v: Any, path: Path, cx: Any) -> Any:
            ranks = v.fields.get("ranks") if type(v) is Struct else None
            if type(v) is not Struct or v.name != "PerRank" or type(ranks) is not list:
                return cx.fail(path, f"expected PerRank(ranks: [...]), found {describe(v)}")
            source = _SOURCE.get()
            rank, world = (source.rank, source.world_size) if source is not None else (0, 1)
            if len(ranks) == world:
                return inner(ranks[rank], path, cx)
            if source is not None and source.per_rank_reinit:
                target = _initial_object(path)
                if target is not None:
                    return target
            raise StateError(
                f"{format_path(path)} is per-rank state saved by {len(ranks)} rank(s), and "
                f"this job has {world}: it cannot be mapped to the new world size. Pass "
                "per_rank='reinit' to keep the value initial_state() builds instead"
            )

        return dec


def _types_hook(annotation: Any) -> t.SchemaType | None:
    origin = typing.get_origin(annotation)
    if annotation is PerRank or origin is PerRank:
        args = typing.get_args(annotation)
        return PerRankType(t.schema_of(args[0]) if args else t.AnyType())
    if annotation is Blob or origin is Blob:
        args = typing.get_args(annotation)
        return BlobType(t.schema_of(args[0]) if args else t.AnyType())
    if not isinstance(annotation, type):
        return None
    if issubclass(annotation, Serializable):
        return SerializableType(annotation)
    module = annotation.__module__ or ""
    if module.startswith("torch"):
        import torch

        if issubclass(annotation, torch.Tensor):
            return TensorType("torch")
        if issubclass(annotation, torch.Generator):
            return StatefulType(annotation)
    if module.startswith("numpy"):
        import numpy as np

        if issubclass(annotation, np.ndarray):
            return TensorType("numpy")
    if callable(getattr(annotation, "state_dict", None)) and callable(
        getattr(annotation, "load_state_dict", None)
    ):
        return StatefulType(annotation)
    return None


t.TYPE_HOOKS.append(_types_hook)


# ---------------------------------------------------------------------------------------
# Blob contexts: where tensors go when writing, and come from when reading


class _Sink:
    def __init__(self, directory: str, file: str, stage: bool = False) -> None:
        self.directory = directory
        self.file = file
        self._writer: Any = None
        self.pending: list[Struct] = []
        # Async saves write after the training loop moved on: tensors are copied to
        # staging buffers first, one copy per storage so that tied tensors stay tied.
        self.stage = stage
        self.staged: dict[tuple[Any, ...], Any] = {}
        self.staged_bytes = 0
        self.limit: int | None = None
        self.overflow = False
        # Reused staging buffers by size: fresh memory costs a page fault per 4 KiB,
        # which would dominate the copy. Buffers go back here once written.
        self.pool: dict[int, list[Any]] = {}
        self.buffers: list[Any] = []
        # Planning (see planning_blobs): tensors are collected, not written, so that the
        # ranks of a job can decide who writes what before anything is written.
        self.plan: list[Planned] | None = None
        self.per_rank: list[Struct] = []
        self.local = 0  # > 0 while encoding a PerRank value
        self.storages: dict[tuple[Any, ...], int] = {}

    def release_staging(self) -> None:
        """The staging buffers are written: back to the pool, for the next save."""
        self.staged.clear()
        for buffer in self.buffers:
            self.pool.setdefault(buffer.numel(), []).append(buffer)
        self.buffers.clear()

    @property
    def writer(self) -> Any:
        if self._writer is None:  # blobs (and torch) only when a tensor shows up
            from hyperstate.blobs import BlobWriter

            self._writer = BlobWriter(self.directory, self.file)
        return self._writer


class _Source:
    def __init__(
        self,
        directory: str,
        ctx: dict[str, Any],
        initial: Any,
        map_location: Any,
        verify: bool,
    ) -> None:
        self.directory = directory
        self.ctx = ctx
        self.initial = initial
        self.map_location = map_location
        self.verify = verify
        self.readers: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.rank = 0
        self.world_size = 1
        self.per_rank_reinit = False
        self.state_dicts: dict[int, Any] = {}  # of stateful initial objects, by id

    def reader(self, file: str) -> Any:
        with self.lock:
            reader = self.readers.get(file)
            if reader is None:
                from hyperstate.blobs import BlobReader

                reader = self.readers[file] = BlobReader(self.directory, file, verify=self.verify)
            return reader


_SINK: contextvars.ContextVar[_Sink | None] = contextvars.ContextVar(
    "hyperstate_sink", default=None
)
_SOURCE: contextvars.ContextVar[_Source | None] = contextvars.ContextVar(
    "hyperstate_source", default=None
)


def _staged(sink: _Sink, obj: Any) -> Any:
    """A copy of ``obj`` in host memory (pinned for CUDA) that views a copied storage."""
    import numpy as np
    import torch

    nbytes = obj.nbytes if isinstance(obj, np.ndarray) else obj.untyped_storage().nbytes()
    if sink.limit is not None and sink.staged_bytes + nbytes > sink.limit:
        sink.overflow = True  # over the staging budget: the caller writes synchronously
        return obj
    if isinstance(obj, np.ndarray):
        sink.staged_bytes += obj.nbytes
        return obj.copy()
    storage = obj.untyped_storage()
    key = (storage.data_ptr(), storage.device, storage.nbytes())
    copy = sink.staged.get(key)
    if copy is None:
        free = sink.pool.get(storage.nbytes())
        buffer = (
            free.pop()
            if free
            else torch.empty(
                storage.nbytes(),
                dtype=torch.uint8,
                pin_memory=obj.is_cuda and torch.cuda.is_available(),
            )
        )
        # A blocking copy: the writer thread reads the buffer right away.
        buffer.copy_(torch.empty(0, dtype=torch.uint8, device=obj.device).set_(storage))
        sink.buffers.append(buffer)
        copy = sink.staged[key] = buffer.untyped_storage()
        sink.staged_bytes += storage.nbytes()
    view = torch.empty(0, dtype=obj.dtype)
    view.set_(copy, obj.storage_offset(), obj.size(), obj.stride())
    return view


class BlobFlush:
    """Writes the blob file of a ``writing_blobs`` block: ``flush()`` -> entry count.

    ``staged_bytes`` and ``overflow`` tell how much was copied to staging buffers and
    whether the staging budget ran out (then the originals are read when flushing, so
    the flush must happen before training changes them).
    """

    def __init__(self, sink: _Sink) -> None:
        self._sink = sink

    @property
    def staged_bytes(self) -> int:
        """Bytes copied to staging buffers."""
        return self._sink.staged_bytes

    @property
    def overflow(self) -> bool:
        """Whether some tensors were left unstaged because of the staging limit."""
        return self._sink.overflow

    @property
    def file_size(self) -> int:
        """The size of the blob file written (0 before the flush)."""
        writer = self._sink._writer
        return int(writer.written_bytes) if writer is not None else 0

    @property
    def file_checksum(self) -> str:
        """The xxh3-64 checksum of the whole blob file written ("" before the flush)."""
        writer = self._sink._writer
        return str(writer.file_checksum) if writer is not None else ""

    def __call__(self) -> int:
        sink = self._sink
        if not sink.pending:
            return 0
        refs = sink.writer.write()
        by_key = {ref.key: ref for ref in refs}
        for node in sink.pending:
            node.fields["checksum"] = by_key[node.fields["key"]].checksum
        sink.release_staging()
        return len(by_key)


@contextlib.contextmanager
def writing_blobs(
    directory: str,
    file: str,
    *,
    stage: bool = False,
    staging_limit: int | None = None,
    staging_pool: dict[int, list[Any]] | None = None,
) -> Iterator[BlobFlush]:
    """Within the block, tensors that are encoded go to ``directory/file``.

    Yields a :class:`BlobFlush` that writes the blob file (if any tensor was added),
    fills the checksums into the references, and returns the number of entries. With
    ``stage``, tensors are copied to host staging buffers (at most ``staging_limit``
    bytes, reused from ``staging_pool`` across saves) as they are encoded, so the flush
    may run later, in another thread, while training changes the originals.
    """
    sink = _Sink(directory, file, stage)
    sink.limit = staging_limit
    if staging_pool is not None:
        sink.pool = staging_pool
    token = _SINK.set(sink)
    try:
        yield BlobFlush(sink)
    finally:
        _SINK.reset(token)


@contextlib.contextmanager
def reading_blobs(
    directory: str,
    *,
    ctx: dict[str, Any] | None = None,
    initial: Any = None,
    map_location: Any = None,
    verify: bool = True,
    rank: int = 0,
    world_size: int = 1,
    per_rank_reinit: bool = False,
) -> Iterator[None]:
    """Within the block, tensor references are resolved against ``directory``.

    ``rank`` and ``world_size`` choose each rank's value of ``PerRank`` fields;
    ``per_rank_reinit`` keeps the initial value of those saved by another number of ranks.
    """
    source = _Source(directory, dict(ctx or {}), initial, map_location, verify)
    source.rank, source.world_size = rank, world_size
    source.per_rank_reinit = per_rank_reinit
    token = _SOURCE.set(source)
    try:
        yield
    finally:
        _SOURCE.reset(token)


# ---------------------------------------------------------------------------------------
# Tensors and arrays <-> reference records


def _encode_array(obj: Any, path: Path, kind: str) -> Any:
    if kind == "torch":
        import torch

        if not isinstance(obj, torch.Tensor):
            raise ConfigError([Issue(path, f"expected a torch.Tensor, found {type(obj).__name__}")])
        if obj.dim() == 0 and not obj.is_complex():
            # Scalars (optimizer steps, loss scales) stay readable and editable as text.
            fields: dict[str, Any] = {
                "dtype": str(obj.dtype).removeprefix("torch."),
                "value": obj.item(),
            }
            if obj.device.type != "cpu":
                fields["device"] = str(obj.device)
            return Struct("Tensor", fields)
    else:
        import numpy as np

        if not isinstance(obj, np.ndarray):
            raise ConfigError(
                [Issue(path, f"expected a numpy.ndarray, found {type(obj).__name__}")]
            )
    sink = _SINK.get()
    if sink is None:
        raise StateError(
            f"{format_path(path)} holds a {'tensor' if kind == 'torch' else 'array'}; tensors are "
            "stored in blob files beside the text, so dump() needs a path"
        )
    if sink.plan is not None:
        return _plan(sink, obj, path, kind)
    ref = sink.writer.add(_key_hint(path), _staged(sink, obj) if sink.stage else obj)
    node = Struct("Tensor" if kind == "torch" else "Array", _ref_fields(ref))
    sink.pending.append(node)
    return node


def _ref_fields(ref: Any) -> dict[str, Any]:
    """The fields of a reference record in ``state.ron`` for a written blob entry."""
    fields: dict[str, Any] = {
        "file": ref.file,
        "key": ref.key,
        "dtype": ref.dtype,
        "shape": tuple(ref.shape),
    }
    if getattr(ref, "stride", None) is not None:
        fields["stride"] = tuple(ref.stride)
        fields["offset"] = ref.offset
    device = getattr(ref, "device", "cpu")
    if device != "cpu":
        fields["device"] = device
    fields["checksum"] = ref.checksum
    return fields


# ---------------------------------------------------------------------------------------
# Planned saves: collect first, let the ranks decide who writes what, then write


@dataclass
class Planned:
    """A tensor or array met while encoding a state for a planned save.

    ``placement`` is ``"replicated"`` (the same on every rank: written once, by the rank
    the plan assigns), ``"sharded"`` (a ``DTensor``'s local shard: written by the rank
    that owns it, at global offset ``at``) or ``"rank"`` (inside a ``PerRank`` value:
    written by this rank). Tensors that share storage have the same ``group``.
    """

    node: Struct
    value: Any
    path: Path
    placement: str
    nbytes: int
    group: int
    at: tuple[int, ...] = ()
    writes: bool = True  # sharded: whether this rank is the one that writes the shard

    def signature(self) -> str:
        """What must be the same on every rank for the plan to be valid."""
        shape = self.node.fields.get("shape", ())
        dtype = self.node.fields.get("dtype", "")
        return f"{_key_hint(self.path)}:{self.placement}:{dtype}:{shape}:{self.group}"


def _plan(sink: _Sink, obj: Any, path: Path, kind: str) -> Struct:
    assert sink.plan is not None
    index = len(sink.plan)
    name = "Tensor" if kind == "torch" else "Array"
    if kind == "numpy":
        nbytes, group = int(obj.nbytes), index
        placement = "rank" if sink.local else "replicated"
        sink.plan.append(Planned(Struct(name, {}), obj, path, placement, nbytes, group))
        return sink.plan[-1].node
    if type(obj).__name__ == "DTensor":
        return _plan_dtensor(sink, obj, path, index)
    storage = obj.untyped_storage()
    key = (storage.data_ptr(), storage.device, storage.nbytes())
    group = sink.storages.setdefault(key, index) if storage.nbytes() else index
    placement = "rank" if sink.local else "replicated"
    nbytes = int(obj.numel() * obj.element_size())
    sink.plan.append(Planned(Struct(name, {}), obj, path, placement, nbytes, group))
    return sink.plan[-1].node


def _plan_dtensor(sink: _Sink, obj: Any, path: Path, index: int) -> Struct:
    """A ``DTensor``: replicated, or a shard written by one of the ranks that hold it."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    assert sink.plan is not None
    local = obj.to_local()
    placements = tuple(obj.placements)
    bad = [p for p in placements if not isinstance(p, Replicate | Shard)]
    if bad:
        raise StateError(
            f"{format_path(path)} is a DTensor with placements {placements}; expected Shard "
            "or Replicate (redistribute() a Partial tensor before saving it)"
        )
    nbytes = int(local.numel() * local.element_size())
    if all(isinstance(p, Replicate) for p in placements):
        placement = "rank" if sink.local else "replicated"
        sink.plan.append(Planned(Struct("Tensor", {}), local, path, placement, nbytes, index))
        return sink.plan[-1].node
    mesh = obj.device_mesh
    _, offset = compute_local_shape_and_global_offset(obj.shape, mesh, placements)
    # Ranks that differ only along replicated mesh dimensions hold the same shard: the
    # one at coordinate 0 of those dimensions writes it.
    coordinate = mesh.get_coordinate() or []
    writes = local.numel() > 0 and all(  # an empty shard (more ranks than rows) is not written
        c == 0 for c, p in zip(coordinate, placements, strict=False) if not p.is_shard()
    )
    fields: dict[str, Any] = {
        "dtype": _dtype_name(local),
        "shape": tuple(int(n) for n in obj.shape),
        "shards": [],
    }
    if local.device.type != "cpu":
        fields["device"] = str(local.device)
    node = Struct("Tensor", fields)
    at = tuple(int(o) for o in offset)
    sink.plan.append(Planned(node, local, path, "sharded", nbytes, index, at, writes))
    return node


def _dtype_name(obj: Any) -> str:
    return str(obj.dtype).removeprefix("torch.")


class BlobPlan:
    """The tensors of a state encoded by ``planning_blobs``, to be written by their owners.

    Every rank encodes the whole state; :attr:`items` lists the tensors met, in encoding
    order (the same on every rank). The caller decides which items this rank writes,
    calls :meth:`write`, exchanges the returned records between ranks, and (on the rank
    that writes ``state.ron``) passes them all to :meth:`fill`.
    """

    def __init__(self, sink: _Sink) -> None:
        self._sink = sink
        self._written: list[int] = []
        self.file_size = 0
        self.file_checksum = ""

    @property
    def items(self) -> list[Planned]:
        """The tensors met while encoding, in order."""
        assert self._sink.plan is not None
        return self._sink.plan

    @property
    def overflow(self) -> bool:
        """Whether some owned tensors were left unstaged because of the staging limit."""
        return self._sink.overflow

    def signature(self) -> str:
        """A digest of the plan's structure: equal on every rank, or the plan is invalid."""
        from hyperstate.blobs import checksum

        text = "\n".join(i.signature() for i in self.items)
        return f"{len(self.items)}:{checksum(text.encode('utf-8'))}"

    def keep(self, owned: list[int]) -> None:
        """Keep (and stage, for async saves) the items this rank writes; drop the rest."""
        sink = self._sink
        mine = set(owned)
        for i, item in enumerate(self.items):
            if i not in mine:
                item.value = None  # training may change it: this rank does not write it
            elif sink.stage:
                item.value = _staged(sink, item.value)
        self._written = sorted(mine)

    def write(self) -> dict[int, Struct]:
        """Write this rank's blob file; return the records of what it wrote.

        The records give, for each written item (by index), the fields of its reference
        (for a shard: its ``Shard(...)`` record). They are in this rank's tree already;
        :meth:`fill` puts other ranks' records into it.
        """
        records: dict[int, Struct] = {}
        if self._written:
            from hyperstate.blobs import BlobWriter

            sink = self._sink
            writer = BlobWriter(sink.directory, sink.file)
            added = [
                (i, writer.add(_key_hint(self.items[i].path), self.items[i].value))
                for i in self._written
            ]
            # Refs come back in the order of add(); keys are not unique (a tensor and a
            # view of it share their storage's entry).
            for (i, _), ref in zip(added, writer.write(), strict=True):
                item = self.items[i]
                fields = _ref_fields(ref)
                if item.placement == "sharded":
                    fields = {"at": item.at, **fields}
                    records[i] = Struct("Shard", fields)
                else:
                    records[i] = Struct(item.node.name, fields)
                item.value = None
            self.file_size = int(writer.written_bytes)
            self.file_checksum = str(writer.file_checksum)
            sink.release_staging()
        self.fill([records])
        return records

    def fill(self, records: list[dict[int, Struct]]) -> None:
        """Put written entries' references into the tree (records of one or more ranks)."""
        for rank_records in records:
            for i, record in rank_records.items():
                node = self.items[i].node
                if record.name == "Shard":
                    shards = node.fields["shards"]
                    if all(s.fields["at"] != record.fields["at"] for s in shards):
                        shards.append(record)
                        shards.sort(key=lambda s: tuple(s.fields["at"]))
                else:
                    node.fields.update(record.fields)

    def per_rank_values(self) -> list[Any]:
        """This rank's values of the ``PerRank`` fields (after :meth:`write`)."""
        return [node.fields["ranks"][0] for node in self._sink.per_rank]

    def set_per_rank(self, values: list[list[Any]]) -> None:
        """Give the ``PerRank`` fields every rank's value (``values[r]`` from rank ``r``)."""
        for j, node in enumerate(self._sink.per_rank):
            node.fields["ranks"] = [v[j] for v in values]


@contextlib.contextmanager
def planning_blobs(
    directory: str,
    file: str,
    *,
    stage: bool = False,
    staging_limit: int | None = None,
    staging_pool: dict[int, list[Any]] | None = None,
) -> Iterator[BlobPlan]:
    """Within the block, tensors that are encoded are collected into a :class:`BlobPlan`.

    Nothing is written (or staged) until the plan's owner says which items this rank
    writes (:meth:`BlobPlan.keep`); then :meth:`BlobPlan.write` writes ``directory/file``.
    """
    sink = _Sink(directory, file, stage)
    sink.limit = staging_limit
    sink.plan = []
    if staging_pool is not None:
        sink.pool = staging_pool
    token = _SINK.set(sink)
    try:
        yield BlobPlan(sink)
    finally:
        _SINK.reset(token)


_INLINE_DTYPES = (
    "float64",
    "float32",
    "float16",
    "bfloat16",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
)


def _decode_array(v: Struct, path: Path) -> Any:
    fields = v.fields
    if "value" in fields and "file" not in fields:
        import torch

        name = fields.get("dtype", "float32")
        if name not in _INLINE_DTYPES:  # a fixed list: never look up names from the file
            raise ConfigError(
                [Issue(path, f"expected a dtype among {', '.join(_INLINE_DTYPES)}, found {name!r}")]
            )
        dtype = getattr(torch, name)
        source = _SOURCE.get()
        device = _device(fields.get("device", "cpu"), source.map_location if source else None)
        return torch.tensor(fields["value"], dtype=dtype, device=device)
    source = _SOURCE.get()
    if source is None:
        raise StateError(f"{format_path(path)} refers to a blob file; load it from a path")
    if "shards" in fields:
        return _decode_sharded(v, path, source)
    value = _read_entry(v, path, source)
    if source.world_size > 1 and v.name == "Tensor":
        target = _initial_object(path)
        if type(target).__name__ == "DTensor" and tuple(target.shape) == tuple(value.shape):
            return _fit_dtensor(target, [((0,) * value.dim(), value)], path)
    return value


def _read_entry(v: Struct, path: Path, source: _Source) -> Any:
    from hyperstate.blobs import BlobRef

    fields = v.fields
    try:
        ref = BlobRef(
            file=str(fields["file"]),
            key=str(fields["key"]),
            dtype=str(fields["dtype"]),
            shape=tuple(int(s) for s in fields["shape"]),
            kind="numpy" if v.name == "Array" else "torch",
            stride=tuple(int(s) for s in fields["stride"]) if "stride" in fields else None,
            offset=int(fields.get("offset", 0)),
            checksum=str(fields.get("checksum", "")),
            device=str(fields.get("device", "cpu")),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError([Issue(path, f"malformed blob reference {v!r}: {e}")]) from None
    return source.reader(ref.file).read(ref, map_location=source.map_location)


def _decode_sharded(v: Struct, path: Path, source: _Source) -> Any:
    """A tensor saved as shards: this rank's part of the target ``DTensor``, or the whole."""
    fields = v.fields
    try:
        shape = tuple(int(n) for n in fields["shape"])
        shards = [(tuple(int(o) for o in s.fields["at"]), s) for s in fields["shards"]]
        if not all(type(s) is Struct and len(at) == len(shape) for at, s in shards):
            raise ValueError("each shard must be Shard(at: (...), ...) of the tensor's rank")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ConfigError([Issue(path, f"malformed sharded tensor {v!r}: {e}")]) from None
    target = _initial_object(path)
    if type(target).__name__ == "DTensor" and tuple(target.shape) == shape:
        # Read only the shards that overlap this rank's part of the new layout.
        lo, hi = _local_box(target)
        parts = [
            (at, _read_entry(s, (*path, "shards", i), source))
            for i, (at, s) in enumerate(shards)
            if _overlaps(at, tuple(int(n) for n in s.fields["shape"]), lo, hi)
        ]
        return _fit_dtensor(target, parts, path)
    import torch

    dtype_name = str(fields.get("dtype", ""))
    if dtype_name not in _SHARD_DTYPES:
        raise ConfigError([Issue(path, f"unsupported dtype {dtype_name!r} of a sharded tensor")])
    parts = [(at, _read_entry(s, (*path, "shards", i), source)) for i, (at, s) in enumerate(shards)]
    device = parts[0][1].device if parts else torch.device("cpu")
    whole = torch.empty(shape, dtype=getattr(torch, dtype_name), device=device)
    covered = sum(int(p.numel()) for _, p in parts)
    if covered != whole.numel():
        raise StateError(
            f"{format_path(path)}: the shards cover {covered} of {whole.numel()} elements"
        )
    for at, part in parts:
        whole[tuple(slice(a, a + n) for a, n in zip(at, part.shape, strict=True))] = part
    return whole


_SHARD_DTYPES = (*_INLINE_DTYPES, "complex64", "complex128", "uint16", "uint32", "uint64")


def _local_box(target: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(
        target.shape, target.device_mesh, target.placements
    )
    lo = tuple(int(o) for o in offset)
    return lo, tuple(o + int(n) for o, n in zip(lo, shape, strict=True))


def _overlaps(
    at: tuple[int, ...], shape: tuple[int, ...], lo: tuple[int, ...], hi: tuple[int, ...]
) -> bool:
    return all(a < h and a + n > low for a, n, low, h in zip(at, shape, lo, hi, strict=True))


def _fit_dtensor(target: Any, parts: list[tuple[tuple[int, ...], Any]], path: Path) -> Any:
    """A ``DTensor`` laid out like ``target``, filled from ``parts`` (global offset, data)."""
    import torch
    from torch.distributed.tensor import DTensor

    lo, hi = _local_box(target)
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
        return DTensor.from_local(
            local,
            target.device_mesh,
            target.placements,
            run_check=False,
            shape=target.shape,
            stride=target.stride(),
        )
    local = torch.empty(shape, dtype=target.dtype, device=device)
    filled = 0
    for at, part in parts:
        if part.dim() != len(lo):
            raise StateError(
                f"{format_path(path)}: saved with {part.dim()} dimensions, the target has {len(lo)}"
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
            f"{format_path(path)}: the checkpoint covers {filled} of the {local.numel()} "
            f"elements of this rank's part of a {tuple(target.shape)} tensor (was the tensor "
            "saved with another shape?)"
        )
    return DTensor.from_local(
        local,
        target.device_mesh,
        target.placements,
        run_check=False,
        shape=target.shape,
        stride=target.stride(),
    )


def _device(recorded: str, map_location: Any) -> Any:
    import torch

    if map_location is not None:
        return torch.device(map_location) if isinstance(map_location, str) else map_location
    if recorded.startswith("cuda") and not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device(recorded)


def _key_hint(path: Path) -> str:
    return ".".join(str(p) for p in path) or "value"


# ---------------------------------------------------------------------------------------
# Plain trees (state dicts) with tensors inside


def _encode_plain(obj: Any, path: Path) -> Any:
    # Tensors and arrays inside reach _encode_any_hook through serde's Any encoder.
    return encode_plain(obj, path)


def _array_kind(obj: Any) -> str | None:
    module = type(obj).__module__ or ""
    if module.startswith("torch"):
        import torch

        if isinstance(obj, torch.Tensor):
            return "torch"
    elif module.startswith("numpy"):
        import numpy as np

        if isinstance(obj, np.ndarray):
            return "numpy"
    return None


def _decode_plain(v: Any, path: Path) -> Any:
    tv = type(v)
    if tv is Struct:
        if v.name in ("Tensor", "Array") and (
            "file" in v.fields or "value" in v.fields or "shards" in v.fields
        ):
            return _decode_array(v, path)
        return {k: _decode_plain(x, (*path, k)) for k, x in v.fields.items()}
    if tv is dict:
        return {k: _decode_plain(x, (*path, k)) for k, x in v.items()}
    if tv is list:
        return [_decode_plain(x, (*path, i)) for i, x in enumerate(v)]
    if tv is tuple:
        return tuple(_decode_plain(x, (*path, i)) for i, x in enumerate(v))
    return plain(v)


# ---------------------------------------------------------------------------------------
# Stateful objects


def _state_dict(obj: Any) -> Any:
    import torch

    if isinstance(obj, torch.Generator):
        return {"state": obj.get_state()}
    return obj.state_dict()


def _load_state_dict(target: Any, state: Any) -> None:
    import torch

    if isinstance(target, torch.Generator):
        target.set_state(state["state"])
        return
    target.load_state_dict(state)


def _initial_object(path: Path) -> Any:
    source = _SOURCE.get()
    if source is None or source.initial is None:
        return None
    obj = source.initial
    owner, start = None, 0  # the innermost stateful object on the path, where it starts
    for i, seg in enumerate(path):
        if isinstance(seg, str) and hasattr(obj, "__dataclass_fields__"):
            obj = object.__getattribute__(obj, seg) if isinstance(obj, Lazy) else getattr(obj, seg)
            continue
        if callable(getattr(obj, "state_dict", None)) and not isinstance(obj, dict):
            # Inside a stateful object: its state dict holds the targets (e.g. DTensors).
            owner, start = obj, i
            state_dict = source.state_dicts.get(id(obj))
            if state_dict is None:
                state_dict = source.state_dicts[id(obj)] = obj.state_dict()
            obj = state_dict
        try:
            obj = obj[seg]
        except (KeyError, IndexError, TypeError):
            return _parameter_of(owner, path[start:]) if owner is not None else None
    return obj


def _parameter_of(optimizer: Any, rest: Path) -> Any:
    """For ``state[i][name]`` of an optimizer that has no state yet: parameter ``i``.

    A fresh optimizer has no moments to load into; their layout (e.g. the shards of an
    FSDP2 model) is that of their parameter, which the caller uses when shapes match.
    """
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list) or len(rest) != 3 or rest[0] != "state":
        return None
    params = [p for group in groups for p in group.get("params", [])]
    index = rest[1]
    return params[index] if isinstance(index, int) and 0 <= index < len(params) else None


# ---------------------------------------------------------------------------------------
# Lazy fields


class _Pending:
    """A blob-backed field that has not been read yet."""

    __slots__ = ("load", "on_access", "source")

    def __init__(
        self,
        load: Callable[[], Any],
        source: _Source | None,
        on_access: dict[str, Callable[[Callable[[], Any]], Any]] | None = None,
    ) -> None:
        self.load = load
        self.source = source
        self.on_access = on_access

    def resolve(self, owner: Any, name: str) -> Any:
        resolving: list[str] = _RESOLVING.setdefault(id(owner), [])
        if name in resolving:
            chain = " -> ".join([*resolving[resolving.index(name) :], name])
            raise StateError(f"cycle while loading lazy fields: {chain}")
        resolving.append(name)
        if self.source is not None:
            self.source.ctx["state"] = owner
        token = _SOURCE.set(self.source)
        around = self.on_access.get(name) if self.on_access is not None else None
        try:
            value = self.load() if around is None else around(self.load)
        finally:
            _SOURCE.reset(token)
            resolving.pop()
            if not resolving:
                _RESOLVING.pop(id(owner), None)
        object.__setattr__(owner, name, value)
        return value


_RESOLVING: dict[int, list[str]] = {}
_ON_ACCESS: contextvars.ContextVar[dict[str, Callable[[Callable[[], Any]], Any]] | None] = (
    contextvars.ContextVar("hyperstate_on_access", default=None)
)


def lazy_field(load: Callable[[], Any]) -> _Pending:
    """A placeholder that :class:`Lazy` resolves with ``load()`` on first access."""
    return _Pending(load, _SOURCE.get(), _ON_ACCESS.get())


@contextlib.contextmanager
def loading_lazily(around: dict[str, Callable[[Callable[[], Any]], Any]]) -> Iterator[None]:
    """Within the block, a lazy field named in ``around`` loads as ``around[name](load)``.

    The loader of a state whose text is parsed on access (see
    :func:`hyperstate.ron.loads_deferred`) uses it to parse a field's text before the
    field is decoded, and to place the errors of that decoding in the file. It runs
    before a ``__post_init__`` could read the field, as the placeholders are made.
    """
    token = _ON_ACCESS.set(around)
    try:
        yield
    finally:
        _ON_ACCESS.reset(token)


def deferred_fields(node: t.StructType) -> list[str]:
    """The fields of ``node`` that a :class:`Lazy` state loads on first access."""
    if not getattr(node.cls, "__hyperstate_lazy__", False):
        return []
    return [f.name for f in node.fields if holds_blobs(f.type)]


def holds_blobs(node: t.SchemaType) -> bool:
    """Whether values of ``node`` may live in blob files (so a Lazy state defers them)."""
    if isinstance(node, TensorType | SerializableType | BlobType | StatefulType):
        return True
    if isinstance(node, t.OptionType | PerRankType):
        return holds_blobs(node.inner)
    if isinstance(node, t.ListType | t.VarTupleType):
        return holds_blobs(node.item)
    if isinstance(node, t.TupleType):
        return any(holds_blobs(i) for i in node.items)
    if isinstance(node, t.DictType):
        return holds_blobs(node.value)
    return False


def _encode_any_hook(obj: Any, path: Path) -> Any:
    kind = _array_kind(obj)
    return NotImplemented if kind is None else _encode_array(obj, path, kind)


Hooks.encode_any = _encode_any_hook
Hooks.decode_any = _decode_plain
Hooks.defer = holds_blobs
Hooks.pending = lazy_field
