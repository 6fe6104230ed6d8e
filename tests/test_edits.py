"""Live edits of a running experiment's hyperparameters."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import hyperstate
from hyperstate.edits import request_edit
from hyperstate.storage import CheckpointStore

HYPERSTATE = str(Path(sys.executable).with_name("hyperstate"))


@dataclass
class Optimizer:
    lr: float = 0.1
    momentum: float = 0.9


@dataclass
class Config:
    optimizer: Optimizer = field(default_factory=Optimizer)
    batch_size: int = 32


@dataclass
class State:
    step: int = 0


def start(run: Path, *overrides: str) -> hyperstate.HyperState[Config, State]:
    return hyperstate.HyperState.load(
        Config, State, lambda c: State(), None, run, "step", list(overrides), edit_check_seconds=0
    )


def advance(hs: hyperstate.HyperState[Config, State]) -> None:
    hs.state.step += 1
    hs.step()


def test_edit_is_applied_at_the_next_step_logged_and_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hs = start(tmp_path)
    advance(hs)
    config = hs.config
    request = request_edit(tmp_path, ["optimizer.lr=0.01", "batch_size=64"])
    with caplog.at_level("INFO", logger="hyperstate"):
        advance(hs)
    assert hs.config is config  # edited in place
    assert config.optimizer.lr == 0.01 and config.batch_size == 64
    assert "live edit optimizer.lr: 0.1 -> 0.01" in caplog.text
    assert Path(request + ".applied").read_text() == (
        "optimizer.lr: 0.1 -> 0.01\nbatch_size: 32 -> 64\n"
    )
    assert "lr: 0.01," in (tmp_path / "step-000000000002" / "config.ron").read_text()
    advance(hs)  # handled once only
    assert config.optimizer.lr == 0.01


def test_invalid_edit_is_rejected_with_its_reason_and_the_run_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hs = start(tmp_path)
    request = request_edit(tmp_path, ["optimizer.lr=0.5", "optimizer.lrr=1"])
    with caplog.at_level("WARNING", logger="hyperstate"):
        advance(hs)
    assert hs.config.optimizer.lr == 0.1  # all or nothing
    reason = Path(request + ".rejected").read_text()
    assert "unknown field 'lrr' in Optimizer" in reason and "did you mean 'lr'?" in reason
    assert "rejected live edit" in caplog.text
    advance(hs)
    assert [c.number for c in CheckpointStore(str(tmp_path)).list()] == [1, 2]


def test_a_schedule_can_be_replaced_by_a_number_and_back(tmp_path: Path) -> None:
    hs = start(tmp_path, "optimizer.lr=step: 1.0@0 lin 0.0@10")
    advance(hs)
    assert hs.config.optimizer.lr == pytest.approx(0.9)
    request_edit(tmp_path, ["optimizer.lr=0.05"])
    advance(hs)
    advance(hs)
    assert hs.config.optimizer.lr == 0.05  # no schedule any more
    request_edit(tmp_path, ["optimizer.lr=step: 1.0@0 lin 0.0@10"])
    advance(hs)
    assert hs.config.optimizer.lr == pytest.approx(0.6)
    assert (
        'lr: "step: 1.0@0 lin 0.0@10",'
        in (tmp_path / "step-000000000004" / "config.ron").read_text()
    )


def test_hyperstate_set_command(tmp_path: Path) -> None:
    hs = start(tmp_path)
    advance(hs)  # a committed checkpoint, whose config.ron `set` checks the edit against
    result = subprocess.run(
        [HYPERSTATE, "set", str(tmp_path), "optimizer.momentum=0.5"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.startswith("requested: ")
    advance(hs)
    assert hs.config.optimizer.momentum == 0.5
