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

import argparse
import contextlib
import functools
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar

from hyperstate import ron
from hyperstate._signals import StopSignals, signal_name
from hyperstate.args import parse_command_line
from hyperstate.configs import dumps, load, load_text, loads
from hyperstate.distributed.collectives import Ranks
from hyperstate.distributed.restore import Corrupt, Found, decode_everywhere, find
from hyperstate.distributed.save import CheckpointSave
from hyperstate.distributed.shared_storage import check_shared_storage
from hyperstate.edits import apply_edit, apply_edit_requests
from hyperstate.errors import ConfigError, HyperstateError, Issue, Preempted
from hyperstate.scheduled import ParamGroupBinding, check_schedule_fields, update_schedules
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
from hyperstate.tensors.staging import MutationGuard, Staging

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
        path: a config file, a checkpoint directory, a run directory (as its newest
            committed checkpoint's directory), or None (config from defaults). A
            checkpoint's state is restored too, when ``checkpoint_dir`` has none.
        checkpoint_dir: where checkpoints go (any fsspec URL). If it holds a committed
            checkpoint, the run resumes from the newest one: config and state from the
            checkpoint, ``overrides`` applied on top (and recorded in later checkpoints).
            Under ``torchrun`` it must be storage that every rank sees: the manager
            checks that when it opens, and raises a ``StorageError`` on every rank if not.
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
        async_staging: with ``async_save``, the copy to the staging buffers runs in the
            background thread too, so ``checkpoint()`` returns after encoding the state
            (milliseconds). Until the copy is done, an optimizer's ``step()`` and the
            forward of a module in training mode that owns buffers wait for it (global
            hooks, removed by the next ``step()``); any other in-place change of a saved
            tensor in that time fails the save, whose error the next ``step()`` raises.
            Change such tensors after :meth:`wait_staged`. Off by default.
        edit_check_seconds: how often ``step()`` looks for live edit requests in
            ``checkpoint_dir`` (see :mod:`hyperstate.edits`); None turns them off.
        per_rank: what to do with ``PerRank`` fields of a checkpoint written by another
            number of ranks: ``"error"`` (a :class:`~hyperstate.StateError`) or
            ``"reinit"`` (keep the values ``initial_state`` builds).
        collective_timeout: under ``torchrun``, how many seconds a rank waits for the
            others (e.g. for one that died mid-save) before raising
            :class:`~hyperstate.distributed.DistributedError`; default 300.
        save_on_close: ``close()`` (and leaving the ``with`` block without an exception)
            commits a checkpoint of the last step when the state advanced since the
            last checkpoint. Never after an exception in the ``with`` block: the state
            may be half-updated (a warning says so).
        handle_signals: while the manager is open, SIGTERM and SIGINT only ask the run
            to stop: the next ``step()`` commits a checkpoint (on every rank together)
            and raises :class:`~hyperstate.Preempted`. Handlers installed before are
            called too and are put back by ``close()``. Only when the manager is made in
            the main thread; a signal the process ignores (``SIG_IGN``) stays ignored.
        log_every_rank: under ``torchrun`` only rank 0 logs the run's events (start,
            resume, saves, pruning, stopping) to the ``"hyperstate"`` logger; True
            makes every rank log them.

    Under ``torchrun`` every rank constructs the manager with the same arguments and calls
    ``step()`` / ``checkpoint()`` at the same points; see docs/distributed.md.
    """

    args: argparse.Namespace | None = None
    """The options of the script's own parser, when :meth:`from_args` made the manager."""

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
        async_staging: bool = False,
        edit_check_seconds: float | None = 5.0,
        per_rank: Literal["error", "reinit"] = "error",
        collective_timeout: float | None = None,
        save_on_close: bool = True,
        handle_signals: bool = True,
        log_every_rank: bool = False,
    ) -> None:
        bad = []
        if async_staging and not async_save:
            bad.append(
                Issue(
                    ("async_staging",),
                    "expected async_save=True with it (the copy runs in the save thread of "
                    "an async save), found async_save=False",
                )
            )
        if per_rank not in ("error", "reinit"):
            bad.append(Issue(("per_rank",), f"expected 'error' or 'reinit', found {per_rank!r}"))
        if bad:
            raise ConfigError(bad, "StateManager arguments")
        self.config_clz = config_clz
        self.state_clz = state_clz
        self.initial_state = initial_state
        self.checkpoint_key = checkpoint_key
        self.policy = policy or CheckpointPolicy()
        self._ctx = dict(ctx or {})
        self._steps = 0
        self._run_started = time.monotonic()  # COMMITTED's run metadata counts from here
        self._last_checkpoint_time = time.monotonic()
        self.async_save = async_save
        self.max_staging_bytes = max_staging_bytes
        self._executor: ThreadPoolExecutor | None = None
        self._inflight: Future[CheckpointInfo] | None = None
        self._staging = Staging(max_staging_bytes) if async_save else None
        self.async_staging = async_staging
        self._guard: MutationGuard | None = None  # holds writers back while staging
        self._housekeeping: Future[None] | None = None  # retention after a sync save
        self._metrics: dict[int, float] = {}  # best_field value by checkpoint number
        self.edit_check_seconds = edit_check_seconds
        self._last_edit_check = time.monotonic()
        self.store = CheckpointStore(os.fspath(checkpoint_dir)) if checkpoint_dir else None
        self.resumed_from: CheckpointInfo | None = None
        self.per_rank = per_rank
        self.ranks = Ranks(collective_timeout)
        if self.store is not None:  # before anything is written: every rank sees it
            check_shared_storage(self.ranks, self.store.url)
        self.save_on_close = save_on_close
        self.handle_signals = handle_signals
        self._log_events = log_every_rank or self.ranks.is_coordinator
        self._signals: StopSignals | None = None
        self._stepped = False  # step() was called since the last checkpoint
        self._bindings: list[ParamGroupBinding] = []  # see bind_param_groups
        self._failed: str | None = None  # an error step(), checkpoint() or wait() raised
        self._last_number: int | None = None  # of the newest checkpoint saved or resumed
        self._start_number: int | None = None  # a fresh run's first number: no save needed
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
            self._last_number = found.info.number
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
        self._log_start(overrides)
        if self.store is not None and self.resumed_from is None:
            self._start_number = self._number()
        if handle_signals and threading.current_thread() is threading.main_thread():
            self._signals = StopSignals()
            # A manager dropped without close() gives the signals back when collected.
            weakref.finalize(self, self._signals.restore)

    def _event(self, level: int, msg: str, *args: Any) -> None:
        """Log a run event: on rank 0 only, unless ``log_every_rank``."""
        if self._log_events:
            log.log(level, msg, *args)

    def _log_start(self, overrides: list[str]) -> None:
        to = f"checkpoints go to {self.store.url}" if self.store else "no checkpoint_dir: no saves"
        with_overrides = f"overrides {overrides}" if overrides else "no overrides"
        if self.resumed_from is not None:
            info = self.resumed_from
            self._event(
                logging.INFO,
                "resuming from checkpoint %s at %s with %s; %s",
                info.number,
                info.path,
                with_overrides,
                to,
            )
        else:
            self._event(logging.INFO, "starting a fresh run with %s; %s", with_overrides, to)

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
            state=True,
            rank=self.ranks.rank,
            world_size=self.ranks.world_size,
            per_rank_reinit=self.per_rank == "reinit",
            file_checksums={n: e.checksum for n, e in info.manifest.files.items()},
        )
        return config, state

    # -- the loop -------------------------------------------------------------------------

    def bind_param_groups(self, field: str, optimizer: Any, key: str | None = None) -> None:
        """Keep ``key`` of every param group of ``optimizer`` equal to the config's
        ``field``: set it now, and again at every ``step()``, after the schedules and
        live edits are applied.

        This is how a scheduled learning rate reaches the optimizer::

            # config: optimizer.lr = "step: 3e-4@0 cos 0.0@100000"
            hs.bind_param_groups("optimizer.lr", hs.state.optimizer)

        ``key`` defaults to the field's last name (``lr`` here); bind ``"optimizer.wd"``
        with ``key="weight_decay"``. The optimizer is the object in the state, which a
        resume restores in place, so one binding after the manager is built holds for
        the whole run. Do not also drive the same key with a
        ``torch.optim.lr_scheduler``: the last writer wins.

        Raises:
            ConfigError: ``field`` names no number of the config, or ``optimizer`` has
                no ``param_groups``.
        """
        binding = ParamGroupBinding.of(self.config, field, optimizer, key)
        binding.apply(self.config)
        self._bindings.append(binding)

    def step(self) -> None:
        """Apply schedules to the config, then checkpoint if the policy says so.

        Raises:
            Preempted: a SIGTERM or SIGINT came since the last ``step()`` (see
                ``handle_signals``); the checkpoint of this step is committed first.
        """
        with self._failures():
            self._raise_background_error()
            self._remove_guard(wait=False)
            self._steps += 1
            self._stepped = True
            due_by_time, stop = self._sync_step()
            update_schedules(self.config, self.state)
            for binding in self._bindings:
                binding.apply(self.config)
            if stop:
                self._stop(stop)
            if self.store is not None and self._due(due_by_time):
                self.checkpoint()

    @contextlib.contextmanager
    def _failures(self) -> Iterator[None]:
        """Remember an error raised to the script: ``close()`` then saves nothing (a rank
        may be gone, a save half done); :class:`Preempted` is no error."""
        try:
            yield
        except Preempted:
            raise
        except BaseException as e:
            self._failed = self._failed or f"{type(e).__name__}: {e}"
            raise

    def _sync_step(self) -> tuple[bool, int]:
        """Apply live edits (on every rank at the same step); whether a save is due by
        time, and the signal that asks the run to stop (0 if none).

        Rank 0 looks at the clock and the edit requests, every rank at the signals it
        received; with several ranks one small collective per step (when time-based
        checkpoints, live edits or signal handling are on) gives every rank rank 0's
        findings and any rank's signal, so that every rank edits, saves and stops at the
        same step.
        """
        ranks = self.ranks
        edits_on = self.store is not None and self.edit_check_seconds is not None
        seconds = self.policy.every_seconds
        # The same on every rank (not whether this rank could install handlers), so that
        # every rank joins the collective below or none does.
        if not edits_on and seconds is None and not self.handle_signals:
            return False, 0
        stop = self._signals.received if self._signals is not None else 0
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
            return bool(flags & 2), stop
        flags, stop = ranks.maximum("step", (flags, stop))
        if flags & 1:
            text = ranks.run_on_coordinator(
                "live edit", lambda: ron.dumps(applied).encode()
            ).decode()
            if not ranks.is_coordinator:
                for overrides in ron.loads(text, path="<live edits from rank 0>"):
                    apply_edit(self.config, overrides)
                check_schedule_fields(self.config, self.state)
        return bool(flags & 2), stop

    def _stop(self, signum: int) -> None:
        """Commit the last step (if not saved yet), then raise :class:`Preempted`."""
        name = signal_name(signum)
        if self.store is None:
            self._event(logging.WARNING, "%s received: stopping (no checkpoint_dir)", name)
            raise Preempted(signum)
        number = self._number()
        self._event(
            logging.WARNING,
            "%s received: committing checkpoint %s of the last step, then stopping",
            name,
            number,
        )
        self._save_if_advanced()
        last = self._last_number
        raise Preempted(signum, last, self.store.path(last) if last is not None else None)

    def _save_if_advanced(self) -> None:
        """Commit a checkpoint of the state unless it is saved already; wait for it."""
        if self._advanced():
            self.checkpoint()
        self.wait()

    def _advanced(self) -> bool:
        # step() was called since the last checkpoint, and its number (the step count,
        # or the checkpoint_key field) moved on: a number is never committed twice.
        last = self._last_number if self._last_number is not None else self._start_number
        return self.store is not None and self._stepped and self._number() != last

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
        with self._failures(), self._signals_wait():
            self.wait()  # at most one save in flight; raises an earlier save's error
            started = time.monotonic()
            ranks = self.ranks
            number = self._number()
            if number in self._corrupt and ranks.is_coordinator:
                moved = self.store.set_aside(number)
                log.warning("checkpoint %s was corrupt: moved to %s to save anew", number, moved)
                del self._corrupt[number]
            save = CheckpointSave(
                ranks, self.store, number, staging=self._staging, started=self._run_started
            )
            background = self.async_save and self.async_staging
            save.prepare(lambda: to_value(self.state), stage=not background)
            self._last_checkpoint_time = time.monotonic()
            self._stepped, self._last_number = False, number
            texts = (
                {CONFIG_FILE: (dumps(self.config) + "\n").encode()} if ranks.is_coordinator else {}
            )
            if self.async_save:
                limit = self.max_staging_bytes
                over = background and limit is not None and save.kept_bytes > limit
                guard = self._guard = MutationGuard() if background and not over else None
                blocked = time.monotonic() - started
                self._inflight = self._save_thread().submit(
                    self._finish, save, texts, started, blocked, guard
                )
                if not (save.overflow or over):
                    return None
                return self.wait()  # past the staging budget: the originals are being read
            return self._finish(save, texts, started)

    def _save_thread(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="hyperstate-save")
        return self._executor

    def wait_staged(self) -> None:
        """With ``async_staging``: wait until the save in flight copied the state's
        tensors (after that, changing them cannot affect the save). A no-op otherwise."""
        self._remove_guard(wait=True)

    def _remove_guard(self, wait: bool) -> None:
        guard = self._guard
        if guard is not None and (wait or guard.released):
            if wait:
                guard.wait()
            guard.remove()
            self._guard = None

    def _signals_wait(self) -> contextlib.AbstractContextManager[None]:
        """While a save runs, handlers installed before this manager's wait for its end."""
        return self._signals.deferring() if self._signals is not None else contextlib.nullcontext()

    def _finish(
        self,
        save: CheckpointSave,
        texts: dict[str, bytes],
        started: float,
        blocked: float | None = None,
        guard: MutationGuard | None = None,
    ) -> CheckpointInfo:
        # Async saves talk over their own process group, from the background thread.
        try:
            staged = guard.release if guard is not None else None
            info = save.finish(texts, background=self.async_save, staged=staged)
        finally:
            if guard is not None:
                guard.release()
        if guard is not None and blocked is not None:
            blocked += guard.waited  # training waited for the copy in its hooks
        size = sum(entry.size for entry in info.manifest.files.values())
        seconds = time.monotonic() - started
        if blocked is None:
            self._event(
                logging.INFO,
                "saved checkpoint %s (%s bytes) to %s in %.3f s",
                info.number,
                size,
                info.path,
                seconds,
            )
        else:
            self._event(
                logging.INFO,
                "saved checkpoint %s (%s bytes) to %s in %.3f s, of which checkpoint() "
                "blocked training for %.3f s",
                info.number,
                size,
                info.path,
                seconds,
                blocked,
            )
        if self.ranks.is_coordinator:
            if self.policy.best_field:
                self._metrics[info.number] = field_metric(save.tree, self.policy.best_field)
            if self.async_save:
                self._housekeep(info.number)  # in the save thread already
            else:  # off the training thread: the save returns once committed
                self._housekeeping = self._save_thread().submit(self._housekeep, info.number)
        return info

    def _housekeep(self, number: int) -> None:
        """After checkpoint ``number`` committed: retention, and the leftovers of failed saves."""
        self._retain()
        # This run writes here: uncommitted directories older than its newest commit
        # are saves that crashed (never another process's save in progress).
        assert self.store is not None
        removed = self.store.cleanup_uncommitted(keep_newer_than=number)
        if removed:
            self._event(
                logging.INFO, "removed the leftovers of failed saves: %s", ", ".join(removed)
            )

    def wait(self) -> CheckpointInfo | None:
        """Wait for the save in flight, if any, and for the pruning of old checkpoints
        after the last one (which runs in the background); return the save in flight,
        or raise its error."""
        inflight, self._inflight = self._inflight, None
        housekeeping, self._housekeeping = self._housekeeping, None
        with self._failures(), self._signals_wait():
            if housekeeping is not None:
                housekeeping.result()
            if inflight is None:
                return None
            try:
                return inflight.result()
            finally:
                self._remove_guard(wait=True)

    def _raise_background_error(self) -> None:
        if any(f is not None and f.done() for f in (self._inflight, self._housekeeping)):
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
            pruned = self.store.retain(rules, ignore=self._corrupt)
        else:

            def metric(info: CheckpointInfo) -> float:
                # Known for the checkpoints this run wrote; read only for older ones.
                known = self._metrics.get(info.number)
                return known if known is not None else read_metric(info, best)

            pruned = self.store.retain(rules, metric, ignore=self._corrupt)
        if pruned:
            self._event(
                logging.INFO,
                "pruned checkpoint(s) %s of %s (%s)",
                ", ".join(map(str, pruned)),
                self.store.url,
                rules,
            )

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

    @classmethod
    def from_args(
        cls,
        config_clz: type[C],
        state_clz: type[S],
        initial_state: Callable[[C], S],
        argv: Sequence[str] | None = None,
        *,
        parser: argparse.ArgumentParser | None = None,
        configure: Callable[[argparse.Namespace], Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> StateManager[C, S]:
        """The entry point of a training script: the manager its command line asks for.

        ``python train.py --config c.ron --checkpoint-dir runs/17 optimizer.lr=0.1``

        Reads ``--config PATH`` (``path``), ``--checkpoint-dir URL``, ``path=value``
        overrides, and the options of the script's own ``parser``, whose values become
        :attr:`args`. ``--help`` lists the options and every config field with its type,
        default (the file's value with ``--config``) and doc; ``--print-config`` prints the
        config the run would start with, as RON, and exits. A bad argument, config or
        override prints the usage and one line of error to stderr and exits with status
        2, as ``argparse`` does. See :mod:`hyperstate.args`.

        Args:
            config_clz: the config dataclass.
            state_clz: the state dataclass.
            initial_state: builds a fresh state from the config.
            argv: the arguments (default: ``sys.argv[1:]``).
            parser: the script's own options, parsed alongside (the parser is not changed).
            configure: more constructor arguments taken from the script's own options,
                e.g. ``lambda args: {"policy": CheckpointPolicy(every_steps=args.every)}``;
                they win over ``kwargs``.
            kwargs: the constructor's other arguments (``checkpoint_key``, ``policy``,
                ``async_save``, ...); ``path``, ``checkpoint_dir`` and ``overrides`` given
                here are defaults that the command line overrides (or adds to).
        """
        command = parse_command_line(
            config_clz,
            argv,
            parser=parser,
            resume=True,
            path=kwargs.pop("path", None),
            checkpoint_dir=kwargs.pop("checkpoint_dir", None),
            overrides=kwargs.pop("overrides", None),
        )
        if configure is not None:
            kwargs = {**kwargs, **configure(command.args)}
        try:
            manager = cls(
                config_clz,
                state_clz,
                initial_state,
                command.path,
                command.checkpoint_dir,
                overrides=command.overrides,
                **kwargs,
            )
        except HyperstateError as e:
            log.debug("the run could not start", exc_info=True)
            command.fail(e)
        manager.args = command.args
        return manager

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """End the run: commit a checkpoint of the last step when the state advanced
        since the last checkpoint (``save_on_close``), wait for a save in flight (raising
        its error), stop the save thread, and put back the signal handlers.

        Under ``torchrun`` every rank calls it at the same point, as ``checkpoint()``.
        Leaving the ``with`` block calls it, without the save after an exception.
        """
        self._close(save=self.save_on_close)

    def _close(self, save: bool) -> None:
        try:
            if save and self._failed is not None and self._stepped:
                log.warning(
                    "not committing a checkpoint of the last step at close(): an earlier "
                    "call raised %s; a resume starts from the newest committed checkpoint",
                    self._failed,
                )
            elif save:
                self._save_if_advanced()
            else:
                self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            self.ranks.close()
            if self._signals is not None:
                self._signals.restore()
                self._signals = None

    def __enter__(self) -> StateManager[C, S]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None or isinstance(exc, Preempted):  # Preempted: saved already
            self._close(save=exc is None and self.save_on_close)
            return
        if self.save_on_close and self.store is not None and self._stepped:
            log.warning(
                "not committing a checkpoint of the last step on leaving the with block: "
                "it raised %s: %s, so the state may be half-updated; a resume starts "
                "from the newest committed checkpoint of %s",
                type(exc).__name__,
                exc,
                self.store.url,
            )
        self._close(save=False)


HyperState = StateManager
"""The name earlier releases used for :class:`StateManager`: the same class."""
