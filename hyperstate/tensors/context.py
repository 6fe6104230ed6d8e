"""Where the tensors of a state go while it is encoded, and come from while it is decoded.

Encoding a state hands every tensor and array it meets to the current :class:`Sink` (the
save path's planner, see :mod:`hyperstate.distributed.plan`), which returns the record
that stands for it in ``state.ron``. Decoding reads them through the current
:class:`Source`: the checkpoint directory, its blob readers, the objects of
``initial_state`` to restore into, and the rank of this process.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from hyperstate import _gc
from hyperstate.errors import ValuePath
from hyperstate.ron import Struct
from hyperstate.tensors.safetensors import BlobReader

__all__ = [
    "Reshard",
    "Sink",
    "Source",
    "current_sink",
    "current_source",
    "initial_object",
    "reading_blobs",
    "sending_tensors",
]

PartsOf = Callable[..., list[tuple[tuple[int, ...], Any]]]
"""``parts(lo=None, hi=None)``: the (global offset, tensor) parts of a saved tensor that
overlap the box ``[lo, hi)`` (all of them without a box), read on demand."""


class Sink(Protocol):
    """Takes the tensors of a state being encoded."""

    def add(self, obj: Any, where: ValuePath, kind: str) -> Struct:
        """Take tensor (``kind="torch"``) or array (``"numpy"``) ``obj`` found at ``where``;
        return its record, whose fields the sink fills in once the blob is written."""
        ...


class Reshard(Protocol):
    """Fits a saved tensor into the layout of the object it is restored into (a DTensor)."""

    def __call__(
        self, target: Any, shape: tuple[int, ...], parts: PartsOf, where: ValuePath
    ) -> Any | None:
        """The restored value laid out like ``target``, or None when ``target`` has no
        layout of its own (the whole tensor is then assembled)."""
        ...


class Source:
    """The checkpoint a state is read from, and what it is restored into."""

    def __init__(
        self,
        directory: str,
        ctx: dict[str, Any],
        initial: Any,
        map_location: Any,
        verify: bool,
        rank: int,
        world_size: int,
        per_rank_reinit: bool,
        reshard: Reshard | None,
        file_checksums: Mapping[str, str] | None = None,
    ) -> None:
        self.directory = directory
        self.ctx = ctx
        self.initial = initial
        self.map_location = map_location
        self.verify = verify
        self.rank = rank
        self.world_size = world_size
        self.per_rank_reinit = per_rank_reinit
        self.reshard = reshard
        self.file_checksums = dict(file_checksums or {})
        self._readers: dict[str, BlobReader] = {}
        self._lock = threading.Lock()
        self.state_dicts: dict[int, Any] = {}  # of stateful initial objects, by id

    def reader(self, file: str) -> BlobReader:
        """The (cached) reader of blob file ``file`` of this checkpoint."""
        with self._lock:
            reader = self._readers.get(file)
            if reader is None:
                reader = self._readers[file] = BlobReader(
                    self.directory,
                    file,
                    verify=self.verify,
                    file_checksum=self.file_checksums.get(file),
                )
            return reader


_SINK: contextvars.ContextVar[Sink | None] = contextvars.ContextVar("hyperstate_sink", default=None)
_SOURCE: contextvars.ContextVar[Source | None] = contextvars.ContextVar(
    "hyperstate_source", default=None
)


def current_sink() -> Sink | None:
    """The sink of the encoding in progress, if any."""
    return _SINK.get()


def current_source() -> Source | None:
    """The source of the decoding in progress, if any."""
    return _SOURCE.get()


@contextlib.contextmanager
def sending_tensors(sink: Sink) -> Iterator[None]:
    """Within the block, tensors that are encoded go to ``sink``."""
    token = _SINK.set(sink)
    try:
        with _gc.paused():
            yield
    finally:
        _SINK.reset(token)


@contextlib.contextmanager
def using_source(source: Source | None) -> Iterator[None]:
    """Within the block, records are read from ``source`` (a Lazy field's own source)."""
    token = _SOURCE.set(source)
    try:
        yield
    finally:
        _SOURCE.reset(token)


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
    reshard: Reshard | None = None,
    file_checksums: Mapping[str, str] | None = None,
) -> Iterator[Source]:
    """Within the block, tensor records are resolved against ``directory``.

    ``rank`` and ``world_size`` choose each rank's value of ``PerRank`` fields;
    ``per_rank_reinit`` keeps the initial value of those saved by another number of
    ranks; ``reshard`` lays tensors out like the ``initial`` objects they restore into;
    ``file_checksums`` (from ``COMMITTED``) check the blob files whose records lost theirs.
    """
    source = Source(
        directory,
        dict(ctx or {}),
        initial,
        map_location,
        verify,
        rank,
        world_size,
        per_rank_reinit,
        reshard,
        file_checksums,
    )
    with using_source(source), _gc.paused():
        yield source


def initial_object(where: ValuePath) -> Any:
    """The object at ``where`` in the state that ``initial_state`` built, if any.

    Inside a stateful object (a module, an optimizer) the path continues into its state
    dict, whose tensors (e.g. DTensors) are what a restored tensor is laid out like.
    """
    source = _SOURCE.get()
    if source is None or source.initial is None:
        return None
    obj = source.initial
    owner, start = None, 0  # the innermost stateful object on the path, where it starts
    for i, seg in enumerate(where):
        if isinstance(seg, str) and hasattr(obj, "__dataclass_fields__"):
            obj = object.__getattribute__(obj, seg)  # never trigger a Lazy load
            continue
        if callable(getattr(obj, "state_dict", None)) and not isinstance(obj, dict):
            owner, start = obj, i
            state_dict = source.state_dicts.get(id(obj))
            if state_dict is None:
                state_dict = source.state_dicts[id(obj)] = obj.state_dict()
            obj = state_dict
        try:
            obj = obj[seg]
        except (KeyError, IndexError, TypeError):
            return _parameter_of(owner, where[start:]) if owner is not None else None
    return obj


def _parameter_of(optimizer: Any, rest: ValuePath) -> Any:
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
