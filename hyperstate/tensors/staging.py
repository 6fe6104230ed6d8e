"""Host staging buffers for async saves: a copy of the tensors that training cannot change.

An async save copies each tensor it writes into a buffer on the host (pinned for CUDA)
before ``checkpoint()`` returns; the background thread writes from the buffers while the
training loop moves on. Buffers are reused across saves: fresh memory costs a page fault
per 4 KiB, which would dominate the copy.

With background staging the copy itself runs in the background thread too, and
:class:`MutationGuard` holds back the writers of the state (optimizer steps, forwards
that update buffers) until it is done.
"""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["MutationGuard", "Staging"]


class Staging:
    """Staging buffers, reused across saves, with an optional budget in bytes.

    :meth:`stage` returns a copy of a tensor (a view of a copied storage, so that tied
    tensors stay tied) or of an array; past the budget it returns the original and sets
    :attr:`overflow`, and the caller must write before training changes it.
    :meth:`release` gives the buffers back once written.
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.staged_bytes = 0
        self.overflow = False
        self._pool: dict[int, list[Any]] = {}  # free buffers by size
        self._buffers: list[Any] = []  # in use by the save being written
        self._copies: dict[tuple[Any, ...], Any] = {}  # storage -> its copy, this save

    def begin(self) -> None:
        """Start staging one save (its budget starts at zero)."""
        self._copies.clear()
        self.staged_bytes = 0
        self.overflow = False

    def stage(self, obj: Any) -> Any:
        """A copy of ``obj`` in host memory, or ``obj`` itself past the budget."""
        import numpy as np
        import torch

        nbytes = obj.nbytes if isinstance(obj, np.ndarray) else obj.untyped_storage().nbytes()
        if self.limit is not None and self.staged_bytes + nbytes > self.limit:
            self.overflow = True
            return obj
        if isinstance(obj, np.ndarray):
            self.staged_bytes += obj.nbytes
            return obj.copy()
        storage = obj.untyped_storage()
        key = (storage.data_ptr(), storage.device, storage.nbytes())
        copy = self._copies.get(key)
        if copy is None:
            free = self._pool.get(storage.nbytes())
            buffer = (
                free.pop()
                if free
                else torch.empty(
                    storage.nbytes(),
                    dtype=torch.uint8,
                    pin_memory=obj.is_cuda and torch.cuda.is_available(),
                )
            )
            # A blocking copy: the writer thread reads the buffer right away.
            buffer.copy_(torch.empty(0, dtype=torch.uint8, device=obj.device).set_(storage))
            self._buffers.append(buffer)
            copy = self._copies[key] = buffer.untyped_storage()
            self.staged_bytes += storage.nbytes()
        view = torch.empty(0, dtype=obj.dtype)
        view.set_(copy, obj.storage_offset(), obj.size(), obj.stride())
        return view

    def release(self) -> None:
        """The staged tensors are written: their buffers go back to the pool."""
        self._copies.clear()
        for buffer in self._buffers:
            self._pool.setdefault(buffer.numel(), []).append(buffer)
        self._buffers.clear()


class MutationGuard:
    """Holds back the usual in-place writers of training state while a background thread
    copies it: an optimizer's ``step()`` and the forward of a module in training mode
    that owns buffers (e.g. batch norm's running statistics) wait until :meth:`release`.

    The hooks are global (``torch.optim.optimizer.register_optimizer_step_pre_hook``,
    ``torch.nn.modules.module.register_module_forward_pre_hook``); after ``release`` they
    do nothing, and :meth:`remove` (in the thread that installed them: torch iterates the
    hook tables there) takes them out. A write that goes around them is detected by the
    copy, which compares each tensor's version counter before and after.
    """

    def __init__(self) -> None:
        from torch.nn.modules.module import register_module_forward_pre_hook
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        self.waited = 0.0  # seconds the training thread spent waiting for the copy
        self._done = threading.Event()
        self._handles = [
            register_optimizer_step_pre_hook(self._before_step),
            register_module_forward_pre_hook(self._before_forward),
        ]

    def _wait(self) -> None:
        if not self._done.is_set():
            started = time.monotonic()
            self._done.wait()
            self.waited += time.monotonic() - started

    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._wait()

    def _before_forward(self, module: Any, args: Any) -> None:
        if module.training and any(b is not None for b in module._buffers.values()):
            self._wait()

    @property
    def released(self) -> bool:
        """Whether the copy is over (the hooks no longer wait)."""
        return self._done.is_set()

    def release(self) -> None:
        """The copy is over (or failed): nothing waits any more."""
        self._done.set()

    def wait(self) -> None:
        """Wait until :meth:`release`."""
        self._done.wait()

    def remove(self) -> None:
        """Release, and take the hooks out (from the thread that installed them)."""
        self.release()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
