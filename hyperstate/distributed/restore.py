"""The start of a restore: rank 0 chooses what to resume from and sends it to every rank.

So that all ranks resume from the same checkpoint with the same config, rank 0 alone
looks at the storage, reads the chosen checkpoint's text files, and broadcasts them (as
JSON, which escapes a whole ``state.ron`` in C); every rank then decodes them itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from hyperstate import _fs
from hyperstate.distributed.collectives import Ranks
from hyperstate.storage import (
    COMMITTED,
    CONFIG_FILE,
    STATE_FILE,
    CheckpointInfo,
    CheckpointStore,
    Manifest,
    checkpoint_at,
)

__all__ = ["Found", "find"]


@dataclass(frozen=True)
class Found:
    """What a run starts from: a checkpoint (``info`` and both texts), a config file
    (``config_text`` and its ``name``), or nothing (all None)."""

    info: CheckpointInfo | None = None
    config_text: str | None = None
    state_text: str | None = None
    name: str | None = None


def find(ranks: Ranks, store: CheckpointStore | None, path: str | None) -> Found:
    """Step ``find checkpoint``: the newest committed checkpoint of ``store``, else ``path``
    (a checkpoint directory or a config file), as rank 0 sees it, on every rank."""

    def choose() -> bytes:
        found: dict[str, object] = {}
        # Reading never deletes: an uncommitted directory may be another process's save
        # in progress. The manager removes abandoned ones once it has committed.
        source = store.latest() if store is not None else None
        if source is None and path is not None:
            source = checkpoint_at(path)
        if source is not None:
            found = {
                "number": source.number,
                "path": source.path,
                "manifest": source.manifest.dumps(),
                "config": _fs.read_text(f"{source.path}/{CONFIG_FILE}"),
                "state": _fs.read_text(f"{source.path}/{STATE_FILE}"),
            }
        elif path is not None:
            found = {"name": path, "config": _fs.read_text(path)}
        return json.dumps(found).encode()

    found = json.loads(ranks.run_on_coordinator("find checkpoint", choose))
    if "number" in found:
        manifest = Manifest.loads(found["manifest"], f"{found['path']}/{COMMITTED}")
        info = CheckpointInfo(found["number"], found["path"], manifest)
        return Found(info, found["config"], found["state"])
    if "config" in found:
        return Found(None, found["config"], None, found["name"])
    return Found()
