"""The node kinds of training state: tensors, arrays, ``Serializable``, stateful objects,
``Blob[T]``, and :class:`Lazy` states.

- ``torch.Tensor`` / ``numpy.ndarray`` fields (and containers of them): stored in blob
  files; ``state.ron`` holds a record (see :mod:`hyperstate.tensors.codec`).
- :class:`Serializable`: ``serialize()`` gives a tree of dicts, lists, primitives and
  tensors; ``deserialize(state_dict, ctx)`` rebuilds the object.
- Objects with ``state_dict()`` / ``load_state_dict()`` (``nn.Module``, optimizers, LR
  schedulers, ``GradScaler``) and ``torch.Generator``: saved from their state dict, and
  restored *into* the object that ``initial_state(config)`` builds.
- ``Blob[T]``: the whole value is stored in a blob file, opaque in the text.
- :class:`Lazy`: a state dataclass whose blob-backed fields load on first access.

:data:`EXTENSION` teaches the schema tree these kinds (``hyperstate/__init__.py``
registers it). torch and numpy are imported only when such a type is used.
"""

from __future__ import annotations

import contextvars
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from hyperstate import ron
from hyperstate import typeinfo as t
from hyperstate.errors import ConfigError, Issue, StateError, ValuePath, format_path
from hyperstate.ron import Struct
from hyperstate.serde import decode_plain, describe, encode_plain, from_value, to_value
from hyperstate.tensors import codec
from hyperstate.tensors.context import (
    Source,
    current_sink,
    current_source,
    initial_object,
    using_source,
)

__all__ = [
    "EXTENSION",
    "Blob",
    "BlobType",
    "Lazy",
    "Serializable",
    "SerializableType",
    "StatefulType",
    "TensorType",
]

T = TypeVar("T")


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


# ---------------------------------------------------------------------------------------
# Lazy states


class _Pending:
    """A blob-backed field of a :class:`Lazy` state that has not been read yet."""

    __slots__ = ("load", "source")

    def __init__(self, load: Callable[[], Any], source: Source | None) -> None:
        self.load = load
        self.source = source

    def resolve(self, owner: Any, name: str) -> Any:
        resolving = _RESOLVING.get()
        key = (id(owner), name)
        if key in resolving:
            names = [n for i, n in resolving if i == id(owner)]
            chain = " -> ".join([*names[names.index(name) :], name])
            raise StateError(f"cycle while loading lazy fields: {chain}")
        if self.source is not None:
            self.source.ctx["state"] = owner
        token = _RESOLVING.set((*resolving, key))
        try:
            with using_source(self.source):
                value = self.load()
        finally:
            _RESOLVING.reset(token)
        object.__setattr__(owner, name, value)
        return value


# The lazy fields being loaded, innermost last: (id of the state, field name).
_RESOLVING: contextvars.ContextVar[tuple[tuple[int, str], ...]] = contextvars.ContextVar(
    "hyperstate_resolving", default=()
)


class Lazy:
    """Base class of state dataclasses whose blob-backed fields load on first access.

    A field holding tensors, arrays, ``Serializable`` or ``Blob`` values is read from its
    blob file only when the attribute is first read. A ``deserialize`` may read other
    fields of the same state; a cycle of such reads is a ``StateError`` naming the fields.
    """

    @classmethod
    def __hyperstate_pending__(cls, load: Callable[[], Any]) -> Any:
        """The placeholder of a field that ``load()`` decodes on first access."""
        return _Pending(load, current_source())

    def __getattribute__(self, name: str) -> Any:
        value = object.__getattribute__(self, name)
        if type(value) is _Pending:
            value = value.resolve(self, name)
        return value


# ---------------------------------------------------------------------------------------
# Node kinds


@dataclass(frozen=True)
class TensorType(t.ExtensionType):
    """``torch.Tensor`` (``kind="torch"``) or ``numpy.ndarray`` (``kind="numpy"``)."""

    kind: str
    blob_backed: ClassVar[bool] = True

    def type_name(self) -> str:
        return "torch.Tensor" if self.kind == "torch" else "numpy.ndarray"

    def encoder(self) -> Callable[[Any, Any, bool], Any]:
        return lambda obj, where, elide: _encode_array(obj, where, self.kind)

    def decoder(self) -> Callable[[Any, Any, Any], Any]:
        def dec(v: Any, where: ValuePath, cx: Any) -> Any:
            if codec.is_record(v):
                return _decode_array(v, where)
            return cx.fail(
                where,
                f"expected a Tensor(...) reference (of {self.describe()}), found {describe(v)}",
            )

        return dec


