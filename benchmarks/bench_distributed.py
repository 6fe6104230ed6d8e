"""Distributed checkpoints: N ranks (gloo, CPU) save and restore together, against DCP.

Run: .venv/bin/python benchmarks/bench_distributed.py [--size-mib 1024] [--ranks 2]
(or ``torchrun --nproc-per-node 2 benchmarks/bench_distributed.py``; ``--size-mib 64`` is a
quick run). Without torchrun the script starts itself ``--ranks`` times with the
environment torchrun sets (env:// rendezvous on 127.0.0.1), like tests/dist_jobs/launch.py.

Two states, each about ``--size-mib`` MiB of unique float32 bytes:

* replicated: 16 big tensors identical on every rank (as DDP keeps parameters), plus a
  small MLP wrapped in ``DistributedDataParallel`` and its ``Adam`` state after one step;
* sharded: 16 tensors ``distribute_tensor``'ed with ``Shard(0)`` over a 1-D cpu mesh.

Each is saved and loaded by the same ranks with:

* raw: each rank writes + fsyncs its 1/N share of the unique bytes (the dedup'd layout:
  the limit for a save), and, for the replicated state, every rank writing all of them
  (what a save without dedup costs); loads ``readinto`` preallocated tensors the bytes
  each rank needs (all of them when replicated, its own shards when sharded);
* ``torch.distributed.checkpoint`` (DCP): ``save`` / ``load`` of ``get_state_dict``
  (which dedups replicated tensors too), and ``async_save`` on its own gloo group;
* hyperstate: ``StateManager.checkpoint()``; restore = a new ``StateManager`` on the
  same ``checkpoint_dir`` (it resumes) + touching every byte; and ``async_save=True``:
  how long ``checkpoint()`` blocks the training loop, and when ``wait()`` returns. The
  first async save of a manager allocates its staging buffers, later ones reuse them:
  both are shown, against DCP's ``async_save`` at the same point (DCP stages into new
  buffers every time: its staging cache needs pinned memory, i.e. an accelerator).

Each timed region starts and ends with ``dist.barrier()``; every save is fsync'd (DCP's
FileSystemWriter fsyncs too). Loads touch one element per 4 KiB page of every tensor.
The page cache cannot be dropped without root: "warm" loads read right after the save;
"cold-ish" loads follow ``posix_fadvise(DONTNEED)`` of the checkpoint's files (a virtual
disk may still be cached by the host). Each figure is the best of ``--repeat`` rounds;
methods alternate within a round, in an order that rotates from round to round.

Rank 0 prints, per state: seconds, GiB/s of unique bytes, the speed as a multiple of
DCP's (``x DCP`` > 1: faster than DCP) and of raw's (``x raw``), and bytes written /
unique bytes (target 1.00), then the peak RSS of a rank.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
from torch.nn.parallel import DistributedDataParallel

import hyperstate

GIB = 1 << 30
MIB = 1 << 20
BIG_TENSORS = 16


# ---------------------------------------------------------------------------------------
# States


@dataclass
class Config:
    lr: float = 1e-3


@dataclass
class ReplicatedState:
    step: int
    model: nn.Module  # a DistributedDataParallel
    optimizer: torch.optim.Optimizer
    tensors: dict[str, torch.Tensor]


@dataclass
class ShardedState:
    step: int
    tensors: dict[str, torch.Tensor]  # DTensors, Shard(0)


def small_model() -> tuple[nn.Module, torch.optim.Optimizer]:
    """A DDP-wrapped MLP and its Adam optimizer, after one step (so Adam has state)."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 256))
    model = DistributedDataParallel(mlp)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(32, 256)).square().mean().backward()
    optimizer.step()
    return model, optimizer


