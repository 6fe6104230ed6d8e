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

import functools
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar

from hyperstate import ron
from hyperstate.configs import dumps, load, load_text, loads
from hyperstate.distributed.collectives import Ranks
from hyperstate.distributed.restore import Corrupt, Found, decode_everywhere, find
from hyperstate.distributed.save import CheckpointSave
from hyperstate.edits import apply_edit, apply_edit_requests
from hyperstate.errors import ConfigError, HyperstateError, Issue
from hyperstate.scheduled import check_schedule_fields, update_schedules
from hyperstate.serde import to_value
from hyperstate.storage import (
    CONFIG_FILE,
    STATE_FILE,
    CheckpointInfo,
    CheckpointStore,
    RetentionPolicy,
    field_metric,
    read_metric,
)
from hyperstate.tensors.staging import Staging

__all__ = ["CheckpointPolicy", "HyperState", "StateManager"]

C = TypeVar("C")
S = TypeVar("S")

log = logging.getLogger("hyperstate")


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
        steps, seconds = self.every_steps, self.every_seconds
        if steps is not None and (
            isinstance(steps, bool) or not isinstance(steps, int) or steps < 1
        ):
            raise ValueError(f"CheckpointPolicy.every_steps must be a positive int, got {steps!r}")
        if seconds is not None and (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not math.isfinite(seconds)
            or seconds <= 0
        ):
            raise ValueError(
                f"CheckpointPolicy.every_seconds must be a positive number, got {seconds!r}"
            )
        _ = self.retention  # the keep_* rules are checked where they are defined

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
        self._staging = Staging(max_staging_bytes) if async_save else None
        self._metrics: dict[int, float] = {}  # best_field value by checkpoint number
        self.edit_check_seconds = edit_check_seconds
        self._last_edit_check = time.monotonic()
        self.store = CheckpointStore(os.fspath(checkpoint_dir)) if checkpoint_dir else None
        self.resumed_from: CheckpointInfo | None = None
        if per_rank not in ("error", "reinit"):
            raise ValueError(f"per_rank must be 'error' or 'reinit', got {per_rank!r}")
        self.per_rank = per_rank
        self.ranks = Ranks(collective_timeout)
        overrides = list(overrides or [])

        # Rank 0 picks the checkpoint (or config file) and sends its text to every rank,
        # so that all resume from the same one, with the same config. One whose blobs
        # fail verification is skipped (never deleted) and the one before it tried.
        self._corrupt: dict[int, str] = {}  # checkpoints skipped on resume, and why
        where = os.fspath(path) if path is not None else None
        while True:
            found = find(self.ranks, self.store, where, self._corrupt)
            self._corrupt |= found.skipped
            if found.info is None:
                break
            try:
                self.config, self.state = decode_everywhere(
                    self.ranks,
                    functools.partial(self._restore, found, overrides),
                    f"resume from {found.info.path}",
                )
            except Corrupt as e:
                log.warning("skipping checkpoint %s: %s", found.info.path, e)
                self._corrupt[found.info.number] = str(e)
                continue
            self.resumed_from = found.info
            self._steps = found.info.number if checkpoint_key is None else 0
            break
        if found.info is None:
            if found.config_text is not None:
                name = found.name or ""
                self.config = loads(config_clz, found.config_text, overrides, path=name)
            else:
                self.config = load(config_clz, None, overrides)
            self.state = initial_state(self.config)
        if self._corrupt:
            log.warning(
                "%s checkpoint(s) of %s failed verification and were skipped (kept, not "
                "counted by retention): %s",
                len(self._corrupt),
                self.store.url if self.store is not None else where,
                ", ".join(map(str, sorted(self._corrupt))),
            )
        check_schedule_fields(self.config, self.state)
        update_schedules(self.config, self.state)

    # -- loading --------------------------------------------------------------------------

    def _restore(self, found: Found, overrides: list[str]) -> tuple[C, S]:
        info = found.info
        assert info is not None and found.config_text is not None
        assert found.state_text is not None
        config_url = f"{info.path}/{CONFIG_FILE}"
        config = loads(self.config_clz, found.config_text, overrides, path=config_url)
        state = load_text(
            self.state_clz,
            f"{info.path}/{STATE_FILE}",
            found.state_text,
            ctx={**self._ctx, "config": config},
            initial_state=lambda c: self.initial_state(config),
            rank=self.ranks.rank,
            world_size=self.ranks.world_size,
            per_rank_reinit=self.per_rank == "reinit",
            file_checksums={n: e.checksum for n, e in info.manifest.files.items()},
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
        if ranks.is_coordinator:
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
            text = ranks.run_on_coordinator(
                "live edit", lambda: ron.dumps(applied).encode()
            ).decode()
            if not ranks.is_coordinator:
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
        ranks = self.ranks
        number = self._number()
        if number in self._corrupt and ranks.is_coordinator:
            moved = self.store.set_aside(number)
            log.warning("checkpoint %s was corrupt: moved to %s to save anew", number, moved)
            del self._corrupt[number]
        save = CheckpointSave(ranks, self.store, number, staging=self._staging)
        save.prepare(lambda: to_value(self.state))
        self._last_checkpoint_time = time.monotonic()
        texts = {CONFIG_FILE: (dumps(self.config) + "\n").encode()} if ranks.is_coordinator else {}
        if self.async_save:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="hyperstate-save")
            self._inflight = self._executor.submit(self._finish, save, texts)
            if not save.overflow:
                return None
            return self.wait()  # past the staging budget: the originals are being read
        return self._finish(save, texts)

    def _finish(self, save: CheckpointSave, texts: dict[str, bytes]) -> CheckpointInfo:
        # Async saves talk over their own process group, from the background thread.
        info = save.finish(texts, background=self.async_save)
        if self.ranks.is_coordinator:
            if self.policy.best_field:
                self._metrics[info.number] = field_metric(save.tree, self.policy.best_field)
            self._retain()
            # This run writes here: uncommitted directories older than its newest commit
            # are saves that crashed (never another process's save in progress).
            assert self.store is not None
            self.store.cleanup_uncommitted(keep_newer_than=info.number)
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
            self.store.retain(rules, ignore=self._corrupt)
            return

        def metric(info: CheckpointInfo) -> float:
            # Known for the checkpoints this run wrote; read only for older ones.
            known = self._metrics.get(info.number)
            return known if known is not None else read_metric(info, best)

        self.store.retain(rules, metric, ignore=self._corrupt)

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
    ) -> StateManager[C, S]:
        """Resume from the newest checkpoint of ``checkpoint_dir`` (if one exists) or start anew.

        The constructor under the name earlier releases documented.

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


HyperState = StateManager
"""The name earlier releases used for :class:`StateManager`: the same class."""
