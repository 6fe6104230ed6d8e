"""The end of a run: the last step is saved on a normal end and on SIGTERM/SIGINT, never
after an exception; signal handlers are chained and put back; run events are logged.

Preemption is tested on real processes: a training script in a child process (one, or
two ranks of a gloo job started the way torchrun starts them) prints each step it
reaches; the test sends it a signal, waits, and reads the run directory.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
import torch
from dist_jobs.launch import free_port

import hyperstate
from hyperstate.storage import CheckpointStore

TIMEOUT = 120  # seconds: only a guard against a hang, never a measure

# A training loop in its own process. argv: RUN_DIR [RANKS] [GATE]. It prints
# "REACHED n" before each step() and "FINALLY" from its finally block. With GATE, a save
# made while GATE.armed exists prints "SAVING" and waits in state_dict() for GATE.go, and
# a SIGINT handler of the script's own prints "MINE <signum>".
TRAIN = """
import os, signal, sys, time
from dataclasses import dataclass, field

import torch

import hyperstate

RUN, RANKS = sys.argv[1], int(sys.argv[2])
GATE = sys.argv[3] if len(sys.argv) > 3 else None
# The runner may start this process with SIGINT ignored (as a background job); a person
# starting a script has the interpreter's default, which this restores.
signal.signal(signal.SIGINT, signal.default_int_handler)
if GATE:
    signal.signal(signal.SIGINT, lambda s, f: print("MINE", s, flush=True))


class Gate:
    def state_dict(self):
        if GATE and os.path.exists(GATE + ".armed"):
            print("SAVING", flush=True)
            deadline = time.monotonic() + 100
            while not os.path.exists(GATE + ".go") and time.monotonic() < deadline:
                time.sleep(0.01)
            print("GATE OPEN", flush=True)
        return {}

    def load_state_dict(self, state):
        pass


@dataclass
class Config:
    steps: int = 10**6


@dataclass
class State:
    step: int = 0
    weights: torch.Tensor = field(default_factory=lambda: torch.zeros(256))
    gate: Gate = field(default_factory=Gate)


if RANKS > 1:
    import torch.distributed as dist

    dist.init_process_group("gloo")
every = 10**9 if GATE else 50
policy = hyperstate.CheckpointPolicy(every_steps=every, keep_last=3)
try:
    with hyperstate.StateManager(
        Config, State, lambda c: State(), None, RUN, "step", policy=policy
    ) as hs:
        while hs.state.step < hs.config.steps:
            hs.state.weights += 1.0
            hs.state.step += 1
            print("REACHED", hs.state.step, flush=True)
            hs.step()
finally:
    print("FINALLY", flush=True)
    if RANKS > 1:
        dist.destroy_process_group()
