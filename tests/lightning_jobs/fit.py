"""A small, deterministic Lightning fit through ``HyperstateCheckpointIO``.

Imported by tests/test_lightning.py for its model, data and trainer; run as a script it
is one training process of the kill-and-resume test:

    fit.py ROOT --max-steps N [--kill-at-step S] [--resume]

Checkpoints go to ``ROOT/checkpoints`` at the end of every epoch (every
``BATCHES_PER_EPOCH`` steps), the newest also as ``last.ckpt``. ``--kill-at-step`` SIGKILLs
the process itself after that step; ``--resume`` fits with ``ckpt_path="last"``. Prints
``weights <hex>``: the bytes of the final parameters.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

# The warnings that Lightning 2.6 gives in these tests, none about hyperstate: its own use
# of a pytree API that torch >= 2.10 deprecates, advice for machines with many cores or a
# GPU (the tests train on the CPU in the main process on purpose), and the note that a
# resumed run's checkpoint directory is not empty. (message regex, category) pairs.
KNOWN_WARNINGS: tuple[tuple[str, str], ...] = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", "FutureWarning"),
    (
        r"The '\w+' does not have many workers",
        "lightning.fabric.utilities.warnings.PossibleUserWarning",
    ),
    (r"GPU available but not used", "lightning.fabric.utilities.warnings.PossibleUserWarning"),
    (r"Checkpoint directory .* exists and is not empty", "UserWarning"),
)

if __name__ == "__main__":
    warnings.simplefilter("error")
    for message, _ in KNOWN_WARNINGS:  # by message alone: Lightning is not imported yet
        warnings.filterwarnings("ignore", message=message)

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from hyperstate.integrations.lightning import HyperstateCheckpointIO  # noqa: E402

BATCHES_PER_EPOCH = 4


class TinyModel(pl.LightningModule):
    """Two linear layers, AdamW (state keyed by parameter index) and a step-wise StepLR."""

    def __init__(self, lr: float = 0.05, width: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(width, 8), nn.Tanh(), nn.Linear(8, 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams["lr"])
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.9)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 2},
        }


def data() -> DataLoader[Any]:
    """The same batches in the same order in every epoch and process (no shuffling), so a
    run resumed at the end of an epoch sees what an uninterrupted one sees."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCHES_PER_EPOCH * 8, 4, generator=g)
    y = x.sum(dim=1, keepdim=True).sin()
    return DataLoader(TensorDataset(x, y), batch_size=8)


def trainer(
    root: Path,
    max_steps: int,
    callbacks: list[pl.Callback],
    plugin: HyperstateCheckpointIO | None = None,
) -> pl.Trainer:
    """A quiet trainer on the CPU that checkpoints through ``plugin`` (a new one if None)."""
    return pl.Trainer(
        default_root_dir=root,
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        plugins=[plugin if plugin is not None else HyperstateCheckpointIO()],
        callbacks=callbacks,
    )


def weights(model: nn.Module) -> str:
    """The bytes of every parameter, in order, as hex: equal exactly when bit-equal."""
    return b"".join(p.detach().numpy().tobytes() for p in model.parameters()).hex()


class KillAt(pl.Callback):
    """SIGKILLs this process after training step ``step``, as a lost node would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            print(f"killed at step {self.step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("--max-steps", type=int, required=True)
    parser.add_argument("--kill-at-step", type=int)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the same arithmetic in every process
    torch.manual_seed(0)
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(
            dirpath=args.root / "checkpoints",
            every_n_train_steps=BATCHES_PER_EPOCH,
            save_last=True,
        )
    ]
    if args.kill_at_step is not None:
        callbacks.insert(0, KillAt(args.kill_at_step))
    model = TinyModel()
    trainer(args.root, args.max_steps, callbacks).fit(
        model, data(), ckpt_path="last" if args.resume else None
    )
    print("weights", weights(model), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
