"""Async saves whose copy to staging runs in the background (``async_staging=True``).

The copy of the tensors runs in the save thread; optimizer steps (and forwards of
training modules with buffers) wait for it through global hooks; any other in-place
change in that window fails the save instead of committing a mix of two steps.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

import hyperstate
from hyperstate.storage import CheckpointStore


@dataclass
class Config:
    lr: float = 0.1


@dataclass
class State:
    step: int = 0
    model: torch.nn.Module = field(default_factory=lambda: torch.nn.Linear(8, 8))
    optimizer: torch.optim.Optimizer | None = None
    extra: torch.Tensor = field(default_factory=lambda: torch.zeros(4))


def initial_state(config: Config) -> State:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8))
    return State(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=config.lr))


def manager(run: Path) -> hyperstate.StateManager[Config, State]:
    return hyperstate.StateManager(
        Config, State, initial_state, None, run, "step", async_save=True, async_staging=True
    )


def train_step(state: State, generator: torch.Generator) -> None:
    assert state.optimizer is not None
    state.optimizer.zero_grad()
    state.model(torch.randn(16, 8, generator=generator)).square().mean().backward()
    state.optimizer.step()
    state.step += 1


def snapshot(state: State) -> dict[str, torch.Tensor]:
    assert state.optimizer is not None
    out = {f"model.{k}": v.clone() for k, v in state.model.state_dict().items()}
    for i, s in state.optimizer.state_dict()["state"].items():
        out.update({f"opt.{i}.{k}": v.clone() for k, v in s.items()})
    return out


def test_each_checkpoint_holds_exactly_its_step(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(1)
    expected = {}
    with manager(tmp_path) as hs:
        for _ in range(6):
            train_step(hs.state, generator)
            expected[hs.state.step] = snapshot(hs.state)
            hs.step()  # the next train_step's optimizer.step() waits for the copy
    for number, tensors in expected.items():
        loaded = hyperstate.StateManager(
            Config, State, initial_state, tmp_path / f"step-{number:012d}"
        )
        assert snapshot(loaded.state).keys() == tensors.keys()
        for name, value in snapshot(loaded.state).items():
            assert torch.equal(value, tensors[name]), (number, name)


def test_an_optimizer_step_waits_for_the_copy(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(1)
    hs = manager(tmp_path)
    train_step(hs.state, generator)
    before = snapshot(hs.state)
    gate = threading.Event()
    hs._save_thread().submit(gate.wait)  # the save thread starts the copy after the gate
    hs.step()  # returns at once: the copy has not begun
    stepped = threading.Thread(target=train_step, args=(hs.state, generator))
    stepped.start()
    stepped.join(0.5)
    assert stepped.is_alive(), "optimizer.step() ran while the state was being copied"
    gate.set()
    stepped.join(60)
    assert not stepped.is_alive()
    hs.close()
    loaded = hyperstate.StateManager(Config, State, initial_state, tmp_path / "step-000000000001")
    for name, value in snapshot(loaded.state).items():
        assert torch.equal(value, before[name]), name
    assert not torch.equal(hs.state.model[0].weight, before["model.0.weight"])


def test_a_write_around_the_hooks_fails_the_save_and_commits_nothing(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(1)
    hs = manager(tmp_path)
    train_step(hs.state, generator)
    hs.checkpoint()
    hs.wait()
    train_step(hs.state, generator)
    gate = threading.Event()
    hs._save_thread().submit(gate.wait)
    hs.checkpoint()
    hs.state.extra.add_(1.0)  # in place, outside any optimizer step or forward
    gate.set()
    with pytest.raises(hyperstate.HyperstateError, match=r"changed in place \(first: extra\)"):
        hs.wait()
    assert [i.number for i in CheckpointStore(str(tmp_path)).list()] == [1]
    hs.close()


def test_wait_staged_removes_the_hooks(tmp_path: Path) -> None:
    from torch.nn.modules import module
    from torch.optim import optimizer

    hooks = (len(optimizer._global_optimizer_pre_hooks), len(module._global_forward_pre_hooks))
    hs = manager(tmp_path)
    train_step(hs.state, torch.Generator().manual_seed(1))
    hs.checkpoint()
    hs.wait_staged()
    hs.state.extra.add_(1.0)  # after the copy: does not touch the save
    assert (
        len(optimizer._global_optimizer_pre_hooks),
        len(module._global_forward_pre_hooks),
    ) == hooks
    assert hs.wait() is not None
    hs.close()


def test_bad_arguments_are_one_config_error_naming_each(tmp_path: Path) -> None:
    with pytest.raises(hyperstate.ConfigError) as e:
        hyperstate.StateManager(
            Config,
            State,
            initial_state,
            None,
            tmp_path,
            async_staging=True,
            per_rank="sometimes",  # type: ignore[arg-type]
        )
    text = str(e.value)
    assert text.startswith("StateManager arguments: 2 problems:")
    assert "expected async_save=True with it" in text and "at async_staging" in text
    assert "expected 'error' or 'reinit', found 'sometimes' at per_rank" in text
    assert list(tmp_path.iterdir()) == []  # nothing written
