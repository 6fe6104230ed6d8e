"""A small real training loop that checkpoints, can be killed at any time, and resumes.

    python examples/stateful/train.py --config examples/stateful/config.ron \
        --checkpoint-dir /tmp/run steps=400 optimizer.lr="step: 1e-2@0 cos 1e-4@400"

Kill it (Ctrl-C, SIGKILL, a preempted node) and run the same command again: it resumes
from the newest committed checkpoint and ends with exactly the weights an uninterrupted
run gets.
"""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import dataclass, field

import torch
from torch import nn

import hyperstate


@dataclass
class OptimizerConfig:
    lr: float = 1e-2
    """Learning rate; may be a schedule such as "step: 1e-2@0 cos 1e-4@400"."""
    weight_decay: float = 0.0


@dataclass
class Config:
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    steps: int = 300
    batch_size: int = 64
    hidden: int = 32
    inputs: int = 8
    seed: int = 0


@dataclass
class State:
    step: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    rng: torch.Generator
    last_loss: float = float("nan")


def initial_state(config: Config) -> State:
    torch.manual_seed(config.seed)
    model = nn.Sequential(
        nn.Linear(config.inputs, config.hidden), nn.Tanh(), nn.Linear(config.hidden, 1)
    )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.optimizer.lr, weight_decay=config.optimizer.weight_decay
    )
    return State(0, model, optimizer, torch.Generator().manual_seed(config.seed))


def train_step(config: Config, state: State) -> None:
    # Synthetic regression data drawn from the checkpointed RNG: resuming replays it.
    x = torch.randn(config.batch_size, config.inputs, generator=state.rng)
    y = torch.sin(x.sum(dim=1, keepdim=True))
    for group in state.optimizer.param_groups:
        group["lr"] = config.optimizer.lr  # follows the schedule
    loss = (state.model(x) - y).pow(2).mean()
    state.optimizer.zero_grad()
    loss.backward()
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
    parser.add_argument("--config", default=None, help="a config file (RON)")
    parser.add_argument("--checkpoint-dir", required=True, help="local path or fsspec URL")
    parser.add_argument("--every", type=int, default=20, help="checkpoint every N steps")
    parser.add_argument("overrides", nargs="*", help="path=value overrides")
    args = parser.parse_args()

    policy = hyperstate.CheckpointPolicy(every_steps=args.every, keep_last=3)
    with hyperstate.HyperState.load(
        Config,
        State,
        initial_state,
        args.config,
        args.checkpoint_dir,
        "step",
        args.overrides,
        policy=policy,
    ) as hs:
        if hs.resumed_from is not None:
            print(f"resumed at step {hs.state.step}", flush=True)
        while hs.state.step < hs.config.steps:
            train_step(hs.config, hs.state)
            hs.step()
            if hs.state.step % 50 == 0:
                print(
                    f"step {hs.state.step:4d}  loss {hs.state.last_loss:.5f}  "
                    f"lr {hs.config.optimizer.lr:.2e}",
                    flush=True,
                )
        print(f"done: step {hs.state.step}, weights {fingerprint(hs.state)}", flush=True)


if __name__ == "__main__":
    main()