"""


class Child:
    """A process whose output lines are read as they come (so that it never blocks on a
    full pipe), with a wait for a given line."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._seen: set[str] = set()
        self._changed = threading.Condition()
        self._eof = 0
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _read(self, stream: IO[str], into: list[str]) -> None:
        for line in stream:
            with self._changed:
                into.append(line.rstrip("\n"))
                self._seen.add(into[-1])
                self._changed.notify_all()
        with self._changed:
            self._eof += 1
            self._changed.notify_all()

    def wait_for(self, line: str) -> None:
        with self._changed:
            self._changed.wait_for(lambda: line in self._seen or self._eof == 2, TIMEOUT)
        assert line in self._seen, f"no {line!r} (exit {self.proc.poll()}):\n{self.stderr}"

    def finish(self) -> int:
        try:
            self.proc.wait(TIMEOUT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        for t in self._readers:
            t.join(TIMEOUT)
        for stream in (self.proc.stdout, self.proc.stderr):
            assert stream is not None
            stream.close()
        return self.proc.returncode

    @property
    def stderr(self) -> str:
        return "\n".join(self.err)

    @property
    def last_step(self) -> int:
        return max(int(line.split()[1]) for line in self.out if line.startswith("REACHED "))


def start_job(script: Path, run: Path, world: int, *args: str) -> list[Child]:
    """``world`` ranks of ``script`` with the environment torchrun sets (env:// on
    127.0.0.1), as tests/dist_jobs/launch.py starts them, or one plain process."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    if world == 1:
        return [Child([sys.executable, str(script), str(run), "1", *args], env)]
    for _ in range(3):  # the free port may be taken before rank 0 binds it
        env |= {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world),
        }
        ranks = [
            Child(
                [sys.executable, str(script), str(run), str(world), *args],
                {**env, "RANK": str(r), "LOCAL_RANK": str(r), "GROUP_RANK": "0"},
            )
            for r in range(world)
        ]
        try:
            ranks[-1].wait_for("REACHED 1")
            return ranks
        except AssertionError:
            for r in ranks:
                r.finish()
            if not any("ddress already in use" in r.stderr for r in ranks):
                raise
    raise AssertionError("no free rendezvous port in 3 tries")


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "train.py"
    path.write_text(TRAIN)
    return path


def assert_whole_and_newest(run: Path, step: int) -> None:
    """The newest committed checkpoint holds ``step`` and the state of that step, every
    file matches COMMITTED, and no save was left half done."""
    store = CheckpointStore(str(run))
    latest = store.latest()
    assert latest is not None and latest.number == step
    assert store.verify(step) == []
    assert store.uncommitted() == []
    weights = hyperstate.load(Weights, f"{latest.path}/state.ron", ignore_extra_fields=True).weights
    assert torch.equal(weights, torch.full((256,), float(step)))


@dataclass
class Weights:
    step: int
    weights: torch.Tensor


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_signal_commits_the_last_step_and_exits_128_plus_signal(
    tmp_path: Path, script: Path, sig: signal.Signals
) -> None:
    run = tmp_path / "run"
    [child] = start_job(script, run, 1)
    child.wait_for("REACHED 5")
    child.proc.send_signal(sig)
    assert child.finish() == 128 + sig, child.stderr
    assert "FINALLY" in child.out  # the script's finally block ran
    assert "Traceback" not in child.stderr
    last = child.last_step
    assert f"{sig.name} received: committing checkpoint {last}" in child.stderr
    assert_whole_and_newest(run, last)


def test_second_signal_during_the_save_waits_for_it(tmp_path: Path, script: Path) -> None:
    """SIGTERM starts the save; a SIGINT while it runs neither interrupts it nor runs the
    script's own SIGINT handler before the save is committed."""
    run, gate = tmp_path / "run", str(tmp_path / "gate")
    [child] = start_job(script, run, 1, gate)
    child.wait_for("REACHED 5")
    Path(gate + ".armed").touch()  # the next save (the one SIGTERM asks for) waits
    child.proc.send_signal(signal.SIGTERM)
    child.wait_for("SAVING")
    child.proc.send_signal(signal.SIGINT)
    Path(gate + ".go").touch()
    assert child.finish() == 128 + signal.SIGTERM, child.stderr
    assert "Traceback" not in child.stderr  # no KeyboardInterrupt, no broken save
    out = child.out
    assert out.index("SAVING") < out.index("GATE OPEN") < out.index(f"MINE {signal.SIGINT}")
    assert out[-1] == "FINALLY"
    assert_whole_and_newest(run, child.last_step)


def test_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path: Path, script: Path) -> None:
    run = tmp_path / "run"
    ranks = start_job(script, run, 2)
    ranks[1].wait_for("REACHED 5")
    ranks[1].proc.send_signal(signal.SIGTERM)
    codes = [r.finish() for r in ranks]
    assert codes == [128 + signal.SIGTERM] * 2, "\n".join(r.stderr for r in ranks)
    assert ranks[0].last_step == ranks[1].last_step
    assert all("FINALLY" in r.out for r in ranks)
    assert_whole_and_newest(run, ranks[0].last_step)
    # Rank 0 logs the run's events; rank 1 (which got the signal) does not.
    assert "SIGTERM received" in ranks[0].stderr
    assert "SIGTERM received" not in ranks[1].stderr