@dataclass(frozen=True)
class SerializableType(t.ExtensionType):
    """A :class:`Serializable` subclass."""

    cls: type
    blob_backed: ClassVar[bool] = True

    def type_name(self) -> str:
        return t.class_name(self.cls)

    def encoder(self) -> Callable[[Any, Any, bool], Any]:
        def enc(obj: Any, where: ValuePath, elide: bool) -> Any:
            if not isinstance(obj, Serializable):
                found = t.with_article(t.class_name(type(obj)))
                raise ConfigError([Issue(where, f"expected {self.describe()}, found {found}")])
            return Struct(type(obj).__name__, {"state": encode_plain(obj.serialize(), where)})

        return enc

    def decoder(self) -> Callable[[Any, Any, Any], Any]:
        def dec(v: Any, where: ValuePath, cx: Any) -> Any:
            if type(v) is not Struct or "state" not in v.fields:
                return cx.fail(
                    where,
                    f"expected {self.cls.__name__}(state: ...) (a Serializable), "
                    f"found {describe(v)}",
                )
            source = current_source()
            ctx = dict(source.ctx) if source is not None else {}
            state = decode_plain(v.fields["state"], where)
            return self.cls.deserialize(state, ctx)  # type: ignore[attr-defined]

        return dec


@dataclass(frozen=True)
class StatefulType(t.ExtensionType):
    """An object restored in place: ``nn.Module``, optimizer, scheduler, ``Generator``..."""

    cls: type
    blob_backed: ClassVar[bool] = True

    def type_name(self) -> str:
        return t.class_name(self.cls)

    def describe(self) -> str:
        return f"{t.with_article(self.type_name())} (restored in place)"

    def encoder(self) -> Callable[[Any, Any, bool], Any]:
        def enc(obj: Any, where: ValuePath, elide: bool) -> Any:
            return Struct(type(obj).__name__, {"state": encode_plain(_state_dict(obj), where)})

        return enc

    def decoder(self) -> Callable[[Any, Any, Any], Any]:
        def dec(v: Any, where: ValuePath, cx: Any) -> Any:
            if type(v) is not Struct or "state" not in v.fields:
                return cx.fail(
                    where,
                    f"expected the saved state of {self.describe()}, written "
                    f"{self.cls.__name__}(state: ...), found {describe(v)}",
                )
            target = initial_object(where)
            if target is None:
                raise StateError(
                    f"{format_path(where)} holds {self.describe()}: its saved state is "
                    "loaded into the object that initial_state builds, and there is none; "
                    "pass initial_state= (a function of the config, or a state object) "
                    "to load()"
                )
            _load_state_dict(target, decode_plain(v.fields["state"], where))
            return target

        return dec


@dataclass(frozen=True)
class BlobType(t.ExtensionType):
    """``Blob[T]``: the value of type ``inner`` is stored in a blob, opaque in the text."""

    inner: t.SchemaType
    blob_backed: ClassVar[bool] = True

    def children(self) -> tuple[t.SchemaType, ...]:
        return (self.inner,)

    def describe(self) -> str:
        return f"{t.describe_type(self.inner)}, stored in a blob file (Blob[...])"

    def encoder(self) -> Callable[[Any, Any, bool], Any]:
        def enc(obj: Any, where: ValuePath, elide: bool) -> Any:
            import numpy as np

            text = ron.dumps(to_value(obj, self.inner, elide_defaults=elide))
            data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
            return Struct("Blob", {"ron": _encode_array(data, where, "numpy")})

        return enc

    def decoder(self) -> Callable[[Any, Any, Any], Any]:
        def dec(v: Any, where: ValuePath, cx: Any) -> Any:
            if type(v) is not Struct or v.name != "Blob" or "ron" not in v.fields:
                return cx.fail(where, f"expected Blob(ron: Tensor(...)), found {describe(v)}")
            data = _decode_array(v.fields["ron"], where)
            tree = ron.loads(bytes(data).decode("utf-8"), path=f"<blob at {format_path(where)}>")
            return from_value(self.inner, tree)

        return dec


