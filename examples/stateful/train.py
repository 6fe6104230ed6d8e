"""A small real training loop that checkpoints, can be stopped at any time, and resumes.

    python examples/stateful/train.py --config examples/stateful/config.ron \
        --checkpoint-dir /tmp/run steps=400 optimizer.lr="step: 1e-2@0 cos 1e-4@400"

Stop it and run the same command again: it resumes from the newest committed checkpoint
and ends with exactly the weights an uninterrupted run gets. Ctrl-C or SIGTERM (a
scheduler's notice) commits a checkpoint of the step reached, then exits with status 130
or 143; after SIGKILL (or a lost node) the run resumes from the last periodic checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
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
    # The run's events (start or resume, saves, a stop on a signal) on stderr.
    logging.basicConfig(format="%(name)s: %(message)s")
    logging.getLogger("hyperstate").setLevel(logging.INFO)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--log-every", type=int, default=50, metavar="N", help="print every N steps"
    )
    # --config, --checkpoint-dir, path=value overrides, --help and --print-config.
    hs = hyperstate.HyperState.from_args(
        Config,
        State,
        initial_state,
        parser=parser,
        checkpoint_key="step",
        policy=hyperstate.CheckpointPolicy(every_steps=20, keep_last=3),
    )
    # Every step() sets the param groups' lr to the config's, which follows the schedule.
    hs.bind_param_groups("optimizer.lr", hs.state.optimizer)
    if hs.resumed_from is not None:
        print(f"resumed at step {hs.state.step}", flush=True)
    try:
        with hs:
            while hs.state.step < hs.config.steps:
                train_step(hs.config, hs.state)
                hs.step()  # checkpoints every 20 steps; after SIGTERM, saves and stops
                if hs.state.step % hs.args.log_every == 0:
                    print(
                        f"step {hs.state.step:4d}  loss {hs.state.last_loss:.5f}  "
                        f"lr {hs.config.optimizer.lr:.2e}",
                        flush=True,
                    )
    except hyperstate.Preempted as e:
        # Left to propagate, Preempted ends the process with status 128 + signal.
        print(f"stopped at step {hs.state.step}: checkpoint {e.number} committed", flush=True)
        raise
    print(f"done: step {hs.state.step}, weights {fingerprint(hs.state)}", flush=True)


if __name__ == "__main__":
    main()