def fresh_model() -> tuple[nn.Module, torch.optim.Optimizer]:
    """A new model and optimizer to restore into (what ``initial_state`` builds)."""
    mlp = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 256))
    model = DistributedDataParallel(mlp)
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def big_shapes(size_mib: int, small_bytes: int) -> list[tuple[int, int]]:
    """16 shapes (rows, 1024) of float32 totalling about ``size_mib`` MiB with the rest."""
    rows = max(1, (size_mib * MIB - small_bytes) // BIG_TENSORS // 4 // 1024)
    return [(rows, 1024)] * BIG_TENSORS


def model_bytes() -> int:
    model, optimizer = small_model()
    return sum(t.nbytes for t in model_tensors(model, optimizer))


def model_tensors(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    out = [t.detach() for t in model.state_dict().values()]
    for moments in optimizer.state.values():
        out.extend(v for v in moments.values() if isinstance(v, torch.Tensor))
    return out


@dataclass
class Case:
    """A state, how to rebuild an empty one to restore into, and its DCP state dict."""

    name: str
    build: Callable[[], Any]
    fresh: Callable[[], Any]
    #: the tensors whose bytes this rank holds (DTensors: the local shards), in order
    local: Callable[[Any], list[torch.Tensor]]
    unique_bytes: int
    #: the bytes this rank writes in the dedup'd raw layout: (lo, hi) of ``local``'s bytes
    share: tuple[int, int]
    replicated: bool
    describe: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def replicated_case(size_mib: int, rank: int, world: int) -> Case:
    small = model_bytes()
    shapes = big_shapes(size_mib, small)
    unique = small + sum(r * c * 4 for r, c in shapes)

    def build() -> ReplicatedState:
        model, optimizer = small_model()
        generator = torch.Generator().manual_seed(1)  # the same on every rank
        tensors = {
            f"big.{i:02d}": torch.randn(shape, generator=generator)
            for i, shape in enumerate(shapes)
        }
        return ReplicatedState(1, model, optimizer, tensors)

    def fresh() -> ReplicatedState:
        model, optimizer = fresh_model()
        tensors = {f"big.{i:02d}": torch.empty(shape) for i, shape in enumerate(shapes)}
        return ReplicatedState(0, model, optimizer, tensors)

    def local(state: ReplicatedState) -> list[torch.Tensor]:
        return [*model_tensors(state.model, state.optimizer), *state.tensors.values()]

    per = unique // world
    share = (rank * per, unique if rank == world - 1 else (rank + 1) * per)
    describe = (
        f"{BIG_TENSORS} tensors {shapes[0]} float32 on every rank + a DDP MLP and its Adam "
        f"state ({small / MIB:.1f} MiB)"
    )
    return Case("replicated (DDP)", build, fresh, local, unique, share, True, describe)


def sharded_case(size_mib: int, rank: int, world: int, mesh: Any) -> Case:
    shapes = big_shapes(size_mib, 0)
    unique = sum(r * c * 4 for r, c in shapes)

    def build() -> ShardedState:
        generator = torch.Generator().manual_seed(100 + rank)
        tensors = {}
        for i, shape in enumerate(shapes):
            # The full tensor is never touched (empty): each rank keeps only its chunk.
            d = distribute_tensor(torch.empty(shape), mesh, [Shard(0)], src_data_rank=None)
            d.to_local().normal_(generator=generator)
            tensors[f"big.{i:02d}"] = d
        return ShardedState(1, tensors)

    def fresh() -> ShardedState:
        """DTensors laid out like the saved ones, their memory not yet touched."""
        tensors = {}
        for i, shape in enumerate(shapes):
            local, _ = compute_local_shape_and_global_offset(shape, mesh, [Shard(0)])
            tensors[f"big.{i:02d}"] = DTensor.from_local(
                torch.empty(local),
                mesh,
                [Shard(0)],
                run_check=False,
                shape=shape,
                stride=(shape[1], 1),
            )
        return ShardedState(0, tensors)

    def local(state: ShardedState) -> list[torch.Tensor]:
        return [t.to_local() for t in state.tensors.values()]

    mine = sum(t.nbytes for t in local(fresh()))
    describe = f"{BIG_TENSORS} DTensors {shapes[0]} float32, Shard(0) over a 1-D cpu mesh"
    return Case("sharded (DTensor)", build, fresh, local, unique, (0, mine), False, describe)


# ---------------------------------------------------------------------------------------
# Helpers (touch and evict as in bench_save_load.py)


def _bytes_of(t: torch.Tensor) -> memoryview:
    return memoryview(t.detach().reshape(-1).view(torch.uint8).numpy())


def touch(tensors: list[torch.Tensor]) -> float:
    """Read one element per 4 KiB page of every tensor, so lazy loads pay for their bytes."""
    total = 0.0
    for t in tensors:
        if t.numel():
            flat = t.detach().reshape(-1)
            total += float(flat[:: max(1, 4096 // t.element_size())].double().sum())
    return total


def evict(directory: Path) -> None:
    """Drop the directory's files from the page cache (they are clean after fsync)."""
    for path in directory.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def all_max_each(values: dict[str, int]) -> dict[str, int]:
    """Each value's maximum over the ranks (every rank has the same keys)."""
    names = sorted(values)
    t = torch.tensor([values[n] for n in names], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return {n: int(v) for n, v in zip(names, t.tolist(), strict=True)}


def all_max(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def timed(fn: Callable[[], Any], memory: str | None = None) -> tuple[float, Any]:
    """Seconds from a barrier before ``fn`` to a barrier after it (the slowest rank);
    with ``memory``, the extra anonymous memory of ``fn`` goes into ``EXTRA[memory]``."""
    gc.collect()
    dist.barrier()
    start = time.perf_counter()
    with AnonPeak() as peak:
        value = fn()
    dist.barrier()
    seconds = time.perf_counter() - start
    if memory is not None:
        EXTRA[memory] = max(EXTRA.get(memory, 0), peak.extra)
    return seconds, value


def anonymous_rss() -> int:
    """This process's resident anonymous memory (``RssAnon``: heap and staging buffers,
    not the page cache that mapped or read files occupy), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


class AnonPeak:
    """The peak of :func:`anonymous_rss` over a block, sampled every millisecond."""

    def __enter__(self) -> AnonPeak:
        self.start = self.peak = anonymous_rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, anonymous_rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, anonymous_rss())

    @property
    def extra(self) -> int:
        return self.peak - self.start


EXTRA: dict[str, int] = {}  # method -> the most anonymous memory it added on this rank


# ---------------------------------------------------------------------------------------
# Methods: save(case, state, directory) and load(case, directory) -> tensors loaded


def save_raw(case: Case, state: Any, d: Path, everything: bool = False) -> None:
    rank = dist.get_rank()
    lo, hi = (0, case.unique_bytes) if everything else case.share
    pos = 0
    with open(d / f"raw-{rank:05d}.bin", "wb", buffering=1 << 20) as f:
        for t in case.local(state):
            view = _bytes_of(t)
            a, b = max(lo, pos), min(hi, pos + len(view))
            if a < b:
                f.write(view[a - pos : b - pos])
            pos += len(view)
        f.flush()
        os.fsync(f.fileno())


def save_raw_all(case: Case, state: Any, d: Path) -> None:
    save_raw(case, state, d, everything=True)


def load_raw(case: Case, d: Path) -> list[torch.Tensor]:
    """Read the bytes this rank needs into preallocated tensors (all, when replicated)."""
    out = [torch.empty_like(t) for t in case.local(case.extra["like"])]
    if not case.replicated:
        files = [d / f"raw-{dist.get_rank():05d}.bin"]
    else:
        files = sorted(d.glob("raw-*.bin"))
    views = iter([_bytes_of(t) for t in out])
    view = next(views, None)
    done = 0
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while view is not None:
                n = f.readinto(view[done:])
                if not n:
                    break  # the next file holds the rest
                done += n
                if done == len(view):
                    view, done = next(views, None), 0
    assert view is None, "raw files shorter than the state"
    return out


def dcp_state_dict(state: Any) -> dict[str, Any]:
    if isinstance(state, ReplicatedState):
        model_sd, optim_sd = get_state_dict(state.model, state.optimizer)
        return {"model": model_sd, "optim": optim_sd, "tensors": dict(state.tensors)}
    return {"tensors": dict(state.tensors)}


def save_dcp(case: Case, state: Any, d: Path) -> None:
    dcp.save(dcp_state_dict(state), checkpoint_id=d)


def load_dcp(case: Case, d: Path) -> list[torch.Tensor]:
    state = case.fresh()
    sd = dcp_state_dict(state)
    dcp.load(sd, checkpoint_id=d)
    if isinstance(state, ReplicatedState):
        set_state_dict(
            state.model, state.optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"]
        )
    return case.local(state)


def manager(d: Path, initial: Callable[[], Any], cls: type, **kwargs: Any) -> Any:
    return hyperstate.StateManager(
        Config, cls, lambda c: initial(), None, d, "step", edit_check_seconds=None, **kwargs
    )


def save_hyperstate(case: Case, state: Any, d: Path) -> None:
    hs = manager(d, lambda: state, type(state))
    try:
        case.extra["hs-save"] = timed(hs.checkpoint)[0]  # the manager exists in a run
    finally:
        hs.close()


def load_hyperstate(case: Case, d: Path) -> list[torch.Tensor]:
    hs = manager(d, case.fresh, type(case.extra["like"]))
    hs.close()
    assert hs.resumed_from is not None
    return case.local(hs.state)


@dataclass(frozen=True)
class Method:
    name: str
    save: Callable[[Case, Any, Path], None]
    load: Callable[[Case, Path], list[torch.Tensor]] | None
    replicated_only: bool = False


RAW = "raw write+fsync, 1/N of the bytes per rank"
RAW_ALL = "raw write+fsync, every rank all bytes"
DCP = "DCP save / load"
HS = "hyperstate checkpoint() / resume"
METHODS = [
    Method(RAW, save_raw, load_raw),
    Method(RAW_ALL, save_raw_all, None, replicated_only=True),
    Method(DCP, save_dcp, load_dcp),
    Method(HS, save_hyperstate, load_hyperstate),
]
LOADS = {RAW: "raw readinto", DCP: "DCP load", HS: "hyperstate resume (new StateManager)"}


# ---------------------------------------------------------------------------------------
# Measuring


@dataclass
class Figures:
    save: dict[str, float] = field(default_factory=dict)
    warm: dict[str, float] = field(default_factory=dict)
    cold: dict[str, float] = field(default_factory=dict)
    written: dict[str, int] = field(default_factory=dict)

    def best(self, table: dict[str, float], name: str, seconds: float) -> None:
        table[name] = min(seconds, table.get(name, float("inf")))


def new_dir(root: Path, name: str) -> Path:
    d = root / name
    if dist.get_rank() == 0:
        d.mkdir(parents=True)
    dist.barrier()
    return d


def remove_dir(d: Path) -> None:
    dist.barrier()
    if dist.get_rank() == 0:
        shutil.rmtree(d, ignore_errors=True)
    dist.barrier()


def check(name: str, expected: float, got: float) -> None:
    bad = all_max(0.0 if got == expected else 1.0)
    if bad:
        raise AssertionError(f"{name}: the loaded values differ from the saved ones")


@dataclass
class Async:
    """What the async trials keep across rounds: later saves reuse staging buffers."""

    manager: Any = None
    saves: int = 0
    dcp_saves: int = 0
    group: Any = None

    def close(self, root: Path) -> None:
        if self.manager is not None:
            self.manager.close()
            remove_dir(root / "async-hyperstate")
        if self.group is not None:
            dist.destroy_process_group(self.group)


def run_sync(case: Case, state: Any, root: Path, m: Method, figures: Figures) -> None:
    expected = case.extra["expected"]
    d = new_dir(root, f"{m.name.split()[0]}-{METHODS.index(m)}")
    try:
        seconds, _ = timed(lambda: m.save(case, state, d), f"{m.name}: save")
        figures.best(figures.save, m.name, case.extra.pop("hs-save", seconds))
        if dist.get_rank() == 0:
            figures.written[m.name] = disk_bytes(d)
        if m.load is None:
            return
        load = m.load
        seconds, got = timed(lambda: touch(load(case, d)), f"{m.name}: load")
        check(m.name, expected, got)
        figures.best(figures.warm, m.name, seconds)
        if dist.get_rank() == 0:
            evict(d)
        seconds, got = timed(lambda: touch(load(case, d)))
        check(m.name, expected, got)
        figures.best(figures.cold, m.name, seconds)
    finally:
        remove_dir(d)


def run_async_hyperstate(state: Any, root: Path, keep: Async, figures: Figures) -> None:
    """Two ``async_save`` checkpoints: how long checkpoint() blocks, and until wait()."""
    d = root / "async-hyperstate"
    if keep.manager is None:
        d = new_dir(root, "async-hyperstate")
        keep.manager = manager(d, lambda: state, type(state), async_save=True)
    for _ in range(2):
        keep.saves += 1
        state.step = 1 + keep.saves
        remove_dir(d / f"step-{state.step - 1:012d}")  # the previous one, untimed
        gc.collect()
        dist.barrier()
        start = time.perf_counter()
        keep.manager.checkpoint()
        blocked = all_max(time.perf_counter() - start)
        keep.manager.wait()
        dist.barrier()
        total = time.perf_counter() - start
        which = "first" if keep.saves == 1 else "later"
        figures.best(figures.save, f"hyperstate async ({which}): checkpoint() blocks", blocked)
        figures.best(figures.save, f"hyperstate async ({which}): until wait() returns", total)
    state.step = 1


def run_async_dcp(state: Any, root: Path, keep: Async, figures: Figures) -> None:
    """Two ``dcp.async_save`` calls (each stages a copy into new buffers: DCP's staging
    cache, ``FileSystemWriter(cache_staged_state_dict=True)``, needs pinned memory, which
    a machine without an accelerator does not have)."""
    if keep.group is None:
        keep.group = dist.new_group(backend="gloo")  # DCP's advice: async on its own group
    for _ in range(2):
        keep.dcp_saves += 1
        d = new_dir(root, f"async-dcp-{keep.dcp_saves}")
        try:
            gc.collect()
            dist.barrier()
            start = time.perf_counter()
            sd = dcp_state_dict(state)
            future = dcp.async_save(sd, checkpoint_id=d, process_group=keep.group)
            blocked = all_max(time.perf_counter() - start)
            future.result()
            dist.barrier()
            total = time.perf_counter() - start
            which = "first" if keep.dcp_saves == 1 else "later"
            figures.best(figures.save, f"DCP async_save ({which}): blocks", blocked)
            figures.best(figures.save, f"DCP async_save ({which}): until done", total)
        finally:
            remove_dir(d)


def run_round(case: Case, state: Any, root: Path, n: int, figures: Figures, keep: Async) -> None:
    """Every method once; the order rotates from round to round."""
    trials: list[Callable[[], None]] = [
        lambda m=m: run_sync(case, state, root, m, figures)
        for m in METHODS
        if case.replicated or not m.replicated_only
    ]
    trials.append(lambda: run_async_hyperstate(state, root, keep, figures))
    trials.append(lambda: run_async_dcp(state, root, keep, figures))
    shift = n % len(trials)
    for trial in trials[shift:] + trials[:shift]:
        trial()


# ---------------------------------------------------------------------------------------
# Report


SAVE_ROWS = {RAW: RAW, RAW_ALL: RAW_ALL, DCP: "DCP save", HS: "hyperstate checkpoint() (sync)"}


def report(
    case: Case, figures: Figures, world: int, repeat: int, peak: int, extra: dict[str, int]
) -> None:
    size = case.unique_bytes / GIB
    print(f"\n## {case.name}: {world} ranks, {size:.3f} GiB unique, best of {repeat}")
    print(f"   {case.describe}")
    head = f"{'save':50} {'s':>7} {'GiB/s':>6} {'x DCP':>6} {'x raw':>6} {'written/unique':>15}"
    print(head)
    print("-" * len(head))
    for name, seconds in figures.save.items():
        anchor = DCP
        if "async" in name:  # against DCP's async_save, at the same point
            kind = "first" if "(first)" in name else "later"
            anchor = f"DCP async_save ({kind}): " + ("blocks" if "block" in name else "until done")
        dcp_x = figures.save.get(anchor, float("nan")) / seconds
        raw_x = f"{figures.save[RAW] / seconds:6.2f}" if "block" not in name else " " * 6
        written = figures.written.get(name)
        ratio = f"{written / case.unique_bytes:15.3f}" if written is not None else ""
        label = SAVE_ROWS.get(name, name)
        print(f"{label:50} {seconds:7.3f} {size / seconds:6.2f} {dcp_x:6.2f} {raw_x} {ratio}")
    print(
        f"\n{'load (warm: after the save; cold-ish: fadvise)':50} "
        f"{'warm s':>7} {'GiB/s':>6} {'x DCP':>6} {'x raw':>6} | "
        f"{'cold s':>7} {'GiB/s':>6} {'x DCP':>6} {'x raw':>6}"
    )
    print("-" * len(head))
    for name in figures.warm:
        cells = []
        for table in (figures.warm, figures.cold):
            s = table[name]
            cells.append(f"{s:7.3f} {size / s:6.2f} {table[DCP] / s:6.2f} {table[RAW] / s:6.2f}")
        print(f"{LOADS[name]:50} " + " | ".join(cells))
    blocked = figures.save.get("hyperstate async (later): checkpoint() blocks")
    if blocked is not None:
        print(
            f"async_save: checkpoint() blocks {blocked / figures.save[HS]:.1%} of the time of a "
            "synchronous checkpoint() (a later save: the first allocates staging buffers)"
        )
    state = sum(t.nbytes for t in case.local(case.extra["like"]))
    print(
        f"peak RSS of a rank during this state's runs: {peak / GIB:.2f} GiB "
        f"(its state: {state / GIB:.2f} GiB; every method, mapped page cache included)"
    )
    print(
        "the most anonymous memory (RssAnon: heap, no page cache) a method added on a rank, "
        "over what the benchmark holds (the state; for a load also the new objects), "
        "as a share of the rank's state:"
    )
    for name, added in extra.items():
        print(f"  {name:60} {added / GIB:6.3f} GiB = {added / state:6.1%}")
    hs = max(v for k, v in extra.items() if k.startswith(HS))
    print(
        f"hyperstate's peak on a rank: state + {hs / state:.1%} = {1 + hs / state:.2f}x "
        "its state (target <= 1.5x)"
    )


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


# ---------------------------------------------------------------------------------------
# Entry points


def worker(args: argparse.Namespace) -> None:
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=600))
    rank, world = dist.get_rank(), dist.get_world_size()
    warnings.filterwarnings("ignore")
    mesh = init_device_mesh("cpu", (world,))
    gc.collect()
    gc.freeze()  # the modules' objects: else every gc.collect() before a timing takes 0.4 s
    own_root = args.root is None
    root = [args.root or ""]
    if own_root:
        if rank == 0:
            root = [tempfile.mkdtemp(prefix="bench-dist-", dir=args.dir)]
        dist.broadcast_object_list(root, 0)
    try:
        if rank == 0:
            print(f"torch {torch.__version__}, {world} ranks (gloo), writing under {root[0]}")
        cases = [replicated_case, lambda s, r, w: sharded_case(s, r, w, mesh)]
        for make in cases:
            gc.collect()
            reset_peak()
            case = make(args.size_mib, rank, world)
            state = case.build()
            case.extra["like"] = state  # shapes, types
            case.extra["expected"] = touch(case.local(state))
            figures, keep = Figures(), Async()
            try:
                for n in range(args.repeat):
                    run_round(case, state, Path(root[0]), n, figures, keep)
            finally:
                keep.close(Path(root[0]))
            peak = int(all_max(peak_rss()))
            extra = all_max_each(EXTRA)
            EXTRA.clear()
            if rank == 0:
                report(case, figures, world, args.repeat, peak, extra)
                sys.stdout.flush()
            del state, case
    finally:
        dist.barrier()
        if own_root and rank == 0:
            shutil.rmtree(root[0], ignore_errors=True)
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(args: argparse.Namespace) -> int:
    """Start this script ``--ranks`` times as torchrun would; return the worst exit code."""
    root = tempfile.mkdtemp(prefix="bench-dist-", dir=args.dir)
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(args.ranks),
        "LOCAL_WORLD_SIZE": str(args.ranks),
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
    }
    argv = [sys.executable, __file__, *sys.argv[1:], "--root", root]
    procs = [
        subprocess.Popen(argv, env={**env, "RANK": str(r), "LOCAL_RANK": str(r), "GROUP_RANK": "0"})
        for r in range(args.ranks)
    ]
    try:
        while any(p.poll() is None for p in procs):
            if any(p.returncode for p in procs):  # one failed: the others would hang
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        shutil.rmtree(root, ignore_errors=True)
    return max(abs(p.returncode) for p in procs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--ranks", type=int, default=2, help="ranks to start (not under torchrun)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default /tmp)")
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        worker(args)
    else:
        sys.exit(launch(args))


if __name__ == "__main__":
    main()
