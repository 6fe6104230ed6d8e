"""``StateManager`` / ``HyperState``: a training run's config and state, checkpointed.

>>> import tempfile
>>> from dataclasses import dataclass
>>> @dataclass
... class Config:
...     lr: float = 0.1
...     steps: int = 3
>>> @dataclass
... class State:
...     step: int = 0
>>> run = tempfile.mkdtemp()
>>> with HyperState.load(Config, State, lambda c: State(), None, run, "step") as hs:
...     while hs.state.step < hs.config.steps:
...         hs.state.step += 1
...         hs.step()
>>> HyperState.load(Config, State, lambda c: State(), None, run, "step").state.step
3
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Literal, Protocol, TypeVar

from hyperstate import _fs, ron
from hyperstate.configs import _load_text, dumps, load, loads
from hyperstate.edits import apply_edit, apply_edit_requests
from hyperstate.errors import ConfigError, HyperstateError, Issue
from hyperstate.scheduled import check_schedule_fields, update_schedules
from hyperstate.serde import plain, to_value
from hyperstate.state import BlobPlan, Planned, planning_blobs
from hyperstate.storage import (
    COMMITTED,
    CheckpointInfo,
    CheckpointStore,
    Manifest,
    PendingCheckpoint,
    RetentionPolicy,
)

__all__ = ["COORDINATOR", "CheckpointPolicy", "Coordinator", "HyperState", "StateManager"]

C = TypeVar("C")
S = TypeVar("S")


def blob_file(rank: int) -> str:
    """The blob file of ``rank`` in a checkpoint directory."""
    return f"blobs/rank-{rank:05d}.safetensors"


class Coordinator(Protocol):
    """How a manager talks to the other ranks of its job (see :mod:`hyperstate.distributed`).

    Steps are named; every rank runs every step; a failure on any rank is raised on all.
    """

    rank: int
    world_size: int

    @property
    def distributed(self) -> bool: ...

    @property
    def is_main(self) -> bool: ...

    def run(
        self, step: str, fn: Callable[[], bytes], *, background: bool = ..., context: str = ...
    ) -> list[bytes]: ...

    def run_on_main(
        self, step: str, fn: Callable[[], bytes], *, background: bool = ..., context: str = ...
    ) -> bytes: ...

    def flag(self, step: str, value: int) -> int: ...

    def assign(self, items: Sequence[Planned]) -> list[int]: ...

    def close(self) -> None: ...


#: Makes the coordinator of each new manager from a collective timeout in seconds (None:
#: the default). :mod:`hyperstate.distributed` installs it when ``hyperstate`` is imported.
COORDINATOR: Callable[[float | None], Coordinator] | None = None


@dataclass(frozen=True)
class CheckpointPolicy:
    """When ``step()`` checkpoints, and which checkpoints are kept.

    Attributes:
        every_steps: checkpoint every N calls of ``step()`` (default 1 when no time
            interval is given either).
        every_seconds: checkpoint when this much time has passed since the last one.
        keep_last: keep the newest K checkpoints.
        keep_every: keep forever checkpoints whose number is a multiple of M.
        keep_best: keep the best K by the state field ``best_field``.
        best_field: dotted path of a numeric state field (e.g. ``"eval.loss"``).
        mode: ``"min"`` (lower is better) or ``"max"``.

    A checkpoint is deleted only after a newer one is committed; the newest committed
    checkpoint is never deleted. With no ``keep_*`` rule, every checkpoint is kept.
    """

    every_steps: int | None = None
    every_seconds: float | None = None
    keep_last: int | None = None
    keep_every: int | None = None
    keep_best: int | None = None
    best_field: str | None = None
    mode: Literal["min", "max"] = "min"

    def __post_init__(self) -> None:
        if self.keep_best is not None and not self.best_field:
            raise ValueError("CheckpointPolicy.keep_best needs best_field (a state field path)")
        for name in ("every_steps",):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"CheckpointPolicy.{name} must be a positive int, got {value!r}")

    @property
    def retention(self) -> RetentionPolicy:
        """The retention rules as the storage layer takes them."""
        return RetentionPolicy(self.keep_last, self.keep_every, self.keep_best, self.mode)


class StateManager(Generic[C, S]):
    """Holds ``config`` and ``state`` of a run and checkpoints them to ``checkpoint_dir``.

    Args:
        config_clz: the config dataclass.
        state_clz: the state dataclass.
        initial_state: builds a fresh state from the config (also used to restore
            stateful objects such as models and optimizers into).
        path: a config file, a checkpoint directory, or None (config from defaults).
        checkpoint_dir: where checkpoints go (any fsspec URL). If it holds a committed
            checkpoint, the run resumes from the newest one: config and state from the
            checkpoint, ``overrides`` applied on top (and recorded in later checkpoints).
        checkpoint_key: an integer state field (e.g. ``"step"``) that numbers checkpoints;
            by default the number of ``step()`` calls.
        overrides: ``"path=value"`` strings applied to the config.
        policy: when to checkpoint and what to keep (see :class:`CheckpointPolicy`).
        ctx: extra context for ``Serializable.deserialize`` (``"config"`` is added).
        async_save: ``checkpoint()`` (and so ``step()``) copies the tensors to host
            staging buffers and returns; a background thread writes and commits. At most
            one save is in flight (the next one waits); an error in the background is
            raised by the next ``step()``, ``checkpoint()`` or ``close()``.
        max_staging_bytes: a budget for staging buffers; tensors beyond it are written
            before ``checkpoint()`` returns, as in a synchronous save.
        edit_check_seconds: how often ``step()`` looks for live edit requests in
            ``checkpoint_dir`` (see :mod:`hyperstate.edits`); None turns them off.
        per_rank: what to do with ``PerRank`` fields of a checkpoint written by another
            number of ranks: ``"error"`` (a :class:`~hyperstate.StateError`) or
            ``"reinit"`` (keep the values ``initial_state`` builds).
        collective_timeout: under ``torchrun``, how many seconds a rank waits for the
            others (e.g. for one that died mid-save) before raising
            :class:`~hyperstate.distributed.DistributedError`; default 300.

    Under ``torchrun`` every rank constructs the manager with the same arguments and calls
    ``step()`` / ``checkpoint()`` at the same points; see docs/distributed.md.
    """

    def __init__(
        self,
        config_clz: type[C],
        state_clz: type[S],
        initial_state: Callable[[C], S],
        path: str | os.PathLike[str] | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        checkpoint_key: str | None = None,
        overrides: Sequence[str] | None = None,
        *,
        policy: CheckpointPolicy | None = None,
        ctx: dict[str, Any] | None = None,
        async_save: bool = False,
        max_staging_bytes: int | None = None,
        edit_check_seconds: float | None = 5.0,
        per_rank: Literal["error", "reinit"] = "error",
        collective_timeout: float | None = None,
    ) -> None:
        self.config_clz = config_clz
        self.state_clz = state_clz
        self.initial_state = initial_state
        self.checkpoint_key = checkpoint_key
        self.policy = policy or CheckpointPolicy()
        self._ctx = dict(ctx or {})
        self._steps = 0
        self._last_checkpoint_time = time.monotonic()
        self.async_save = async_save
        self.max_staging_bytes = max_staging_bytes
        self._executor: ThreadPoolExecutor | None = None
        self._inflight: Future[CheckpointInfo] | None = None
        self._staging_pool: dict[int, list[Any]] = {}
        self._metrics: dict[int, float] = {}  # best_field value by checkpoint number
        self.edit_check_seconds = edit_check_seconds
        self._last_edit_check = time.monotonic()
        self.store = CheckpointStore(os.fspath(checkpoint_dir)) if checkpoint_dir else None
        self.resumed_from: CheckpointInfo | None = None
        if per_rank not in ("error", "reinit"):
            raise ValueError(f"per_rank must be 'error' or 'reinit', got {per_rank!r}")
        self.per_rank = per_rank
        assert COORDINATOR is not None, "hyperstate.distributed installs the coordinator"
        self.ranks = COORDINATOR(collective_timeout)
        overrides = list(overrides or [])

        # Rank 0 picks the checkpoint (or config file) and sends its text to every rank,
        # so that all resume from the same one, with the same config.
        # JSON, not RON, on the wire: it escapes a whole state.ron's text in C.
        found = json.loads(self.ranks.run_on_main("find checkpoint", lambda: self._find(path)))
        if "number" in found:
            manifest = Manifest.loads(found["manifest"], f"{found['path']}/{COMMITTED}")
            source = CheckpointInfo(found["number"], found["path"], manifest)
            self.config, self.state = self._restore(source, found, overrides)
            self.resumed_from = source
            self._steps = source.number if checkpoint_key is None else 0
        elif found.get("config") is not None:
            self.config = loads(config_clz, found["config"], overrides, path=found["name"])
            self.state = initial_state(self.config)
        else:
            self.config = load(config_clz, None, overrides)
            self.state = initial_state(self.config)
        check_schedule_fields(self.config, self.state)
        update_schedules(self.config, self.state)

    # -- loading --------------------------------------------------------------------------

    def _find(self, path: str | os.PathLike[str] | None) -> bytes:
        """On rank 0: the checkpoint to resume from and its text files, or the config's."""
        found: dict[str, Any] = {}
        source = None
        if self.store is not None:
            self.store.cleanup_uncommitted()
            source = self.store.latest()
        if source is None and path is not None and _is_checkpoint(os.fspath(path)):
            source = _checkpoint_at(os.fspath(path))
        if source is not None:
            found = {
                "number": source.number,
                "path": source.path,
                "manifest": source.manifest.dumps(),
                "config": _fs.read_text(f"{source.path}/config.ron"),
                "state": _fs.read_text(f"{source.path}/state.ron"),
            }
        elif path is not None:
            found = {"name": os.fspath(path), "config": _fs.read_text(os.fspath(path))}
        return json.dumps(found).encode()

    def _restore(
        self, info: CheckpointInfo, found: dict[str, Any], overrides: list[str]
    ) -> tuple[C, S]:
        config = loads(self.config_clz, found["config"], overrides, path=f"{info.path}/config.ron")
        ctx = {**self._ctx, "config": config}
        state = _load_text(
            self.state_clz,
            f"{info.path}/state.ron",
            found["state"],
            ctx=ctx,
            initial_state=lambda c: self.initial_state(config),
            rank=self.ranks.rank,
            world_size=self.ranks.world_size,
            per_rank_reinit=self.per_rank == "reinit",
        )
        return config, state

    # -- the loop -------------------------------------------------------------------------

    def step(self) -> None:
        """Apply schedules to the config, then checkpoint if the policy says so."""
        self._raise_background_error()
        self._steps += 1
        due_by_time = self._sync_step()
        update_schedules(self.config, self.state)
        if self.store is not None and self._due(due_by_time):
            self.checkpoint()

    def _sync_step(self) -> bool:
        """Apply live edits (on every rank at the same step); whether a save is due by time.

        Rank 0 looks at the clock and the edit requests; with several ranks it sends what
        it found in one small broadcast per step (only when time-based checkpoints or live
        edits are on), so that every rank edits and saves at the same step.
        """
        ranks = self.ranks
        edits_on = self.store is not None and self.edit_check_seconds is not None
        seconds = self.policy.every_seconds
        if not edits_on and seconds is None:
            return False
        flags = 0
        applied: list[list[str]] = []
        if ranks.is_main:
            now = time.monotonic()
            if edits_on and now - self._last_edit_check >= (self.edit_check_seconds or 0.0):
                self._last_edit_check = now
                assert self.store is not None
                if apply_edit_requests(self.store.url, self.config, applied):
                    check_schedule_fields(self.config, self.state)
                flags |= 1 if applied else 0
            if seconds is not None and now - self._last_checkpoint_time >= seconds:
                flags |= 2
        if not ranks.distributed:
            return bool(flags & 2)
        flags = ranks.flag("step", flags)
        if flags & 1:
            text = ranks.run_on_main("live edit", lambda: ron.dumps(applied).encode()).decode()
            if not ranks.is_main:
                for overrides in ron.loads(text, path="<live edits from rank 0>"):
                    apply_edit(self.config, overrides)
                check_schedule_fields(self.config, self.state)
        return bool(flags & 2)

    def _due(self, due_by_time: bool) -> bool:
        every, seconds = self.policy.every_steps, self.policy.every_seconds
        if every is None and seconds is None:
            every = 1
        if every is not None and self._steps % every == 0:
            return True
        return due_by_time

    def checkpoint(self) -> CheckpointInfo | None:
        """Save now: config.ron, state.ron and blobs, then COMMITTED.

        Returns the committed checkpoint, or None when the save goes on in the background
        (``async_save``); :meth:`wait` returns it then. Under ``torchrun`` every rank calls
        it at the same step; each writes its share of the tensors, rank 0 the text files
        and, once every rank succeeded, ``COMMITTED``.

        Raises:
            HyperstateError: the save failed (or an earlier background save did);
                earlier checkpoints are untouched. With several ranks, a failure on any
                rank is a :class:`~hyperstate.distributed.DistributedError` on every rank.
        """
        if self.store is None:
            raise HyperstateError("no checkpoint_dir was given, so there is nowhere to save")
        self.wait()  # at most one save in flight; raises an earlier save's error
        store, ranks = self.store, self.ranks
        number = self._number()
        context = f"checkpoint {store.path(number)}"
        pending: PendingCheckpoint | None = None
        plan: BlobPlan | None = None
        tree: Any = None

        def prepare() -> bytes:
            nonlocal pending, plan, tree
            if ranks.is_main:
                pending = store.begin(number)
            with planning_blobs(
                store.path(number),
                blob_file(ranks.rank),
                stage=self.async_save,
                staging_limit=self.max_staging_bytes,
                staging_pool=self._staging_pool,
            ) as plan:
                tree = to_value(self.state)
            # Only another rank could disagree: one rank skips the digest of 10^4 names.
            return plan.signature().encode() if ranks.distributed else b""

        try:
            signatures = ranks.run("prepare", prepare, context=context)
            if len(set(signatures)) > 1:
                differ = [r for r, sig in enumerate(signatures) if sig != signatures[0]]
                raise HyperstateError(
                    f"{context}: the ranks disagree on the state's tensors: rank(s) "
                    f"{', '.join(map(str, differ))} encoded other tensors (names, shapes, "
                    "dtypes or placements) than rank 0; every rank must save the same state "
                    "structure (declare values that differ per rank as PerRank[...])"
                )
            if pending is None:
                pending = store.join(number)
            assert plan is not None
            plan.keep(ranks.assign(plan.items))
        except BaseException:
            if ranks.is_main and pending is not None:
                pending.abort()
            raise
        self._last_checkpoint_time = time.monotonic()
        config_text = dumps(self.config) + "\n" if ranks.is_main else ""
        if self.async_save:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="hyperstate-save")
            future = self._executor.submit(self._finish, pending, config_text, tree, plan)
            self._inflight = future
            if not plan.overflow:
                return None
            return self.wait()  # past the staging budget: the originals are being read
        return self._finish(pending, config_text, tree, plan)

    def _finish(
        self, pending: PendingCheckpoint, config_text: str, tree: Any, plan: BlobPlan
    ) -> CheckpointInfo:
        ranks = self.ranks
        background = self.async_save  # async saves talk over their own process group
        context = f"checkpoint {pending.path}"

        def write() -> bytes:
            records = plan.write()  # already in this rank's tree
            written: dict[str, Any] = {
                "records": {} if ranks.is_main else records,
                "per_rank": plan.per_rank_values(),
            }
            if plan.file_size:
                written["size"], written["checksum"] = plan.file_size, plan.file_checksum
            return ron.dumps(written).encode()

        def commit() -> bytes:
            if not ranks.is_main:
                return b""
            results = [ron.loads(w.decode(), path="<blob records>") for w in written]
            plan.fill([r["records"] for r in results])
            plan.set_per_rank([r["per_rank"] for r in results])
            pending.write_file("config.ron", config_text.encode("utf-8"))
            for rank, result in enumerate(results):
                if "size" in result:
                    pending.record(
                        blob_file(rank), size=result["size"], checksum=result["checksum"]
                    )
            pending.write_file("state.ron", (ron.dumps(tree) + "\n").encode("utf-8"))
            return pending.commit().manifest.dumps().encode()

        try:
            written = ranks.run("write blobs", write, background=background, context=context)
            manifest = ranks.run("commit", commit, background=background, context=context)[0]
        except BaseException:
            if ranks.is_main:
                pending.abort()
            raise
        info = CheckpointInfo(
            pending.number, pending.path, Manifest.loads(manifest.decode(), context)
        )
        if ranks.is_main:
            if self.policy.best_field:
                self._metrics[info.number] = _field_metric(tree, self.policy.best_field)
            self._retain()
        return info

    def wait(self) -> CheckpointInfo | None:
        """Wait for the save in flight, if any; return it, or raise its error."""
        inflight, self._inflight = self._inflight, None
        return inflight.result() if inflight is not None else None

    def _raise_background_error(self) -> None:
        if self._inflight is not None and self._inflight.done():
            self.wait()

    def _number(self) -> int:
        if self.checkpoint_key is None:
            return self._steps
        value: Any = self.state
        for name in self.checkpoint_key.split("."):
            value = getattr(value, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(
                [
                    Issue(
                        (self.checkpoint_key,),
                        f"checkpoint_key must name an int field, found {value!r}",
                    )
                ]
            )
        return value

    def _retain(self) -> None:
        assert self.store is not None
        rules = self.policy.retention
        if rules.keep_last is None and rules.keep_every is None and rules.keep_best is None:
            return
        best = self.policy.best_field
        if best is None:
            self.store.retain(rules)
            return

        def metric(info: CheckpointInfo) -> float:
            # Known for the checkpoints this run wrote; read only for older ones.
            known = self._metrics.get(info.number)
            return known if known is not None else _metric(info, best)

        self.store.retain(rules, metric)

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Wait for a save in flight (raising its error) and stop the save thread."""
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            self.ranks.close()

    def __enter__(self) -> StateManager[C, S]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class HyperState(StateManager[C, S]):
    """The name earlier releases used; :meth:`load` is the documented constructor."""

    @classmethod
    def load(
        cls,
        config_clz: type[C],
        state_clz: type[S],
        initial_state: Callable[[C], S],
        path: str | os.PathLike[str] | None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        checkpoint_key: str | None = None,
        overrides: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> HyperState[C, S]:
        """Load a HyperState from a checkpoint (if one exists) or initialize a new one.

        :param config_clz: The type of the config object.
        :param state_clz: The type of the state object.
        :param initial_state: A function that takes a config object and returns an initial
            state object.
        :param path: The path to the config file or full checkpoint directory.
        :param checkpoint_dir: The directory to store checkpoints.
        :param checkpoint_key: The key to use for the checkpoint. This must be a field of
            the state object (e.g. a field holding current iteration).
        :param overrides: A list of overrides to apply to the config.
            (Example: ``["optimizer.lr=0.1"]``)
        """
        return cls(
            config_clz,
            state_clz,
            initial_state,
            path,
            checkpoint_dir,
            checkpoint_key,
            overrides,
            **kwargs,
        )


def _is_checkpoint(path: str) -> bool:
    fs, fs_path = _fs.url_to_fs(path)
    return bool(fs.isdir(fs_path) and fs.exists(f"{fs_path.rstrip('/')}/{COMMITTED}"))


def _checkpoint_at(path: str) -> CheckpointInfo:
    parent, _, name = path.rstrip("/").rpartition("/")
    store = CheckpointStore(parent or ".")
    for info in store.list():
        if info.path.rstrip("/").endswith(name):
            return info
    raise HyperstateError(f"{path} is not a committed checkpoint of {parent or '.'}")


def _metric(info: CheckpointInfo, field_path: str) -> float:
    tree = ron.loads(_fs.read_text(f"{info.path}/state.ron"), path=f"{info.path}/state.ron")
    return _field_metric(tree, field_path)


def _field_metric(tree: Any, field_path: str) -> float:
    """The number at ``field_path`` of a state's value tree (NaN when there is none)."""
    value: Any = plain(tree)
    for name in field_path.split("."):
        value = value.get(name) if isinstance(value, dict) else None
    return float(value) if isinstance(value, int | float) else float("nan")
