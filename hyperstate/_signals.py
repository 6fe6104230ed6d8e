"""SIGTERM and SIGINT while a manager is open: record them, act at the next ``step()``.

Schedulers (SLURM, Kubernetes, torchelastic) send SIGTERM and SIGKILL after a grace
period; a person presses Ctrl-C. :class:`StopSignals` turns either into a flag that
:class:`hyperstate.StateManager` reads at its next ``step()``, where every rank saves
and stops together. Knows nothing of checkpoints.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

__all__ = ["StopSignals", "signal_name"]


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopSignals:
    """SIGTERM and SIGINT handlers of an open manager.

    A signal only records that the run should stop (``received``: the first signal's
    number); the manager's next ``step()`` acts on it. A handler the script installed
    before is called too, after that, unless it is a default (``SIG_DFL``,
    ``default_int_handler``); during a save (:meth:`deferring`) the call waits for the
    save's end, so that no handler interrupts it. A signal set to ``SIG_IGN`` stays
    ignored. Nothing here logs: a signal handler must not take the logging lock.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received = 0
        self._active = True
        self._saving = 0
        self._deferred: list[tuple[int, FrameType | None]] = []
        self._previous: dict[int, Any] = {}
        for signum in self.SIGNALS:
            previous = signal.getsignal(signum)
            # None: a handler not installed from Python, which could not be put back.
            if previous is None or previous == signal.SIG_IGN:
                continue
            signal.signal(signum, self._handle)
            self._previous[signum] = previous

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self._active:  # closed, yet reached through a handler installed after it
            self._pass_on(signum, frame, closed=True)
            return
        self.received = self.received or signum
        if self._saving:
            self._deferred.append((signum, frame))
        else:
            self._pass_on(signum, frame)

    def _pass_on(self, signum: int, frame: FrameType | None, closed: bool = False) -> None:
        previous = self._previous.get(signum)
        if callable(previous) and (closed or previous is not signal.default_int_handler):
            previous(signum, frame)
        elif closed and previous == signal.SIG_DFL and signal.getsignal(signum) == self._handle:
            # What the signal would have done had this manager never been opened. Only
            # when this handler is the one installed: reached through a later manager's
            # chain, the signal is that manager's to act on.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    @contextlib.contextmanager
    def deferring(self) -> Iterator[None]:
        """Hold the calls of earlier handlers until the block (a save) ends."""
        self._saving += 1
        try:
            yield
        finally:
            self._saving -= 1
            if not self._saving:
                pending, self._deferred = self._deferred, []
                for signum, frame in pending:
                    self._pass_on(signum, frame)

    def restore(self) -> None:
        """Put back the handlers found at install (where this one is still installed)."""
        self._active = False
        if threading.current_thread() is not threading.main_thread():
            return  # signal.signal() works in the main thread only; inactive is enough
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._handle:
                signal.signal(signum, _live(previous, signum))


def _live(handler: Any, signum: int) -> Any:
    """``handler``, or, when it is the handler of a closed :class:`StopSignals` (managers
    closed out of order), the first handler before it that is not."""
    seen = 0
    while seen < 64:  # a chain of managers, never a cycle; bounded all the same
        owner = getattr(handler, "__self__", None)
        if not isinstance(owner, StopSignals) or owner._active:
            return handler
        handler = owner._previous.get(signum, signal.SIG_DFL)
        seen += 1
    return handler
