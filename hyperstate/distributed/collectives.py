"""Every call hyperstate makes across ranks, in one place.

:class:`Ranks` runs *named steps*: every rank runs every step, and the outcome of each
(success with a payload, or the error it raised) is exchanged, so that a failure on any
rank is raised on every rank as one :class:`DistributedError` naming the rank(s) and the
step, instead of a hang. Payloads are bytes (RON text): nothing is pickled.

hyperstate talks over its own gloo process groups, made from the job's default group
(so it works whatever backend training uses, NCCL included): a *pair*, one group for
the training thread and one for the background thread of async saves, so that the two
never interleave collectives. Their timeout bounds how long a rank waits for a peer that
died (``collective_timeout`` of the manager, or ``HYPERSTATE_DIST_TIMEOUT``, in seconds).
A pair is made once and reused by the next :class:`Ranks` (see :meth:`Ranks.close`), so
that a script that opens and closes managers in a loop does not pile up groups.

With no process group (or a world of one), the same code runs with no-op collectives.
"""

from __future__ import annotations

import datetime
import os
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from hyperstate.distributed.plan import Planned, assign
from hyperstate.errors import DistributedError, HyperstateError

__all__ = ["DEFAULT_TIMEOUT", "Ranks"]

T = TypeVar("T")

#: Seconds a collective waits for the other ranks before failing (env
#: ``HYPERSTATE_DIST_TIMEOUT`` overrides it).
DEFAULT_TIMEOUT = 300.0


class Ranks:
    """The ranks of the job this process belongs to, and the collectives between them.

    ``Ranks()`` joins the default process group when one is initialised (as under
    ``torchrun``); otherwise it is a world of one where every collective is a no-op.
    Creating it is itself collective: every rank must create it, in the same order.
    """

    def __init__(self, timeout: float | None = None, *, join: bool = True) -> None:
        self.rank = 0
        self.world_size = 1
        if timeout is None:
            timeout = float(os.environ.get("HYPERSTATE_DIST_TIMEOUT", DEFAULT_TIMEOUT))
        self.timeout = timeout
        self._groups: dict[str, Any] = {}
        self._world: weakref.ref[Any] | None = None  # the default group ours were made over
        self._closed = False
        self._broken = False  # a collective failed: the pair is not handed on
        if not join or "torch.distributed" not in sys.modules:
            return  # a process group needs torch.distributed imported: none here
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        if self.world_size > 1:
            self._world, self._groups = _take_pair(timeout)

    @classmethod
    def alone(cls) -> Ranks:
        """A world of one, even in a job: for a save that this process makes on its own
        (``hyperstate convert``, ``hyperstate.dump``)."""
        return cls(join=False)

    def __repr__(self) -> str:
        return f"Ranks(rank={self.rank}, world_size={self.world_size})"

    @property
    def distributed(self) -> bool:
        """Whether there is more than one rank."""
        return self.world_size > 1

    @property
    def is_coordinator(self) -> bool:
        """Whether this is rank 0, which chooses, writes the text files and commits."""
        return self.rank == 0

    def close(self) -> None:
        """Hand this object's process groups on to the next :class:`Ranks` of the process.

        Every rank calls it at the same point (as the manager's ``close()`` does), once no
        collective of this object runs any more, in the background thread included.
        Afterwards this object makes no collective; closing again does nothing.

        The groups are kept for reuse rather than destroyed: destroying gloo groups
        while a peer may still be tearing its own down can abort the process at exit
        ("terminate called without an active exception"), so they live until the job's
        ``destroy_process_group()`` (or the process's end) destroys them with the rest.
        A pair that saw a collective fail (a peer died or timed out) is never reused: the
        job is broken, and the next :class:`Ranks` makes a new pair.
        """
        groups, self._groups = self._groups, {}
        self._closed = True
        if groups and self._world is not None and not self._broken:
            _give_back(self._world, groups, self.timeout)

    def assign(self, items: Sequence[Planned]) -> list[int]:
        """Indices of the planned tensors this rank writes (see :func:`plan.assign`)."""
        return assign(items, self.rank, self.world_size)

    # -- named steps ----------------------------------------------------------------

    def run(
        self,
        step: str,
        fn: Callable[[], bytes],
        *,
        background: bool = False,
        context: str = "",
    ) -> list[bytes]:
        """Run ``fn`` on every rank; return every rank's result (index = rank).

        If ``fn`` raised on any rank, every rank raises a :class:`DistributedError`
        naming the failed ranks (a rank's own exception is its ``__cause__``). With one
        rank, ``fn``'s exception propagates unchanged.
        """
        if not self.distributed:
            return [fn()]
        error: BaseException | None = None
        try:
            message = b"\0" + fn()
        except BaseException as e:  # reported to every rank, then raised
            error = e
            message = b"\1" + f"{type(e).__name__}: {e}".encode()
        results = self._all_gather(step, message, background, context)
        failures = {
            r: m[1:].decode("utf-8", "replace") for r, m in enumerate(results) if m[:1] != b"\0"
        }
        if failures:
            raise DistributedError(step, failures, context) from error
        return [m[1:] for m in results]

    def run_on_coordinator(
        self,
        step: str,
        fn: Callable[[], bytes],
        *,
        background: bool = False,
        context: str = "",
    ) -> bytes:
        """Run ``fn`` on rank 0 only and give its result to every rank (or its error)."""
        if not self.distributed:
            return fn()
        message = b""
        error: BaseException | None = None
        if self.is_coordinator:
            try:
                message = b"\0" + fn()
            except BaseException as e:
                error = e
                message = b"\1" + f"{type(e).__name__}: {e}".encode()
        result = self._broadcast(step, message, background, context)
        if result[:1] != b"\0":
            raise DistributedError(
                step, {0: result[1:].decode("utf-8", "replace")}, context
            ) from error
        return result[1:]

    def maximum(self, step: str, values: Sequence[int]) -> list[int]:
        """The largest of every rank's ``values`` (small ints, one by one), on every rank:
        one cheap collective.

        A value that only rank 0 sets (the others pass 0) reaches every rank; a value
        that any rank may set (a signal number) is known to every rank.
        """
        if not self.distributed:
            return list(values)
        import torch
        import torch.distributed as dist

        t = torch.tensor(list(values), dtype=torch.int64)
        group = self._group(False)
        self._call(step, "", lambda: dist.all_reduce(t, dist.ReduceOp.MAX, group=group))
        return [int(v) for v in t.tolist()]

    # -- transport --------------------------------------------------------------------

    def _group(self, background: bool) -> Any:
        if self._closed:
            raise HyperstateError(
                "this manager is closed: its process groups were handed on, so it can "
                "make no more collective calls (open a new manager)"
            )
        return self._groups["background" if background else "foreground"]

    def _call(self, step: str, context: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except RuntimeError as e:  # a peer died, hung past the timeout, or left early
            self._broken = True
            reason = str(e).splitlines()[0] if str(e) else repr(e)
            where = f"{context}: " if context else ""
            raise DistributedError(
                step,
                {},
                f"{where}lost contact with the other ranks during step {step!r} (a rank died "
                f"or did not arrive within {self.timeout:g} s): {reason}",
            ) from e

    def _all_gather(self, step: str, data: bytes, background: bool, context: str) -> list[bytes]:
        import torch
        import torch.distributed as dist

        group = self._group(background)
        n = self.world_size
        size = torch.tensor([len(data)], dtype=torch.int64)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(n)]
        self._call(step, context, lambda: dist.all_gather(sizes, size, group=group))
        longest = max(int(s.item()) for s in sizes)
        mine = torch.zeros(longest, dtype=torch.uint8)
        mine[: len(data)] = (
            torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else mine[:0]
        )
        out = [torch.empty(longest, dtype=torch.uint8) for _ in range(n)]
        self._call(step, context, lambda: dist.all_gather(out, mine, group=group))
        return [o[: int(s.item())].numpy().tobytes() for o, s in zip(out, sizes, strict=True)]

    def _broadcast(self, step: str, data: bytes, background: bool, context: str) -> bytes:
        import torch
        import torch.distributed as dist

        group = self._group(background)
        size = torch.tensor([len(data)], dtype=torch.int64)
        self._call(step, context, lambda: dist.broadcast(size, 0, group=group))
        buf = torch.zeros(int(size.item()), dtype=torch.uint8)
        if self.is_coordinator and data:
            buf[:] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        self._call(step, context, lambda: dist.broadcast(buf, 0, group=group))
        return buf.numpy().tobytes()


