"""How long a checkpoint blocks the training loop: async_save against a synchronous save.

Run: .venv/bin/python benchmarks/bench_async.py [--size-mib 512] [--repeat 3]

Both save the same state through ``HyperState.checkpoint()`` to local disk (fsync'd).
The synchronous save blocks for the whole write; the asynchronous one only while the
tensors are copied to staging buffers. Prints both and the ratio (target: under 15%).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import hyperstate


@dataclass
class Config:
    size_mib: int = 512


@dataclass
class State:
    step: int = 0
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


def make_state(size_mib: int) -> State:
    torch.manual_seed(0)
    per = size_mib * (1 << 20) // 16 // 4
    return State(0, {f"t{i:02d}": torch.randn(per) for i in range(16)})


def measure(state: State, root: Path, async_save: bool, repeat: int) -> tuple[float, float]:
    """(median seconds checkpoint() blocked, median seconds until committed)."""
    blocked, total = [], []
    directory = Path(tempfile.mkdtemp(dir=root))
    try:
        hs = hyperstate.HyperState.load(
            Config, State, lambda c: state, None, directory, "step", async_save=async_save
        )
        for i in range(repeat):
            hs.state.step = i + 1
            start = time.perf_counter()
            hs.checkpoint()
            blocked.append(time.perf_counter() - start)
            hs.wait()
            total.append(time.perf_counter() - start)
        hs.close()
    finally:
        shutil.rmtree(directory)
    return statistics.median(blocked), statistics.median(total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-async-", dir=args.dir))
    try:
        state = make_state(args.size_mib)
        sync_blocked, _ = measure(state, root, False, args.repeat)
        async_blocked, async_total = measure(state, root, True, args.repeat)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"state: {args.size_mib} MiB in 16 float32 tensors; median of {args.repeat}")
    print(f"  synchronous checkpoint() blocks   {sync_blocked:7.3f} s")
    print(
        f"  async_save checkpoint() blocks    {async_blocked:7.3f} s "
        f"(committed after {async_total:.3f} s)"
    )
    print(f"async block / sync block = {async_blocked / sync_blocked:.1%}  (target < 15%)")


if __name__ == "__main__":
    main()
