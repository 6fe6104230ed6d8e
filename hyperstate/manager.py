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

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar

from hyperstate import _fs, ron
from hyperstate.configs import dumps, load
from hyperstate.edits import apply_edit_requests
from hyperstate.errors import ConfigError, HyperstateError, Issue
from hyperstate.scheduled import check_schedule_fields, update_schedules
from hyperstate.serde import plain, to_value
from hyperstate.state import BlobFlush, writing_blobs
from hyperstate.storage import (
    COMMITTED,
    CheckpointInfo,
    CheckpointStore,
    PendingCheckpoint,
    RetentionPolicy,
)

__all__ = ["CheckpointPolicy", "HyperState", "StateManager"]

C = TypeVar("C")
S = TypeVar("S")

_BLOB_FILE = "blobs/rank-00000.safetensors"


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
        overrides = list(overrides or [])

        source = self.store.latest() if self.store is not None else None
        if source is None and path is not None and _is_checkpoint(os.fspath(path)):
            source = _checkpoint_at(os.fspath(path))
        if source is not None:
            self.config, self.state = self._restore(source, overrides)
            self.resumed_from = source
            self._steps = source.number if checkpoint_key is None else 0
        else:
            config_path = os.fspath(path) if path is not None else None
            self.config = load(config_clz, config_path, overrides)
            self.state = initial_state(self.config)
        check_schedule_fields(self.config, self.state)
        update_schedules(self.config, self.state)
        if self.store is not None:
            self.store.cleanup_uncommitted()

    # -- loading --------------------------------------------------------------------------

    def _restore(self, info: CheckpointInfo, overrides: list[str]) -> tuple[C, S]:
        config = load(self.config_clz, f"{info.path}/config.ron", overrides)
        ctx = {**self._ctx, "config": config}
        state = load(
            self.state_clz,
            f"{info.path}/state.ron",
            ctx=ctx,
            initial_state=lambda c: self.initial_state(config),
        )
        return config, state

    # -- the loop -------------------------------------------------------------------------

    def step(self) -> None:
        """Apply schedules to the config, then checkpoint if the policy says so."""
        self._raise_background_error()
        self._steps += 1
        self._check_edits()
        update_schedules(self.config, self.state)
        if self.store is not None and self._due():
            self.checkpoint()

    def _check_edits(self) -> None:
        if self.store is None or self.edit_check_seconds is None:
            return
        now = time.monotonic()
        if now - self._last_edit_check < self.edit_check_seconds:
            return
        self._last_edit_check = now
        if apply_edit_requests(self.store.url, self.config):
            check_schedule_fields(self.config, self.state)

    def _due(self) -> bool:
        every, seconds = self.policy.every_steps, self.policy.every_seconds
        if every is None and seconds is None:
            every = 1
        if every is not None and self._steps % every == 0:
            return True
        return seconds is not None and time.monotonic() - self._last_checkpoint_time >= seconds

    def checkpoint(self) -> CheckpointInfo | None:
        """Save now: config.ron, state.ron and blobs, then COMMITTED.

        Returns the committed checkpoint, or None when the save goes on in the background
        (``async_save``); :meth:`wait` returns it then.

        Raises:
            HyperstateError: the save failed (or an earlier background save did);
                earlier checkpoints are untouched.
        """
        if self.store is None:
            raise HyperstateError("no checkpoint_dir was given, so there is nowhere to save")
        self.wait()  # at most one save in flight; raises an earlier save's error
        number = self._number()
        pending = self.store.begin(number)
        try:
            config_text = dumps(self.config) + "\n"
            with writing_blobs(
                pending.path,
                _BLOB_FILE,
                stage=self.async_save,
                staging_limit=self.max_staging_bytes,
                staging_pool=self._staging_pool,
            ) as flush:
                tree = to_value(self.state)
        except BaseException:
            pending.abort()
            raise
        self._last_checkpoint_time = time.monotonic()
        if self.async_save and not flush.overflow:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="hyperstate-save")
            self._inflight = self._executor.submit(self._finish, pending, config_text, tree, flush)
            return None
        return self._finish(pending, config_text, tree, flush)

    def _finish(
        self, pending: PendingCheckpoint, config_text: str, tree: Any, flush: BlobFlush
    ) -> CheckpointInfo:
        try:
            pending.write_file("config.ron", config_text.encode("utf-8"))
            if flush():  # the writer hashed the file as it wrote it: no second read
                pending.record(_BLOB_FILE, size=flush.file_size, checksum=flush.file_checksum)
            pending.write_file("state.ron", (ron.dumps(tree) + "\n").encode("utf-8"))
            info = pending.commit()
        except BaseException:
            pending.abort()
            raise
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
