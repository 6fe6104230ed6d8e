"""DDP training under torchrun that checkpoints, stops cleanly on SIGTERM, and resumes.

    torchrun --standalone --nproc-per-node 2 examples/torchrun/train.py \
        --checkpoint-dir /tmp/ddp-run optimizer.lr=1e-3

Every rank runs this script. Each writes its share of the tensors (DDP's replicated
parameters and optimizer state are written once in total, spread over the ranks; each
rank's RNG state is its own), rank 0 writes config.ron, state.ron and, once every rank
succeeded, COMMITTED. Run the same command again after the job ended in any way (with the
same or another --nproc-per-node) and every rank resumes from the newest committed
checkpoint: after SIGKILL, the last periodic one; after SIGTERM or Ctrl-C to any rank (or
to torchrun), the one of the very step the job reached, committed before it stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
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


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of ranks (0 and 1 without torchrun)."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def initial_state(config: Config) -> State:
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    model: nn.Module = nn.Sequential(
        nn.Linear(config.inputs, config.hidden), nn.Tanh(), nn.Linear(config.hidden, 1)
    )
    if dist.is_initialized():
        model = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.optimizer.lr, weight_decay=config.optimizer.weight_decay
    )
    rng = torch.Generator().manual_seed(config.seed * 1000 + rank_and_world()[0])
    return State(0, model, optimizer, rng)


def train_step(config: Config, state: State) -> None:
    # The global batch of a step is a function of the step, split between the ranks, so
    # that a resumed job (with any number of ranks) sees the same data.
    rank, world = rank_and_world()
    data = torch.Generator().manual_seed(config.seed * 1_000_003 + state.step)
    x = torch.randn(config.global_batch, config.inputs, generator=data)
    y = torch.sin(x.sum(dim=1, keepdim=True))
    per = config.global_batch // world
    x, y = x[rank * per : (rank + 1) * per], y[rank * per : (rank + 1) * per]
    x = x + 0.0 * torch.randn(x.shape, generator=state.rng)  # per-rank noise (off here)
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
    # The run's events (start or resume, saves, a stop on a signal) on stderr, from rank 0.
    logging.basicConfig(format="%(name)s: %(message)s")
    logging.getLogger("hyperstate").setLevel(logging.INFO)
    if "RANK" in os.environ:  # started by torchrun (without it: one process, no DDP)
        dist.init_process_group("gloo")  # NCCL on GPUs; hyperstate uses its own gloo group
    rank = rank_and_world()[0]

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--log-every", type=int, default=50, metavar="N", help="print every N steps"
    )
    hs = hyperstate.HyperState.from_args(
        Config,
        State,
        initial_state,
        parser=parser,  # the script's own options, in --help too; their values: hs.args
        path=Path(__file__).with_name("config.ron"),  # what --config defaults to
        checkpoint_key="step",
        policy=hyperstate.CheckpointPolicy(every_steps=20, keep_last=3),
        per_rank="reinit",  # a resumed job with another world size re-seeds the RNGs
    )
    # Every step() sets the param groups' lr to the config's, which follows the schedule.
    hs.bind_param_groups("optimizer.lr", hs.state.optimizer)
    if hs.resumed_from is not None and rank == 0:
        print(f"resumed at step {hs.state.step}", flush=True)
    try:
        with hs:
            while hs.state.step < hs.config.steps:
                train_step(hs.config, hs.state)
                hs.step()  # checkpoints every 20 steps; after SIGTERM, saves and stops
                if hs.state.step % hs.args.log_every == 0 and rank == 0:
                    print(
                        f"step {hs.state.step:4d}  loss {hs.state.last_loss:.5f}  "
                        f"lr {hs.config.optimizer.lr:.2e}",
                        flush=True,
                    )
        if rank == 0:
            print(f"done: step {hs.state.step}, weights {fingerprint(hs.state)}", flush=True)
    except hyperstate.Preempted as e:
        # Every rank gets here at the same step, with that step committed. Left to
        # propagate, Preempted ends the process with status 128 + signal (143: SIGTERM).
        if rank == 0:
            print(f"stopped at step {hs.state.step}: checkpoint {e.number} committed", flush=True)
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
