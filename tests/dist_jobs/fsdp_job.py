"""An FSDP2 (``fully_shard``) job: parameters and Adam moments are DTensors sharded over
all ranks. Prints ``RESULT {json}`` per rank.

    fsdp_job.py RUN_DIR steps=N
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import hyperstate


@dataclass
class Config:
    steps: int = 2


@dataclass
class State:
    step: int
    model: nn.Module
    optimizer: torch.optim.Optimizer


def main() -> None:
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))

    def initial_state(config: Config) -> State:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 1))
        fully_shard(model, mesh=mesh)
        return State(0, model, torch.optim.Adam(model.parameters(), lr=0.01))

    hs = hyperstate.HyperState.load(
        Config, State, initial_state, None, sys.argv[1], "step", sys.argv[2:]
    )
    state = hs.state

    def weights() -> list[float]:
        return [
            x
            for p in state.model.parameters()
            for x in p.full_tensor().flatten().tolist()  # type: ignore[attr-defined]
        ]

    result = {
        "resumed_from": hs.resumed_from.number if hs.resumed_from else None,
        "restored": weights(),
    }
    while state.step < hs.config.steps:
        x = torch.randn(4, 6, generator=torch.Generator().manual_seed(state.step))
        loss = state.model(x).pow(2).mean()
        state.optimizer.zero_grad()
        loss.backward()
        state.optimizer.step()
        state.step += 1
        hs.step()
    hs.close()
    result["final"] = weights()
    print("RESULT " + json.dumps(result), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