class _Extension:
    """The node kinds above, for :func:`hyperstate.typeinfo.register`."""

    def schema_of(self, annotation: Any) -> t.SchemaType | None:
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
                return _TORCH
            if issubclass(annotation, torch.Generator):
                return StatefulType(annotation)
        if module.startswith("numpy"):
            import numpy as np

            if issubclass(annotation, np.ndarray):
                return _NUMPY
        if callable(getattr(annotation, "state_dict", None)) and callable(
            getattr(annotation, "load_state_dict", None)
        ):
            return StatefulType(annotation)
        return None

    def node_of_value(self, obj: Any) -> t.SchemaType | None:
        module = type(obj).__module__ or ""
        if module.startswith("torch"):
            import torch

            if isinstance(obj, torch.Tensor):
                return _TORCH
        elif module.startswith("numpy"):
            import numpy as np

            if isinstance(obj, np.ndarray):
                return _NUMPY
        return None

    def node_of_record(self, value: Any) -> t.SchemaType | None:
        return _TORCH if codec.is_record(value) else None

    def __repr__(self) -> str:
        return "hyperstate.tensors.EXTENSION"


_TORCH = TensorType("torch")
_NUMPY = TensorType("numpy")

EXTENSION: t.Extension = _Extension()
"""Tensors, arrays, ``Serializable``, stateful objects and ``Blob[T]`` in the schema tree."""


# ---------------------------------------------------------------------------------------
# Tensors and arrays <-> records


def _encode_array(obj: Any, where: ValuePath, kind: str) -> Any:
    if kind == "torch":
        import torch

        if not isinstance(obj, torch.Tensor):
            raise ConfigError(
                [Issue(where, f"expected a torch.Tensor, found {t.class_name(type(obj))}")]
            )
        if obj.is_nested or obj.layout is not torch.strided:
            found = "a nested tensor" if obj.is_nested else f"a {obj.layout} tensor"
            raise ConfigError(
                [
                    Issue(
                        where,
                        f"expected a dense (strided) tensor, found {found}: blob files hold "
                        "dense tensors; save its .to_dense(), or its parts (indices and "
                        "values) as tensors of their own",
                    )
                ]
            )
        if not obj.is_complex():
            # Scalars (optimizer steps, loss scales) stay readable and editable as text.
            inline = codec.inline_record(obj)
            if inline is not None:
                return inline
    else:
        import numpy as np

        if not isinstance(obj, np.ndarray):
            raise ConfigError(
                [Issue(where, f"expected a numpy.ndarray, found {t.class_name(type(obj))}")]
            )
    sink = current_sink()
    if sink is None:
        raise StateError(
            f"{format_path(where)} holds a {'tensor' if kind == 'torch' else 'array'}; "
            "tensors are stored in blob files beside the text, so dump() needs a path"
        )
    return sink.add(obj, where, kind)


def _decode_array(v: Struct, where: ValuePath) -> Any:
    fields = v.fields
    source = current_source()
    if "value" in fields and "file" not in fields:
        return codec.inline_tensor(v, where, source.map_location if source else None)
    if source is None:
        raise StateError(f"{format_path(where)} refers to a blob file; load it from a path")
    if "shards" in fields and "file" not in fields:
        sharded = codec.sharded_of(v, where)

        def parts(
            lo: tuple[int, ...] | None = None, hi: tuple[int, ...] | None = None
        ) -> list[tuple[tuple[int, ...], Any]]:
            # Only the shards that overlap this rank's part are read.
            return codec.read_parts(sharded, where, source.reader, source.map_location, lo, hi)

        if source.reshard is not None:
            fitted = source.reshard(initial_object(where), sharded.shape, parts, where)
            if fitted is not None:
                return fitted
        return codec.assemble(sharded, parts())
    value = codec.read_entry(v, where, source.reader, source.map_location)
    if source.reshard is not None and source.world_size > 1 and v.name == "Tensor":
        whole = [((0,) * value.dim(), value)]
        fitted = source.reshard(initial_object(where), tuple(value.shape), lambda *_: whole, where)
        if fitted is not None:
            return fitted
    return value


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
