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
from hyperstate.serde import Hooks, describe, encode_plain, from_value, plain, to_value

__all__ = [
    "Blob",
    "Lazy",
    "Serializable",
    "StateError",
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


def _types_hook(annotation: Any) -> t.SchemaType | None:
    origin = typing.get_origin(annotation)
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
        sink.staged.clear()  # the staging buffers can be reused now
        for buffer in sink.buffers:
            sink.pool.setdefault(buffer.numel(), []).append(buffer)
        sink.buffers.clear()
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
) -> Iterator[None]:
    """Within the block, tensor references are resolved against ``directory``."""
    token = _SOURCE.set(_Source(directory, dict(ctx or {}), initial, map_location, verify))
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
    ref = sink.writer.add(_key_hint(path), _staged(sink, obj) if sink.stage else obj)
    fields = {
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
    node = Struct("Tensor" if kind == "torch" else "Array", fields)
    sink.pending.append(node)
    return node


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
    from hyperstate.blobs import BlobRef

    try:
        ref = BlobRef(
            file=str(fields["file"]),
            key=str(fields["key"]),
            dtype=str(fields["dtype"]),
            shape=tuple(int(s) for s in fields["shape"]),
            kind="torch" if v.name == "Tensor" else "numpy",
            stride=tuple(int(s) for s in fields["stride"]) if "stride" in fields else None,
            offset=int(fields.get("offset", 0)),
            checksum=str(fields.get("checksum", "")),
            device=str(fields.get("device", "cpu")),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError([Issue(path, f"malformed blob reference {v!r}: {e}")]) from None
    return source.reader(ref.file).read(ref, map_location=source.map_location)


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
        if v.name in ("Tensor", "Array") and ("file" in v.fields or "value" in v.fields):
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
    for seg in path:
        if isinstance(seg, str) and hasattr(obj, "__dataclass_fields__"):
            obj = object.__getattribute__(obj, seg) if isinstance(obj, Lazy) else getattr(obj, seg)
        else:
            try:
                obj = obj[seg]
            except (KeyError, IndexError, TypeError):
                return None
    return obj


# ---------------------------------------------------------------------------------------
# Lazy fields


class _Pending:
    """A blob-backed field that has not been read yet."""

    __slots__ = ("load", "source")

    def __init__(self, load: Callable[[], Any], source: _Source | None) -> None:
        self.load = load
        self.source = source

    def resolve(self, owner: Any, name: str) -> Any:
        resolving: list[str] = _RESOLVING.setdefault(id(owner), [])
        if name in resolving:
            chain = " -> ".join([*resolving[resolving.index(name) :], name])
            raise StateError(f"cycle while loading lazy fields: {chain}")
        resolving.append(name)
        if self.source is not None:
            self.source.ctx["state"] = owner
        token = _SOURCE.set(self.source)
        try:
            value = self.load()
        finally:
            _SOURCE.reset(token)
            resolving.pop()
            if not resolving:
                _RESOLVING.pop(id(owner), None)
        object.__setattr__(owner, name, value)
        return value


_RESOLVING: dict[int, list[str]] = {}


def lazy_field(load: Callable[[], Any]) -> _Pending:
    """A placeholder that :class:`Lazy` resolves with ``load()`` on first access."""
    return _Pending(load, _SOURCE.get())


def holds_blobs(node: t.SchemaType) -> bool:
    """Whether values of ``node`` may live in blob files (so a Lazy state defers them)."""
    if isinstance(node, TensorType | SerializableType | BlobType | StatefulType):
        return True
    if isinstance(node, t.OptionType):
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