# -- in this process -----------------------------------------------------------------------


@dataclass
class Config:
    steps: int = 310


@dataclass
class State:
    step: int = 0
    weights: torch.Tensor = field(default_factory=lambda: torch.zeros(4))


def fresh(config: Config) -> State:
    return State()


def train(hs: hyperstate.StateManager[Config, State], steps: int) -> None:
    for _ in range(steps):
        hs.state.weights += 1.0
        hs.state.step += 1
        hs.step()


def numbers(run: Path) -> list[int]:
    return [i.number for i in CheckpointStore(str(run)).list()]


@pytest.fixture
def sigint_default() -> Iterator[None]:
    """SIGINT as a script starts with it (a test runner's worker may ignore it)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def manager(
    run: Path | None, every: int = 20, **kwargs: Any
) -> hyperstate.StateManager[Config, State]:
    policy = hyperstate.CheckpointPolicy(every_steps=every)
    return hyperstate.StateManager(Config, State, fresh, None, run, "step", policy=policy, **kwargs)


def test_normal_end_saves_the_last_step(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with manager(run) as hs:
        train(hs, hs.config.steps)
    assert numbers(run)[-2:] == [300, 310]  # 310 is no multiple of 20: saved at the end
    assert_weights(run, 310)
    # Resumed and closed with no step: nothing new to save (and no error).
    with manager(run) as hs:
        assert hs.state.step == 310
    assert numbers(run)[-1] == 310
    # Ending on a step the policy saved already saves nothing more.
    with manager(run) as hs:
        train(hs, 10)
    assert numbers(run)[-2:] == [310, 320]


def assert_weights(run: Path, step: int) -> None:
    latest = CheckpointStore(str(run)).latest()
    assert latest is not None and latest.number == step
    state = hyperstate.load(Weights, f"{latest.path}/state.ron", ignore_extra_fields=True)
    assert torch.equal(state.weights, torch.full((4,), float(step)))


def test_close_saves_and_save_on_close_false_does_not(tmp_path: Path) -> None:
    hs = manager(tmp_path / "a", async_save=True)
    train(hs, 25)
    hs.close()
    assert numbers(tmp_path / "a") == [20, 25]
    hs = manager(tmp_path / "b", save_on_close=False)
    train(hs, 25)
    hs.close()
    assert numbers(tmp_path / "b") == [20]
    with manager(None) as hs:  # no checkpoint_dir: nowhere to save, and no error
        train(hs, 5)


def test_no_save_after_an_exception_and_a_warning_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="boom"), manager(run) as hs:
        train(hs, 25)
        raise ValueError("boom")
    assert numbers(run) == [20]
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.name == "hyperstate"
    message = warning.getMessage()
    assert "not committing a checkpoint of the last step" in message
    assert "ValueError: boom" in message and "half-updated" in message


def test_handlers_are_chained_and_put_back(tmp_path: Path) -> None:
    got: list[int] = []

    def mine(signum: int, frame: object) -> None:
        got.append(signum)

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        hs = manager(tmp_path, every=1000)
        assert signal.getsignal(signal.SIGTERM) is not mine
        train(hs, 3)
        signal.raise_signal(signal.SIGTERM)
        assert got == [signal.SIGTERM]  # the script's handler ran too
        assert numbers(tmp_path) == []  # the handler only noted it
        hs.state.step += 1
        with pytest.raises(hyperstate.Preempted) as caught:
            hs.step()
        e = caught.value
        assert isinstance(e, hyperstate.HyperstateError)
        assert (e.signum, e.code, e.number) == (signal.SIGTERM, 143, 4)
        assert "stopped by SIGTERM (signal 15) after committing checkpoint 4" in str(e)
        assert numbers(tmp_path) == [4]
        hs.close()
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_sigint_does_not_raise_keyboard_interrupt_while_open(
    tmp_path: Path, sigint_default: None
) -> None:
    with pytest.raises(hyperstate.Preempted) as caught, manager(tmp_path, every=1000) as hs:
        train(hs, 2)
        signal.raise_signal(signal.SIGINT)  # no KeyboardInterrupt here
        train(hs, 1)
    assert (caught.value.signum, caught.value.code) == (signal.SIGINT, 130)
    assert numbers(tmp_path) == [3]  # saved by step(), not again by __exit__
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)


def test_preempted_without_a_checkpoint_dir_and_pickled(sigint_default: None) -> None:
    with pytest.raises(hyperstate.Preempted) as caught, manager(None) as hs:
        train(hs, 1)
        signal.raise_signal(signal.SIGINT)
        train(hs, 1)
    e = caught.value
    assert (e.number, e.path) == (None, None)
    assert str(e) == (
        "stopped by SIGINT (signal 2) without a checkpoint (no checkpoint_dir, or no step "
        "taken yet); exit status 130"
    )
    again = pickle.loads(pickle.dumps(e))
    assert (type(again), str(again), again.code) == (hyperstate.Preempted, str(e), 130)


def test_handle_signals_false_and_managers_closed_out_of_order(
    tmp_path: Path, sigint_default: None
) -> None:
    hs = manager(tmp_path / "off", handle_signals=False)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    hs.close()
    first, second = manager(tmp_path / "a"), manager(tmp_path / "b")
    first.close()  # the second's handler stays; the first's only passes signals on
    second.close()  # puts back what was there before the first: no closed handler
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)


def test_run_events_are_logged_and_nothing_is_printed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO, logger="hyperstate")
    run = tmp_path / "run"
    policy = hyperstate.CheckpointPolicy(every_steps=2, keep_last=1)
    with hyperstate.StateManager(Config, State, fresh, None, run, "step", policy=policy) as hs:
        train(hs, 4)
    with hyperstate.StateManager(
        Config, State, fresh, None, run, "step", ["steps=7"], policy=policy, async_save=True
    ) as hs:
        train(hs, 1)
    lines = [r.getMessage() for r in caplog.records if r.name == "hyperstate"]
    assert lines[0] == f"starting a fresh run with no overrides; checkpoints go to {run}"
    saved = [line for line in lines if line.startswith("saved checkpoint")]
    assert [line.split()[2] for line in saved] == ["2", "4", "5"]
    five = CheckpointStore(str(run)).get(5)
    assert five is not None
    size = sum(e.size for e in five.manifest.files.values())
    assert saved[2].startswith(f"saved checkpoint 5 ({size} bytes) to {run}/step-000000000005 in ")
    assert "of which checkpoint() blocked training for" in saved[2]  # async
    assert "blocked" not in saved[0]
    assert any(line.startswith("pruned checkpoint(s) 2 of ") for line in lines)
    resumed = f"resuming from checkpoint 4 at {run}/step-000000000004 with overrides ['steps=7']"
    assert any(line.startswith(resumed) for line in lines)
    assert capsys.readouterr().out == ""


def test_managers_dropped_out_of_order_leave_no_dead_handler(tmp_path: Path) -> None:
    # Two managers never closed, dropped first-opened first: the handler put back must be
    # the default, not the first manager's closed one, or a later manager's SIGTERM
    # would kill the process instead of raising Preempted.
    script = tmp_path / "drop.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import gc, signal
            from dataclasses import dataclass
            import hyperstate

            @dataclass
            class C:
                x: int = 0

            @dataclass
            class S:
                step: int = 0

            def open_(name):
                return hyperstate.HyperState.load(
                    C, S, lambda c: S(), None, {str(tmp_path)!r} + "/" + name, "step"
                )

            m1, m2 = open_("a"), open_("b")
            del m1; gc.collect()
            del m2; gc.collect()
            print(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
            with open_("c") as hs:
                hs.state.step += 1
                signal.raise_signal(signal.SIGTERM)
                try:
                    hs.step()
                except hyperstate.Preempted as e:
                    print("preempted", e.number)
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "preempted", "1"]
