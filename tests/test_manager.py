"""HyperState / StateManager: checkpoint, resume, retention, schedules, crashes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import pytest
import torch
from fsspec.implementations.memory import MemoryFileSystem

import hyperstate
from hyperstate.storage import CheckpointStore, StorageError

ROOT = Path(__file__).resolve().parent.parent
TRAIN = [sys.executable, str(ROOT / "examples" / "stateful" / "train.py")]


@dataclass
class Config:
    lr: float = 0.1
    steps: int = 10
    name: str = "run"


@dataclass
class Eval:
    loss: float = 0.0


@dataclass
class State:
    step: int = 0
    weights: torch.Tensor = field(default_factory=lambda: torch.zeros(4))
    eval: Eval = field(default_factory=Eval)


def fresh(config: Config) -> State:
    return State()


def run_steps(hs: hyperstate.HyperState[Config, State], n: int, wait: bool = True) -> None:
    for _ in range(n):
        hs.state.step += 1
        hs.state.weights += hs.config.lr
        hs.state.eval.loss = 1.0 / hs.state.step
        hs.step()
    if wait:
        hs.wait()  # old checkpoints are pruned in the background after a save


def test_checkpoint_and_resume_newest(tmp_path: Path) -> None:
    hs = hyperstate.HyperState.load(Config, State, fresh, None, tmp_path, "step")
    run_steps(hs, 5)
    assert [i.number for i in CheckpointStore(str(tmp_path)).list()] == [1, 2, 3, 4, 5]
    again = hyperstate.HyperState.load(Config, State, fresh, None, tmp_path, "step")
    assert again.resumed_from is not None and again.resumed_from.number == 5
    assert again.state.step == 5 and torch.equal(again.state.weights, torch.full((4,), 0.5))


def test_overrides_at_resume_apply_and_are_recorded(tmp_path: Path) -> None:
    hs = hyperstate.HyperState.load(Config, State, fresh, None, tmp_path, "step")
    run_steps(hs, 2)
    resumed = hyperstate.HyperState.load(
        Config, State, fresh, None, tmp_path, "step", overrides=["lr=0.5"]
    )
    assert resumed.config.lr == 0.5 and resumed.state.step == 2
    run_steps(resumed, 1)
    assert "lr: 0.5," in (tmp_path / "step-000000000003" / "config.ron").read_text()


def test_policy_every_n_steps_and_retention(tmp_path: Path) -> None:
    policy = hyperstate.CheckpointPolicy(every_steps=2, keep_last=2, keep_every=4)
    hs = hyperstate.HyperState.load(Config, State, fresh, None, tmp_path, "step", policy=policy)
    run_steps(hs, 10)
    assert [i.number for i in CheckpointStore(str(tmp_path)).list()] == [4, 8, 10]


def test_keep_best_by_a_state_field(tmp_path: Path) -> None:
    policy = hyperstate.CheckpointPolicy(keep_best=1, best_field="eval.loss", keep_last=1)
    hs = hyperstate.HyperState.load(Config, State, fresh, None, tmp_path, "step", policy=policy)
    run_steps(hs, 3)
    hs.state.step += 1
    hs.state.eval.loss = 0.01  # the best so far
    hs.step()
    run_steps(hs, 2)
    assert [i.number for i in CheckpointStore(str(tmp_path)).list()] == [4, 6]


def test_path_may_be_a_checkpoint_directory(tmp_path: Path) -> None:
    hs = hyperstate.HyperState.load(Config, State, fresh, None, tmp_path / "ckpts", "step")
    run_steps(hs, 3)
    one = hyperstate.HyperState.load(Config, State, fresh, tmp_path / "ckpts" / "step-000000000002")
    assert one.state.step == 2


def test_schedules_follow_the_state_and_checkpoints_keep_their_text(tmp_path: Path) -> None:
    hs = hyperstate.HyperState.load(
        Config, State, fresh, None, tmp_path, "step", overrides=["lr=step: 1.0@0 lin 0.0@10"]
    )
    assert hs.config.lr == 1.0
    run_steps(hs, 4)
    assert hs.config.lr == pytest.approx(0.6)
    text = (tmp_path / "step-000000000004" / "config.ron").read_text()
    assert 'lr: "step: 1.0@0 lin 0.0@10",' in text


def test_unknown_schedule_field_fails_at_load(tmp_path: Path) -> None:
    with pytest.raises(hyperstate.ConfigError, match="follows 'epoch'"):
        hyperstate.HyperState.load(
            Config, State, fresh, None, tmp_path, "step", overrides=["lr=epoch: 1@0 lin 0@5"]
        )


def test_failed_save_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    hs = hyperstate.HyperState.load(Config, State, fresh, None, tmp_path, "step")
    run_steps(hs, 1)
    hs.state.step = 2
    hs.state.weights = "not a tensor"  # type: ignore[assignment]
    with pytest.raises(hyperstate.ConfigError):
        hs.checkpoint()
    store = CheckpointStore(str(tmp_path))
    assert [i.number for i in store.list()] == [1] and store.uncommitted() == []
    assert store.verify(1) == []


def test_memory_fsspec_checkpoint_dir() -> None:
    url = f"memory://manager-{os.getpid()}-{time.monotonic_ns()}"
    hs = hyperstate.HyperState.load(Config, State, fresh, None, url, "step")
    run_steps(hs, 3)
    again = hyperstate.HyperState.load(Config, State, fresh, None, url, "step")
    assert again.state.step == 3


def test_killed_training_resumes_bit_exact(tmp_path: Path) -> None:
    """The stateful example, SIGKILLed at random moments, ends as an uninterrupted run."""
    common = ["steps=120", "batch_size=16"]  # checkpoints every 20 steps

    def finish(checkpoint_dir: Path) -> str:
        out = subprocess.run(
            [*TRAIN, "--checkpoint-dir", str(checkpoint_dir), *common],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return out.strip().splitlines()[-1]

    expected = finish(tmp_path / "clean")
    assert expected.startswith("done: step 120, weights ")
    rng = random.Random(0)
    killed = tmp_path / "killed"
    for _ in range(4):
        child = subprocess.Popen(
            [*TRAIN, "--checkpoint-dir", str(killed), *common],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(1.0, 2.5))  # import time included: some kills land early
        child.send_signal(signal.SIGKILL)
        child.wait()
        store = CheckpointStore(str(killed))
        latest = store.latest()
        if latest is not None:
            assert [p for p in store.verify(latest) if p.fatal] == []
    assert finish(killed) == expected


class FailingFS(MemoryFileSystem):  # type: ignore[misc]
    """Real in-memory storage whose writes of chosen files fail, as a full disk would."""

    protocol = "failingmem"
    fail_suffix: str | None = None

    def pipe_file(self, path: str, value: bytes, *args: object, **kwargs: object) -> None:
        if self.fail_suffix and str(path).endswith(self.fail_suffix):
            raise PermissionError(f"injected: cannot write {path}")
        super().pipe_file(path, value, *args, **kwargs)


fsspec.register_implementation("failingmem", FailingFS, clobber=True)


def test_async_save_returns_before_writing_and_commits_in_the_background(tmp_path: Path) -> None:
    with hyperstate.HyperState.load(
        Config, State, fresh, None, tmp_path, "step", async_save=True
    ) as hs:
        run_steps(hs, 3)
        # The staged copy is what gets written, not the tensor as it is now.
        hs.state.weights += 100.0
    store = CheckpointStore(str(tmp_path))
    assert [i.number for i in store.list()] == [1, 2, 3]
    restored = hyperstate.HyperState.load(Config, State, fresh, None, tmp_path, "step")
    assert torch.allclose(restored.state.weights, torch.full((4,), 0.3))


def test_async_save_error_is_raised_at_the_next_call_never_lost() -> None:
    url = f"failingmem://async-{time.monotonic_ns()}"
    hs = hyperstate.HyperState.load(Config, State, fresh, None, url, "step", async_save=True)
    run_steps(hs, 1)
    hs.wait()
    FailingFS.fail_suffix = "state.ron"
    try:
        run_steps(hs, 1, wait=False)  # submitted; fails in the background
        with pytest.raises(StorageError, match="injected: cannot write"):
            run_steps(hs, 1, wait=False)
        hs.close()
    finally:
        FailingFS.fail_suffix = None
    store = CheckpointStore(url)
    assert [i.number for i in store.list()] == [1]


@pytest.mark.parametrize("async_staging", [False, True])
def test_staging_budget_falls_back_to_a_synchronous_write(
    tmp_path: Path, async_staging: bool
) -> None:
    with hyperstate.HyperState.load(
        Config,
        State,
        fresh,
        None,
        tmp_path,
        "step",
        async_save=True,
        max_staging_bytes=8,
        async_staging=async_staging,
    ) as hs:
        run_steps(hs, 1)
        assert hs._inflight is None  # over budget: written before step() returned
    assert CheckpointStore(str(tmp_path)).latest() is not None


def test_policy_every_seconds(tmp_path: Path) -> None:
    policy = hyperstate.CheckpointPolicy(every_seconds=0.2)
    hs = hyperstate.HyperState.load(Config, State, fresh, None, tmp_path, "step", policy=policy)
    run_steps(hs, 3)  # well within 0.2 s: nothing yet
    assert CheckpointStore(str(tmp_path)).list() == []
    time.sleep(0.25)
    run_steps(hs, 1)
    assert [i.number for i in CheckpointStore(str(tmp_path)).list()] == [4]
