"""DDP training under torchrun that checkpoints every few steps and resumes after a kill.

    torchrun --standalone --nproc-per-node 2 examples/torchrun/train.py \
        --checkpoint-dir /tmp/ddp-run --hps optimizer.lr=1e-3

Every rank runs this script. Each writes its share of the tensors (DDP's replicated
parameters and optimizer state are written once in total, spread over the ranks; each
rank's RNG state is its own), rank 0 writes config.ron, state.ron and, once every rank
succeeded, COMMITTED. Kill the job and run the same command again (with the same or
another --nproc-per-node): every rank resumes from the newest committed checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import hyperstate
from hyperstate import PerRank


@dataclass
class OptimizerConfig:
    lr: float = 1e-2
    """Learning rate: a number, or a schedule such as "step: 1e-3@0 lin 2e-2@20 cos 1e-4@200"."""
    weight_decay: float = 0.0


@dataclass
class Config:
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    steps: int = 200
    global_batch: int = 64
    hidden: int = 32
    inputs: int = 8
    seed: int = 0


@dataclass
class State:
    step: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    rng: PerRank[torch.Generator]
    """Each rank's dropout-style noise generator: saved per rank."""
    last_loss: float = float("nan")


def initial_state(config: Config) -> State:
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    model = nn.Sequential(
        nn.Linear(config.inputs, config.hidden), nn.Tanh(), nn.Linear(config.hidden, 1)
    )
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(
        ddp.parameters(), lr=config.optimizer.lr, weight_decay=config.optimizer.weight_decay
    )
    rng = torch.Generator().manual_seed(config.seed * 1000 + dist.get_rank())
    return State(0, ddp, optimizer, rng)


def train_step(config: Config, state: State) -> None:
    # The global batch of a step is a function of the step, split between the ranks, so
    # that a resumed job (with any number of ranks) sees the same data.
    rank, world = dist.get_rank(), dist.get_world_size()
    data = torch.Generator().manual_seed(config.seed * 1_000_003 + state.step)
    x = torch.randn(config.global_batch, config.inputs, generator=data)
    y = torch.sin(x.sum(dim=1, keepdim=True))
    per = config.global_batch // world
    x, y = x[rank * per : (rank + 1) * per], y[rank * per : (rank + 1) * per]
    x = x + 0.0 * torch.randn(x.shape, generator=state.rng)  # per-rank noise (off here)
    for group in state.optimizer.param_groups:
        group["lr"] = config.optimizer.lr  # follows the schedule
    loss = (state.model(x) - y).pow(2).mean()
    state.optimizer.zero_grad()
    loss.backward()  # DDP averages the gradients over the ranks
    state.optimizer.step()
    state.last_loss = loss.item()
    state.step += 1


def fingerprint(state: State) -> str:
    digest = hashlib.sha256()
    for tensor in state.model.state_dict().values():
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


def main() -> None:
    torch.set_num_threads(1)  # bit-identical results from run to run
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", default=str(Path(__file__).with_name("config.ron")), help="a config file"
    )
    parser.add_argument("--checkpoint-dir", required=True, help="local path or fsspec URL")
    parser.add_argument("--every", type=int, default=20, help="checkpoint every N steps")
    parser.add_argument("--async-save", action="store_true", help="save in the background")
    parser.add_argument("--hps", nargs="*", default=[], help="path=value overrides")
    args = parser.parse_args()

    dist.init_process_group("gloo")  # NCCL on GPUs; hyperstate talks over its own gloo group
    rank = dist.get_rank()
    policy = hyperstate.CheckpointPolicy(every_steps=args.every, keep_last=3)
    with hyperstate.HyperState.load(
        Config,
        State,
        initial_state,
        args.config,
        args.checkpoint_dir,
        "step",
        args.hps,
        policy=policy,
        async_save=args.async_save,
        per_rank="reinit",  # a resumed job with another world size re-seeds the RNGs
    ) as hs:
        if hs.resumed_from is not None and rank == 0:
            print(f"resumed at step {hs.state.step}", flush=True)
        while hs.state.step < hs.config.steps:
            train_step(hs.config, hs.state)
            hs.step()
            if hs.state.step % 50 == 0 and rank == 0:
                print(
                    f"step {hs.state.step:4d}  loss {hs.state.last_loss:.5f}  "
                    f"lr {hs.config.optimizer.lr:.2e}",
                    flush=True,
                )
        if rank == 0:
            print(f"done: step {hs.state.step}, weights {fingerprint(hs.state)}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
