"""Small things a new user runs into: hints in messages, the version, the docs' promises."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

import hyperstate
from hyperstate.edits import request_edit

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class Optimizer:
    lr: float = 0.1


@dataclasses.dataclass
class Config:
    optimizer: Optimizer = dataclasses.field(default_factory=Optimizer)
    name: str = "run"


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        ("1e-2@0 cos 1e-4@300", "did you mean 'step: 1e-2@0 cos 1e-4@300'?"),
        ("1e-2 cos 1e-4@300", "a schedule is written 'step: VALUE@STEP KIND VALUE@STEP ...'"),
    ],
)
def test_a_schedule_without_its_prefix_gets_a_hint(value: str, hint: str) -> None:
    with pytest.raises(hyperstate.ConfigError) as info:
        hyperstate.load(Config, None, [f"optimizer.lr={value}"])
    assert str(info.value).endswith(hint)
    # Written as the hint says, it is a schedule.
    fixed = "step: 1e-2@0 cos 1e-4@300"
    assert hyperstate.load(Config, None, [f"optimizer.lr={fixed}"]).optimizer.lr == 1e-2


def test_no_schedule_hint_for_other_bad_numbers() -> None:
    with pytest.raises(hyperstate.ConfigError) as info:
        hyperstate.load(Config, None, ["optimizer.lr=1e-2 3"])
    assert "schedule" not in str(info.value)


def test_the_version_follows_the_0_4_series() -> None:
    major, minor, _ = (int(n) for n in hyperstate.__version__.split("."))
    assert (major, minor) >= (0, 5)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(rf'^version = "{re.escape(hyperstate.__version__)}"$', pyproject, re.M)
    assert "## Upgrading from hyperstate 0.4" in (ROOT / "README.md").read_text()


# -- a scheduled learning rate reaches the optimizer -------------------------------------------


@dataclasses.dataclass
class TrainConfig:
    optimizer: Optimizer = dataclasses.field(default_factory=Optimizer)
    wd: float = 0.5


@dataclasses.dataclass
class TrainState:
    step: int
    model: torch.nn.Module
    opt: torch.optim.Optimizer


def train_state(config: TrainConfig) -> TrainState:
    model = torch.nn.Linear(2, 2)
    return TrainState(0, model, torch.optim.SGD(model.parameters(), lr=123.0))


def lrs(hs: hyperstate.StateManager[TrainConfig, TrainState]) -> list[float]:
    return [group["lr"] for group in hs.state.opt.param_groups]


def test_bind_param_groups_follows_the_schedule_edits_and_resume(tmp_path: Path) -> None:
    def start(*overrides: str) -> hyperstate.StateManager[TrainConfig, TrainState]:
        return hyperstate.StateManager(
            TrainConfig,
            TrainState,
            train_state,
            None,
            tmp_path,
            "step",
            list(overrides),
            edit_check_seconds=0,
        )

    hs = start("optimizer.lr=step: 1.0@0 lin 0.0@10")
    hs.bind_param_groups("optimizer.lr", hs.state.opt)
    hs.bind_param_groups("wd", hs.state.opt, key="weight_decay")
    assert lrs(hs) == [1.0] and hs.state.opt.param_groups[0]["weight_decay"] == 0.5
    for _ in range(4):
        hs.state.step += 1
        hs.step()
    assert lrs(hs) == [pytest.approx(0.6)]
    request_edit(tmp_path, ["wd=0.25"])
    hs.state.step += 1
    hs.step()
    assert hs.state.opt.param_groups[0]["weight_decay"] == 0.25
    hs.close()  # saves step 5
    # Resumed: the restored optimizer holds the saved lr; the binding keeps it following.
    hs = start()
    hs.bind_param_groups("optimizer.lr", hs.state.opt)
    assert lrs(hs) == [pytest.approx(0.5)]
    hs.state.step += 1
    hs.step()
    assert lrs(hs) == [pytest.approx(0.4)]
    hs.close()


@pytest.mark.parametrize(
    ("field", "target", "message"),
    [
        ("optimizer.lrr", "opt", "expected a config field, found none at optimizer.lrr"),
        ("optimizer", "opt", "expected a number to bind, found a Optimizer at optimizer"),
        ("optimizer..lr", "opt", "expected a dotted config field"),
        ("wd", "model", "expected an optimizer with param_groups to bind to, found Linear"),
    ],
)
def test_bind_param_groups_refuses_what_it_cannot_bind(
    tmp_path: Path, field: str, target: str, message: str
) -> None:
    hs = hyperstate.StateManager(TrainConfig, TrainState, train_state, None, tmp_path, "step")
    with pytest.raises(hyperstate.ConfigError, match=re.escape(message)):
        hs.bind_param_groups(field, getattr(hs.state, target))
    hs.close()


def test_help_shows_a_scheduled_field_as_its_schedule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.ron"
    config.write_text('TrainConfig(optimizer: Optimizer(lr: "step: 1.0@0 lin 0.0@10"))\n')
    with pytest.raises(SystemExit) as exit_info:
        hyperstate.HyperState.from_args(
            TrainConfig, TrainState, train_state, ["--config", str(config), "--help"]
        )
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert 'optimizer.lr: float = "step: 1.0@0 lin 0.0@10"' in out
    assert "wd: float = 0.5" in out


def test_from_args_takes_constructor_arguments_from_the_scripts_own_options(
    tmp_path: Path,
) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--every", type=int, default=100)
    hs = hyperstate.HyperState.from_args(
        TrainConfig,
        TrainState,
        train_state,
        ["--checkpoint-dir", str(tmp_path), "--every", "2", "wd=0.125"],
        parser=parser,
        checkpoint_key="step",
        configure=lambda args: {"policy": hyperstate.CheckpointPolicy(every_steps=args.every)},
    )
    assert hs.args is not None and hs.args.every == 2 and hs.config.wd == 0.125
    for _ in range(4):
        hs.state.step += 1
        hs.step()
    hs.close()
    assert sorted(p.name for p in tmp_path.glob("step-*")) == [
        "step-000000000002",
        "step-000000000004",
    ]
