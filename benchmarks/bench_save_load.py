"""Save/load speed and memory of a training state, against the peers, in one process.

Run: .venv/bin/python benchmarks/bench_save_load.py [--size-gib 1.0] [--dir /tmp/x]
(``--no-large`` measures only the many-small-tensors state, in well under a minute)

Two states are measured: about ``--size-gib`` GiB (16 large float32 tensors plus the
Adam state of a small MLP after one step), and 10,000 tensors of 4 KiB, where per-entry
overhead dominates. Each is saved and loaded by:

* raw: ``write`` of the tensor bytes into one file + ``fsync`` (the limit for saves);
  ``readinto`` preallocated tensors for loads;
* ``torch.save`` / ``torch.load(weights_only=True)`` (and ``mmap=True``);
* ``safetensors.torch.save_file`` / ``load_file``;
* ``torch.distributed.checkpoint.save`` / ``load`` (one process, no process group);
* hyperstate's ``BlobWriter`` / ``BlobReader`` (all tensors in one blob file).

Every save is fsync'd before the clock stops. Every load touches every page of every
tensor. Loads are timed twice: right after the save (file in the page cache, "warm")
and after dropping the files from the page cache with ``posix_fadvise`` ("cold").
Each figure is the best of ``--repeat`` rounds; methods alternate within a round.

Also printed: opening a blob file and reading one small tensor lazily, as a share of the
full load; the cost of the xxh3 checksums alone; and the peak memory each save adds
(VmHWM over the state's own RSS, each method in a fresh child process).

To add a method (e.g. the full ``hyperstate.dump``/``load`` of a state dataclass), write
its ``save(state, directory)`` and ``load(directory, like)`` functions and append one
``Method`` to ``METHODS``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import torch

import hyperstate
from hyperstate.tensors.safetensors import BlobReader, BlobRef, BlobWriter, checksum

State = dict[str, torch.Tensor]
GIB = 1 << 30
BLOB = "blobs/rank-00000.safetensors"


# ---------------------------------------------------------------------------------------
# States


def large_state(size_gib: float) -> State:
    """16 big float32 tensors, plus model and Adam state of a small MLP after one step."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(256, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 256)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(32, 256)).square().mean().backward()
    opt.step()
    state: State = {f"model.{k}": v.detach() for k, v in model.state_dict().items()}
    for index, moments in opt.state_dict()["state"].items():
        for name, value in moments.items():
            state[f"optim.{index}.{name}"] = value
    small = sum(t.nbytes for t in state.values())
    per_tensor = max(1, int((size_gib * GIB - small) / 16 / 4))
    for i in range(16):
        state[f"big.{i:02d}"] = torch.randn(per_tensor)
    return state


def small_state(count: int = 10_000, kib: int = 4) -> State:
    torch.manual_seed(0)
    return {f"layer.{i:05d}": torch.randn(kib * 256) for i in range(count)}


def nbytes(state: State) -> int:
    return sum(t.nbytes for t in state.values())


