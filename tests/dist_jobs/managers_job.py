"""Opens and closes managers many times; reports how many process groups the process has.

Prints ``RESULT {json}`` per rank with the number of groups in
``torch.distributed.distributed_c10d._world.pg_map`` (the default group and every group
made since, until destroyed) after each phase:

- ``loop``: 20 managers, one after the other, each saving once (every other one with
  ``async_save``, so its save thread used the background group);
- ``both``: two managers open at once, one's async save in flight while the other opens,
  saves and closes;
- ``after``: 5 more managers, one after the other.

    managers_job.py RUN_DIR
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed import distributed_c10d

import hyperstate
from hyperstate.storage import CheckpointStore


@dataclass
class Config:
    pass


@dataclass
class State:
    n: int
    t: torch.Tensor


def initial_state(config: Config) -> State:
    return State(0, torch.zeros(4))


def groups() -> int:
    return len(distributed_c10d._world.pg_map)


def manager(run: str, **kwargs: object) -> hyperstate.StateManager[Config, State]:
    return hyperstate.StateManager(
        Config, State, initial_state, None, run, "n", edit_check_seconds=None, **kwargs
    )


def advance(hs: hyperstate.StateManager[Config, State]) -> None:
    hs.state.n += 1
    hs.state.t += 1
    hs.step()  # checkpoints (every step by default)


def main() -> None:
    run = sys.argv[1]
    dist.init_process_group("gloo")
    result: dict[str, object] = {"rank": dist.get_rank(), "start": groups()}
    loop = []
    for i in range(20):
        with manager(f"{run}/loop", async_save=i % 2 == 1) as hs:
            advance(hs)
        loop.append(groups())
    result["loop"] = loop
    result["saved"] = [i.number for i in CheckpointStore(f"{run}/loop").list()]

    a = manager(f"{run}/a", async_save=True)
    advance(a)  # a's save goes on in its thread, over a's background group
    with manager(f"{run}/b") as b:
        advance(b)
    a.close()
    result["both"] = groups()
    try:
        advance(a)
    except hyperstate.HyperstateError as e:
        result["after_close"] = str(e)

    after = []
    for _ in range(5):
        with manager(f"{run}/loop") as hs:
            advance(hs)
        after.append(groups())
    result["after"] = after
    print("RESULT " + json.dumps(result), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
