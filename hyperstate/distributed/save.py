"""The one save path of a state: every rank plans, writes its share, rank 0 commits.

A save runs as named steps on every rank (see :class:`~hyperstate.distributed.Ranks`):

1. ``prepare``: rank 0 begins the checkpoint directory; every rank encodes the state
   with a :class:`~hyperstate.distributed.plan.BlobPlan` as its tensors' sink; the ranks
   check that they planned the same tensors; each keeps (and for async saves stages)
   the tensors :func:`~hyperstate.distributed.plan.assign` gives it.
2. ``write blobs``: every rank writes its blob file and reports its records, its
   ``PerRank`` values and its file's size and checksum.
3. ``commit``: rank 0 fills every rank's records into the tree, writes the text files,
   records the blob files and writes ``COMMITTED``.

A failure at any step on any rank aborts the checkpoint directory on rank 0, so no
``COMMITTED`` is written. With one process the collectives are no-ops: the manager,
``hyperstate.dump`` of a state and ``hyperstate convert`` all save through this module.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from typing import Any

from hyperstate import ron
from hyperstate.distributed.collectives import Ranks
from hyperstate.distributed.plan import BlobPlan, assign
from hyperstate.errors import HyperstateError
from hyperstate.storage import (
    BLOB_FILES,
    STATE_FILE,
    CheckpointInfo,
    CheckpointStore,
    Manifest,
    PendingCheckpoint,
    RunInfo,
    blob_file,
)
from hyperstate.tensors.staging import Staging

__all__ = ["CheckpointSave", "write_beside"]


class CheckpointSave:
    """One checkpoint of a state, saved by every rank: :meth:`prepare`, then :meth:`finish`.

    ``prepare`` runs in the training thread (it reads the live state); ``finish`` may run
    in a background thread (async saves: the tensors were staged by ``prepare``).
    ``started`` (a ``time.monotonic()`` reading: when the run's manager started) goes into
    the run metadata that ``COMMITTED`` records (:class:`~hyperstate.storage.RunInfo`).
    """

    def __init__(
        self,
        ranks: Ranks,
        store: CheckpointStore,
        number: int,
        *,
        staging: Staging | None = None,
        started: float | None = None,
    ) -> None:
        self.ranks = ranks
        self.store = store
        self.number = number
        self.staging = staging
        self.started = started
        self.context = f"checkpoint {store.path(number)}"
        self.tree: Any = None  # the state's value tree (rank 0's, complete after finish)
        self._pending: PendingCheckpoint | None = None
        self._plan: BlobPlan | None = None

    @property
    def overflow(self) -> bool:
        """Whether some tensors were not staged (over budget): finish before training goes on."""
        return self._plan is not None and self._plan.overflow

    def prepare(self, encode: Callable[[], Any], *, stage: bool = True) -> None:
        """Step ``prepare``: encode the state with ``encode()`` and plan who writes what.

        With a staging area and ``stage=False``, the tensors this rank writes are copied
        to it later, by :meth:`finish` (in the background thread of an async save).
        """
        ranks, store = self.ranks, self.store

        def prepare() -> bytes:
            if ranks.is_coordinator:
                self._pending = store.begin(self.number)
            plan = self._plan = BlobPlan(
                store.path(self.number), blob_file(ranks.rank), self.staging, files=BLOB_FILES
            )
            self.tree = plan.encode(encode)
            # Only another rank could disagree: one rank skips the digest of 10^4 names.
            return plan.signature().encode() if ranks.distributed else b""

        try:
            signatures = ranks.run("prepare", prepare, context=self.context)
            if len(set(signatures)) > 1:
                differ = [r for r, sig in enumerate(signatures) if sig != signatures[0]]
                raise HyperstateError(
                    f"{self.context}: the ranks disagree on the state's tensors: rank(s) "
                    f"{', '.join(map(str, differ))} encoded other tensors (names, shapes, "
                    "dtypes or placements) than rank 0; every rank must save the same state "
                    "structure (declare values that differ per rank as PerRank[...])"
                )
            if self._pending is None:
                self._pending = store.join(self.number)
            assert self._plan is not None
            self._plan.keep(assign(self._plan.items, ranks.rank, ranks.world_size), stage=stage)
        except BaseException:
            self.abort()
            raise

    @property
    def kept_bytes(self) -> int:
        """Bytes of the tensors this rank writes (after :meth:`prepare`)."""
        return self._plan.kept_bytes if self._plan is not None else 0

    def finish(
        self,
        texts: Mapping[str, bytes],
        *,
        background: bool = False,
        staged: Callable[[], None] | None = None,
    ) -> CheckpointInfo:
        """Steps ``write blobs`` and ``commit``; ``texts`` are rank 0's other files
        (``config.ron``), written before ``state.ron``. Returns the committed checkpoint.

        After ``prepare(..., stage=False)`` the ``write blobs`` step first copies the
        tensors to staging, then calls ``staged()`` (even when the copy failed)."""
        ranks, plan, pending = self.ranks, self._plan, self._pending
        assert plan is not None and pending is not None, "prepare() first"

        def write() -> bytes:
            try:
                plan.stage()
            finally:
                if staged is not None:
                    staged()
            records = plan.write()  # already in this rank's tree
            written: dict[str, Any] = {
                "records": {} if ranks.is_coordinator else records,
                "per_rank": plan.per_rank_values(),
                "host": socket.gethostname(),  # for the run metadata, in the same message
            }
            if plan.file_size:
                written["size"], written["checksum"] = plan.file_size, plan.file_checksum
            return ron.dumps(written).encode()

        def commit() -> bytes:
            results = [ron.loads(w.decode(), path="<blob records>") for w in written]
            plan.fill([r["records"] for r in results])
            plan.set_per_rank([r["per_rank"] for r in results])
            for name, data in texts.items():
                pending.write_file(name, data)
            for rank, result in enumerate(results):
                if "size" in result:
                    # BlobWriter fsync'd the file and its directory before the rank replied.
                    size, checksum = result["size"], result["checksum"]
                    pending.record(blob_file(rank), size=size, checksum=checksum, synced=True)
            pending.write_file(STATE_FILE, (ron.dumps(self.tree) + "\n").encode("utf-8"))
            hosts = [str(r["host"]) for r in results if "host" in r]
            run = RunInfo.of_this_process(
                world_size=ranks.world_size, hosts=hosts, started=self.started
            )
            return pending.commit(run).manifest.dumps().encode()

        try:
            context = self.context
            written = ranks.run("write blobs", write, background=background, context=context)
            # Only rank 0 commits; the others get COMMITTED (O(ranks) bytes) by broadcast,
            # not by an all-gather that would pad every rank's empty reply to its size.
            manifest = ranks.run_on_coordinator(
                "commit", commit, background=background, context=context
            )
        except BaseException:
            self.abort()
            raise
        return CheckpointInfo(
            pending.number, pending.path, Manifest.loads(manifest.decode(), self.context)
        )

    def abort(self) -> None:
        """Remove the uncommitted directory (rank 0; a no-op before it was begun)."""
        if self.ranks.is_coordinator and self._pending is not None:
            self._pending.abort()


def write_beside(directory: str, file: str, encode: Callable[[], Any]) -> Any:
    """The save path of one process with no checkpoint directory (``hyperstate.dump`` of a
    state to a file): plan, keep every tensor, write blob file ``file`` of ``directory``,
    and return the value tree with every record filled in."""
    plan = BlobPlan(directory, file)
    tree = plan.encode(encode)
    plan.keep(range(len(plan.items)))
    plan.write()
    return tree
