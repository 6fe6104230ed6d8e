"""``PerRank[T]``: state whose value differs between the ranks of a job.

Every rank saves its own value (RNG states, a data loader's position); ``state.ron``
holds them as ``PerRank(ranks: [rank 0's, rank 1's, ...])`` and each rank restores its
own. :data:`EXTENSION` teaches the schema tree this kind.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from hyperstate import typeinfo as t
from hyperstate.distributed.plan import BlobPlan
from hyperstate.errors import StateError, ValuePath, format_path
from hyperstate.ron import Struct
from hyperstate.serde import decoder_of, describe, encoder_of
from hyperstate.tensors.context import current_sink, current_source, initial_object

__all__ = ["EXTENSION", "PerRank", "PerRankType"]

T = TypeVar("T")


class PerRank(Generic[T]):
    """``PerRank[T]`` marks a field whose value differs between the ranks of a job.

    Every rank saves its own value (RNG states, a data loader's position); ``state.ron``
    holds them as ``PerRank(ranks: [rank 0's, rank 1's, ...])`` and each rank restores its
    own. A checkpoint written by another number of ranks cannot be mapped: loading it is a
    :class:`~hyperstate.StateError`, unless the manager is told to re-initialise such
    fields (``per_rank="reinit"``), which keeps the value that ``initial_state`` built.
    """


@dataclass(frozen=True)
class PerRankType(t.ExtensionType):
    """``PerRank[T]``: one value of type ``inner`` per rank."""

    inner: t.SchemaType

    def children(self) -> tuple[t.SchemaType, ...]:
        return (self.inner,)

    def encoder(self) -> Callable[[Any, Any, bool], Any]:
        inner = encoder_of(self.inner)

        def enc(obj: Any, where: ValuePath, elide: bool) -> Any:
            sink = current_sink()
            plan = sink if isinstance(sink, BlobPlan) else None
            if plan is not None:
                plan.local += 1  # tensors inside belong to this rank alone
            try:
                value = inner(obj, where, elide)
            finally:
                if plan is not None:
                    plan.local -= 1
            node = Struct("PerRank", {"ranks": [value]})
            if plan is not None:
                plan.add_per_rank(node)  # the other ranks' values are added by rank 0
            return node

        return enc

    def decoder(self) -> Callable[[Any, Any, Any], Any]:
        inner = decoder_of(self.inner)

        def dec(v: Any, where: ValuePath, cx: Any) -> Any:
            ranks = v.fields.get("ranks") if type(v) is Struct else None
            if type(v) is not Struct or v.name != "PerRank" or type(ranks) is not list:
                return cx.fail(where, f"expected PerRank(ranks: [...]), found {describe(v)}")
            source = current_source()
            rank, world = (source.rank, source.world_size) if source is not None else (0, 1)
            if len(ranks) == world:
                return inner(ranks[rank], where, cx)
            if source is not None and source.per_rank_reinit:
                target = initial_object(where)
                if target is not None:
                    return target
            raise StateError(
                f"{format_path(where)} is per-rank state saved by {len(ranks)} rank(s), and "
                f"this job has {world}: it cannot be mapped to the new world size. Pass "
                "per_rank='reinit' to keep the value initial_state() builds instead"
            )

        return dec


class _Extension:
    """``PerRank[T]`` for :func:`hyperstate.typeinfo.register`."""

    def schema_of(self, annotation: Any) -> t.SchemaType | None:
        if annotation is PerRank or typing.get_origin(annotation) is PerRank:
            args = typing.get_args(annotation)
            return PerRankType(t.schema_of(args[0]) if args else t.AnyType())
        return None

    def node_of_value(self, obj: Any) -> t.SchemaType | None:
        return None

    def node_of_record(self, value: Any) -> t.SchemaType | None:
        return None

    def __repr__(self) -> str:
        return "hyperstate.distributed.per_rank.EXTENSION"


EXTENSION: t.Extension = _Extension()
"""``PerRank[T]`` in the schema tree."""