def touch(state: dict[str, Any]) -> float:
    """Read one element per 4 KiB page of every tensor, so lazy loads pay for their bytes."""
    total = 0.0
    for key in sorted(state):  # in a fixed order, so totals compare exactly
        t = state[key]
        if t.numel():
            flat = t.reshape(-1)
            total += float(flat[:: max(1, 4096 // t.element_size())].float().sum())
    return total


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def evict(directory: Path) -> None:
    """Drop the directory's files from the page cache (they are clean after fsync)."""
    for path in directory.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


# ---------------------------------------------------------------------------------------
# Methods


def _bytes_of(t: torch.Tensor) -> memoryview:
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def save_raw(state: State, d: Path) -> None:
    with open(d / "raw.bin", "wb", buffering=1 << 20) as f:
        for t in state.values():
            f.write(_bytes_of(t))
        f.flush()
        os.fsync(f.fileno())


def load_raw(d: Path, like: State) -> State:
    out: State = {}
    with open(d / "raw.bin", "rb", buffering=1 << 20) as f:
        for key, t in like.items():
            out[key] = buf = torch.empty_like(t)
            f.readinto(_bytes_of(buf))
    return out


def save_torch(state: State, d: Path) -> None:
    with open(d / "state.pt", "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())


def load_torch(d: Path, like: State) -> State:
    out: State = torch.load(d / "state.pt", weights_only=True)
    return out


def load_torch_mmap(d: Path, like: State) -> State:
    out: State = torch.load(d / "state.pt", weights_only=True, mmap=True)
    return out


def save_safetensors(state: State, d: Path) -> None:
    from safetensors.torch import save_file

    save_file(state, d / "state.safetensors")
    fsync_path(d / "state.safetensors")


def load_safetensors(d: Path, like: State) -> State:
    from safetensors.torch import load_file

    out: State = load_file(d / "state.safetensors")
    return out


def save_dcp(state: State, d: Path) -> None:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no process group: assuming a single process"
        dcp.save(dict(state), checkpoint_id=d / "dcp")  # FileSystemWriter fsyncs its files


def load_dcp(d: Path, like: State) -> State:
    import torch.distributed.checkpoint as dcp

    out = {key: torch.empty_like(t) for key, t in like.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(out, checkpoint_id=d / "dcp")
    return out


_REFS: dict[Path, dict[str, BlobRef]] = {}  # in a checkpoint, state.ron holds these


def save_blobs(state: State, d: Path) -> None:
    writer = BlobWriter(d, BLOB)
    for key, t in state.items():
        writer.add(key, t)
    _REFS[d] = dict(zip(state, writer.write(), strict=True))


def load_blobs(d: Path, like: State, verify: bool = True) -> State:
    reader = BlobReader(d, BLOB, verify=verify)
    out: State = {}
    for key, ref in _REFS[d].items():
        out[key] = reader.read(ref)  # type: ignore[assignment]
    return out


def load_blobs_unverified(d: Path, like: State) -> State:
    return load_blobs(d, like, verify=False)


@dataclass
class BenchConfig:
    name: str = "bench"


@dataclass
class BenchState:
    """The same tensors as a hyperstate state dataclass: dump writes state.ron + blobs."""

    step: int
    tensors: dict[str, torch.Tensor]


@dataclass
class LazyBenchState(hyperstate.Lazy):
    step: int
    tensors: dict[str, torch.Tensor]


def save_hyperstate(state: State, d: Path) -> None:
    hyperstate.dump(BenchState(step=1, tensors=state), d / "state.ron")


def load_hyperstate(d: Path, like: State) -> State:
    loaded: State = hyperstate.load(BenchState, d / "state.ron").tensors
    return loaded


def _manager(root: str, state: State | None) -> hyperstate.HyperState[BenchConfig, BenchState]:
    return hyperstate.HyperState.load(
        BenchConfig,
        BenchState,
        lambda c: BenchState(step=1, tensors=state or {}),
        None,
        root,
        "step",
        edit_check_seconds=None,
    )


def save_manager(state: State, d: Path) -> None:
    _manager(str(d), state).checkpoint()


def load_manager(d: Path, like: State) -> State:
    return _manager(str(d), None).state.tensors


def save_manager_memory(state: State, d: Path) -> None:
    memory = fsspec.filesystem("memory")
    if memory.exists("/bench"):
        memory.rm("/bench", recursive=True)  # one state in memory at a time
    _manager("memory://bench", state).checkpoint()


def load_manager_memory(d: Path, like: State) -> State:
    return _manager("memory://bench", None).state.tensors


@dataclass(frozen=True)
class Method:
    name: str
    save: Callable[[State, Path], None]
    load: Callable[[Path, State], State]


METHODS = [
    Method("raw write+fsync / readinto", save_raw, load_raw),
    Method("torch.save / load", save_torch, load_torch),
    Method("torch.save / load(mmap)", save_torch, load_torch_mmap),
    Method("safetensors save_file / load_file", save_safetensors, load_safetensors),
    Method("torch.distributed.checkpoint", save_dcp, load_dcp),
    Method("hyperstate blobs", save_blobs, load_blobs),
    Method("hyperstate blobs (verify=False)", save_blobs, load_blobs_unverified),
    Method("hyperstate.dump / load", save_hyperstate, load_hyperstate),
    Method("HyperState checkpoint / resume", save_manager, load_manager),
    Method("HyperState on memory://", save_manager_memory, load_manager_memory),
]


# ---------------------------------------------------------------------------------------
# Measuring


@dataclass
class Result:
    save: float = float("inf")
    warm: float = float("inf")
    cold: float = float("inf")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def run_round(state: State, root: Path, results: dict[str, Result]) -> None:
    expected = touch(state)
    for m in METHODS:
        d = Path(tempfile.mkdtemp(dir=root))
        try:
            r = results.setdefault(m.name, Result())
            seconds, _ = timed(lambda m=m, d=d: m.save(state, d))
            r.save = min(r.save, seconds)
            seconds, loaded = timed(lambda m=m, d=d: touch(m.load(d, state)))
            assert loaded == expected, f"{m.name}: loaded values differ"
            r.warm = min(r.warm, seconds)
            evict(d)
            seconds, _ = timed(lambda m=m, d=d: touch(m.load(d, state)))
            r.cold = min(r.cold, seconds)
        finally:
            shutil.rmtree(d)
            _REFS.pop(d, None)


def lazy_one_field(state: State, root: Path, cold: bool) -> tuple[float, float]:
    """(open + read one small tensor, full load) seconds for hyperstate blobs."""
    d = Path(tempfile.mkdtemp(dir=root))
    try:
        save_blobs(state, d)
        refs = _REFS[d]
        small = min(refs, key=lambda k: state[k].nbytes)
        best_one = best_full = float("inf")
        for _ in range(3):
            if cold:
                evict(d)
            one, _ = timed(lambda: touch({"x": BlobReader(d, BLOB).read(refs[small])}))  # type: ignore[dict-item]
            if cold:
                evict(d)
            full, _ = timed(lambda: touch(load_blobs(d, state)))
            best_one, best_full = min(best_one, one), min(best_full, full)
        return best_one, best_full
    finally:
        shutil.rmtree(d)
        _REFS.pop(d, None)


def lazy_hyperstate(state: State, root: Path) -> tuple[float, float]:
    """(load a Lazy state and read its step, full hyperstate.load) seconds, warm."""
    d = Path(tempfile.mkdtemp(dir=root))
    try:
        hyperstate.dump(LazyBenchState(step=1, tensors=state), d / "state.ron")
        best_one = best_full = float("inf")
        for _ in range(3):
            one, step = timed(lambda: hyperstate.load(LazyBenchState, d / "state.ron").step)
            assert step == 1
            full, _ = timed(lambda: touch(load_hyperstate(d, state)))
            best_one, best_full = min(best_one, one), min(best_full, full)
        return best_one, best_full
    finally:
        shutil.rmtree(d)


def checksum_cost(state: State) -> float:
    seconds, _ = timed(lambda: [checksum(_bytes_of(t)) for t in state.values()])
    return seconds


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def child_peak(method: str, which: str, size_gib: float, root: Path) -> None:
    """In a fresh process: the peak RSS a save adds on top of the state itself."""
    state = large_state(size_gib) if which == "large" else small_state()
    m = next(m for m in METHODS if m.name == method)
    d = Path(tempfile.mkdtemp(dir=root))
    try:
        # A first tiny save imports what the method needs: a training process has paid
        # for its imports long before it saves.
        (d / "warm-up").mkdir()
        m.save({"x": torch.ones(4)}, d / "warm-up")
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        before = _status()["VmRSS"]
        m.save(state, d)
        peak = _status()["VmHWM"]
    finally:
        shutil.rmtree(d)
    print(json.dumps({"extra": peak - before, "state": nbytes(state)}))


def peak_extra(which: str, size_gib: float, root: Path) -> dict[str, float]:
    out = {}
    for m in METHODS:
        if "verify=False" in m.name or "mmap" in m.name:
            continue  # same save as the row above
        cmd = [sys.executable, __file__, "--child", m.name, "--child-state", which]
        cmd += ["--size-gib", str(size_gib), "--dir", str(root)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        out[m.name] = figures["extra"] / figures["state"]
    return out


# ---------------------------------------------------------------------------------------
# Report


def report(title: str, state: State, results: dict[str, Result]) -> None:
    size = nbytes(state) / GIB
    raw = results[METHODS[0].name]
    print(f"\n## {title}: {len(state)} tensors, {size:.3f} GiB")
    head = (
        f"{'method':36} {'save s':>7} {'GiB/s':>6} {'x raw':>6} | "
        f"{'warm s':>7} {'GiB/s':>6} {'x raw':>6} | {'cold s':>7} {'GiB/s':>6} {'x raw':>6}"
    )
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        cells = []
        for seconds, base in ((r.save, raw.save), (r.warm, raw.warm), (r.cold, raw.cold)):
            cells.append(f"{seconds:7.3f} {size / seconds:6.2f} {base / seconds:6.2f}")
        print(f"{name:36} " + " | ".join(cells))
    safetensors = results["safetensors save_file / load_file"]
    ours = results["hyperstate blobs"]
    print(
        f"hyperstate save / raw write throughput: {raw.save / ours.save:.2f}x (target >= 0.95); "
        f"full load vs load_file: warm {safetensors.warm / ours.warm:.2f}x, "
        f"cold {safetensors.cold / ours.cold:.2f}x faster (target >= 1)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gib", type=float, default=1.0)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default /tmp)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--no-small", action="store_true", help="skip the 10,000-tensor state")
    parser.add_argument("--no-large", action="store_true", help="skip the large state")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-state", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_peak(args.child, args.child_state, args.size_gib, args.dir)
        return
    root = Path(tempfile.mkdtemp(prefix="bench-save-load-", dir=args.dir))
    try:
        cases = []
        if not args.no_large:
            cases.append(("large state", "large", large_state(args.size_gib)))
        if not args.no_small:
            cases.append(("many small tensors", "small", small_state()))
        print(f"torch {torch.__version__}, writing under {root}, best of {args.repeat}")
        for title, which, state in cases:
            results: dict[str, Result] = {}
            for _ in range(args.repeat):
                run_round(state, root, results)
            report(title, state, results)
            for cold in (False, True):
                one, full = lazy_one_field(state, root, cold)
                print(
                    f"lazy open + read one small tensor ({'cold' if cold else 'warm'}): "
                    f"{one * 1e3:.2f} ms = {one / full:.2%} of the full load "
                    f"({full:.3f} s; target < 5%)"
                )
            one, full = lazy_hyperstate(state, root)
            print(
                f"hyperstate.load of a Lazy state + read its step (warm): {one * 1e3:.2f} ms "
                f"= {one / full:.2%} of the full hyperstate.load ({full:.3f} s; target < 5%)"
            )
            seconds = checksum_cost(state)
            print(
                f"xxh3-64 of all bytes, one thread: {seconds:.3f} s "
                f"({nbytes(state) / GIB / seconds:.1f} GiB/s)"
            )
            if not args.no_memory:
                peaks = peak_extra(which, args.size_gib, root)
                print("peak extra memory during save (share of state size; target < 10%):")
                for name, share in peaks.items():
                    print(f"  {name:36} {share:7.1%}")
            del state
            gc.collect()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
