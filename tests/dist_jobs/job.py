"""A small DDP + DTensor training job for the distributed tests (one process per rank).

Started with the environment torchrun sets (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT);
prints one line ``RESULT {json}`` per rank. Options:

    job.py RUN_DIR [--steps N] [--every K] [--kill-rank R --kill-step S] [--async [--staging]]
           [--per-rank reinit] [--fault RANK:CHECKPOINT:error|kill] [--edits]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import fsspec
import torch
import torch.distributed as dist
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor
from torch.nn.parallel import DistributedDataParallel

import hyperstate
from hyperstate import CheckpointPolicy, PerRank


class FaultyFileSystem(DirFileSystem):
    """The local disk, except that one chosen write of one chosen rank fails (or kills).

    ``HYPERSTATE_TEST_FAULT=RANK:CHECKPOINT:MODE``: when rank RANK writes its blob file of
    checkpoint CHECKPOINT, raise OSError (MODE ``error``), SIGKILL itself (``kill``) or
    hang for ``HYPERSTATE_TEST_HANG`` seconds (``hang``).
    """

    protocol = "faulty"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(path="/", fs=LocalFileSystem(), **kwargs)

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        return str(path).removeprefix("faulty://")

    def _fault(self, path: str) -> None:
        spec = os.environ.get("HYPERSTATE_TEST_FAULT")
        if not spec:
            return
        rank, number, mode = spec.split(":")
        if int(rank) != dist.get_rank():
            return
        if f"step-{int(number):012d}" in path and "/blobs/" in path:
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "hang":
                time.sleep(float(os.environ.get("HYPERSTATE_TEST_HANG", "10")))
                return
            raise OSError(28, f"injected fault writing {path}")

    def open(self, path: Any, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        if "w" in mode:
            self._fault(str(path))
        return super().open(path, mode, *args, **kwargs)

    def cat_file(self, path: Any, start: Any = None, end: Any = None, **kwargs: Any) -> Any:
        if "/blobs/" in str(path):
            READS.append((str(path).rsplit("/", 1)[1], start, end))
        return super().cat_file(path, start=start, end=end, **kwargs)

    def pipe_file(self, path: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        self._fault(str(path))
        return super().pipe_file(path, value, *args, **kwargs)


fsspec.register_implementation("faulty", FaultyFileSystem, clobber=True)
READS: list[tuple[str, int | None, int | None]] = []  # (blob file, start, end) read


@dataclass
class Config:
    lr: float = 0.05
    steps: int = 8
    batch: int = 8


@dataclass
class State:
    step: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    table: torch.Tensor  # a DTensor sharded by rows over all ranks
    rng: PerRank[torch.Generator]


MESH: Any = None


def initial_state(config: Config) -> State:
    torch.manual_seed(0)
    model = DistributedDataParallel(nn.Linear(4, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    table = distribute_tensor(torch.arange(30.0).reshape(10, 3), MESH, [Shard(0)])
    rng = torch.Generator().manual_seed(1000 + dist.get_rank())
    return State(0, model, optimizer, table, rng)


def snapshot(state: State) -> dict[str, Any]:
    module = state.model.module
    return {
        "step": state.step,
        "weight": module.weight.detach().flatten().tolist(),
        "bias": module.bias.detach().flatten().tolist(),
        "table": state.table.full_tensor().flatten().tolist(),
        "exp_avg": state.optimizer.state[module.weight]["exp_avg"].flatten().tolist()
        if module.weight in state.optimizer.state
        else None,
    }


def main() -> None:
    global MESH
    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--every", type=int, default=2)
    parser.add_argument("--kill-rank", type=int)
    parser.add_argument("--kill-step", type=int)
    parser.add_argument("--async", dest="async_save", action="store_true")
    parser.add_argument("--staging", dest="async_staging", action="store_true")
    parser.add_argument("--per-rank", default="error")
    parser.add_argument("--fault")
    parser.add_argument("--timeout", type=float, default=20.0)
    args = parser.parse_args()
    if args.fault:
        os.environ["HYPERSTATE_TEST_FAULT"] = args.fault
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    MESH = init_device_mesh("cpu", (world,))
    result: dict[str, Any] = {"rank": rank, "world": world, "lr": []}
    try:
        hs = hyperstate.HyperState.load(
            Config,
            State,
            initial_state,
            None,
            args.run,
            "step",
            [f"steps={args.steps}"],
            policy=CheckpointPolicy(every_steps=args.every),
            async_save=args.async_save,
            async_staging=args.async_staging,
            per_rank=args.per_rank,
            collective_timeout=args.timeout,
            edit_check_seconds=0,
        )
        state, config = hs.state, hs.config
        result["resumed_from"] = hs.resumed_from.number if hs.resumed_from else None
        result["restored"] = snapshot(state)
        result["reads"] = list(READS)
        result["rng"] = torch.randint(0, 1 << 30, (1,), generator=state.rng).item()
        model, optimizer = state.model, state.optimizer
        while state.step < config.steps:
            s = state.step
            if rank == args.kill_rank and s == args.kill_step:
                os.kill(os.getpid(), signal.SIGKILL)
            for group in optimizer.param_groups:
                group["lr"] = config.lr
            result["lr"].append(config.lr)
            g = torch.Generator().manual_seed(s)
            x = torch.randn(config.batch, 4, generator=g)
            y = x.sum(1, keepdim=True)
            per = config.batch // world
            xb, yb = x[rank * per : (rank + 1) * per], y[rank * per : (rank + 1) * per]
            loss = ((model(xb) - yb) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            state.table.add_(1.0)
            state.step += 1
            hs.step()
        hs.close()
        result["final"] = snapshot(state)
    except hyperstate.HyperstateError as e:
        result["error"] = f"{type(e).__name__}: {e}"
    print("RESULT " + json.dumps(result), flush=True)
    sys.stdout.flush()
    if "error" in result:
        os._exit(3)  # the process group may be broken: do not wait on it at exit
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
