"""Saves version after version of one checkpoint dict to one path, through
``HyperstateCheckpointIO``, until it is killed: the process that tests/test_lightning.py
SIGKILLs at random moments of its saves.

    overwrite.py PATH FIRST

Prints ``ready`` before its first save (of version ``FIRST``).
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from hyperstate.integrations.lightning import HyperstateCheckpointIO

SIZE = 1 << 21  # floats of each version: 8 MiB, so that a kill often lands in a save


def version(k: int) -> dict[str, Any]:
    """Version ``k``: every part of it says ``k``, so a mix of two versions shows."""
    return {
        "global_step": k,
        "weights": torch.full((SIZE,), float(k)),
        "optimizer_states": [{"state": {0: {"step": torch.tensor(float(k))}}, "k": (k,)}],
    }


def main(path: str, first: int) -> None:
    plugin = HyperstateCheckpointIO()
    print("ready", flush=True)
    k = first
    while True:
        plugin.save_checkpoint(version(k), path)
        k += 1


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