# -- the process's pairs of groups --------------------------------------------------------
#
# Making a pair is collective (``new_group`` on every rank, in the same order), and so is
# reusing one: every rank must take the same decision. It does, because the pool changes
# only in ``Ranks()`` and ``Ranks.close()``, which every rank calls in the same order (the
# manager's constructor and ``close()``), and a pair is handed back only when no
# collective of its owner can still run (``close()`` comes after the save thread ended).
# Two managers open at once hold two pairs, so the background save of one never shares a
# group with the other's training thread or its own background thread. A manager never
# closed keeps its pair (a finalizer would hand it back at a moment that differs between
# ranks). A pair that saw a collective fail is not handed back either: a job whose ranks
# lost contact is broken, and its ranks may not even agree on which of them saw the
# failure. The pool holds weak references only: when the job destroys its process groups
# (``destroy_process_group()``), their objects go, and so do their entries here.


@dataclass
class _Pair:
    """A free pair of groups, made over the default group ``world`` with ``timeout``."""

    world: weakref.ref[Any]
    timeout: float
    groups: dict[str, weakref.ref[Any]]

    def groups_over(self, world: Any) -> dict[str, Any] | None:
        """The groups, if they still exist and were made over ``world``."""
        groups = {name: ref() for name, ref in self.groups.items()}
        if self.world() is not world or any(g is None for g in groups.values()):
            return None
        return groups


_POOL: list[_Pair] = []
_POOL_LOCK = threading.Lock()  # two threads may open or close managers at once
_PAIR = ("foreground", "background")


def _take_pair(timeout: float) -> tuple[weakref.ref[Any], dict[str, Any]]:
    """A free pair made over the current default group with ``timeout``, or a new one;
    and the default group, by weak reference."""
    import torch.distributed as dist

    world = dist.group.WORLD
    found: dict[str, Any] | None = None
    with _POOL_LOCK:
        kept = []
        for pair in _POOL:
            groups = pair.groups_over(world)
            if groups is None:
                continue  # of a default group destroyed since: gone with it
            if found is None and pair.timeout == timeout:
                found = groups
            else:
                kept.append(pair)
        _POOL[:] = kept
    if found is None:
        delta = datetime.timedelta(seconds=timeout)
        found = {name: dist.new_group(backend="gloo", timeout=delta) for name in _PAIR}
    return weakref.ref(world), found


def _give_back(world: weakref.ref[Any], groups: dict[str, Any], timeout: float) -> None:
    """Keep a pair made over ``world`` for the next :class:`Ranks`, while ``world`` is the
    default group (a job that destroyed its groups destroyed these with them)."""
    import torch.distributed as dist

    if world() is None or world() is not dist.group.WORLD:
        return
    refs = {name: weakref.ref(group) for name, group in groups.items()}
    with _POOL_LOCK:
        _POOL.append(_Pair(world, timeout, refs))
