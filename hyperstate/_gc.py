"""Pausing Python's cyclic garbage collector while hyperstate builds or walks a big tree.

Encoding a state of 10,000 tensors, writing their blob entries, emitting or parsing its
``state.ron`` allocate hundreds of thousands of containers; each 700 of them start a
collection, and the older generations are scanned whole (the interpreter holds torch's
objects too): a third of the time of such a save went to the collector. Everything
these steps allocate lives on or is freed by reference counting, so they run with the
collector paused. Pauses nest and may overlap across threads (a background save while
the training thread loads); the collector is enabled again when the last one ends, if
it was enabled before the first.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

__all__ = ["paused"]

_lock = threading.Lock()
_depth = 0
_was_enabled = False


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Within the block, the cyclic garbage collector does not run."""
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()
