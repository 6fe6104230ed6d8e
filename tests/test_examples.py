"""The examples' preemption story: SIGTERM mid-run commits the step reached, the process
ends with status 143, and the same command resumes there and ends bit for bit where an
uninterrupted run ends (examples/stateful/train.py in one process, examples/torchrun/
train.py under a real torchrun with the signal sent to one rank only).

The interrupted runs are started with a step count they never reach, and the signal is
sent once they report step 20; the resumed and the uninterrupted runs then stop at the
same step a little after the one the signal stopped, so that no race decides the result.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from hyperstate.storage import CheckpointStore

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 180  # seconds: only a guard against a hang, never a measure
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
NEVER = "steps=1000000000"
SIGTERM_STATUS = 128 + signal.SIGTERM


class Running:
    """A started command: its stdout read line by line, its stderr in a file; the whole
    process group killed if it outlives TIMEOUT."""

    def __init__(self, args: list[str], stderr: Path) -> None:
        self.stderr_path = stderr
        with open(stderr, "w") as err:
            self.proc = subprocess.Popen(
                args, stdout=subprocess.PIPE, stderr=err, text=True, env=ENV, start_new_session=True
            )
        self._guard = threading.Timer(TIMEOUT, os.killpg, (self.proc.pid, signal.SIGKILL))
        self._guard.start()
        self.lines: list[str] = []

    def wait_for(self, prefix: str) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith(prefix):
                return
        raise AssertionError(f"no line {prefix!r} (exit {self.proc.wait()}):\n{self.stderr}")

    def finish(self) -> int:
        assert self.proc.stdout is not None
        self.lines += [line.rstrip("\n") for line in self.proc.stdout]
        self.proc.stdout.close()
        status = self.proc.wait()
        self._guard.cancel()
        return status

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def number(self, pattern: str) -> int:
        """The number of the first line that matches ``pattern``."""
        for line in self.lines:
            m = re.match(pattern, line)
            if m:
                return int(m[1])
        raise AssertionError(f"no line {pattern!r} in {self.lines}\n{self.stderr}")


def finish(args: list[str], stderr: Path) -> Running:
    run = Running(args, stderr)
    assert run.finish() == 0, run.stderr[-4000:]
    return run


def child_with_rank(parent: int, rank: int) -> int:
    """The process that ``parent`` (torchrun) started for ``rank`` (Linux /proc)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and f"RANK={rank}".encode() in environ:
            return int(entry)
    raise AssertionError(f"no process of rank {rank} under pid {parent}")


def check_stopped_and_resumed(
    interrupted: Running, run: Path, resume: list[str], clean: list[str], tmp: Path
) -> None:
    """The stopped run committed the step it reached; resumed, it ends as a clean run."""
    reached = interrupted.number(r"stopped at step (\d+): checkpoint \1 committed")
    store = CheckpointStore(str(run))
    latest = store.latest()
    assert latest is not None and latest.number == reached
    assert store.verify(latest) == [] and store.uncommitted() == []
    assert "SIGTERM received: committing checkpoint" in interrupted.stderr

    until = f"steps={reached + 7}"
    resumed = finish([*resume, until], tmp / "resumed.err")
    assert resumed.number(r"resumed at step (\d+)") == reached
    expected = finish([*clean, until], tmp / "clean.err")
    assert resumed.lines[-1] == expected.lines[-1]
    assert expected.lines[-1].startswith(f"done: step {reached + 7}, weights ")


def test_stateful_example_stops_on_sigterm_and_resumes_bit_exact(tmp_path: Path) -> None:
    train = [sys.executable, str(ROOT / "examples" / "stateful" / "train.py")]
    common = ["batch_size=16", "--log-every", "10"]
    run = tmp_path / "run"
    command = [*train, "--checkpoint-dir", str(run), *common]

    interrupted = Running([*command, NEVER], tmp_path / "interrupted.err")
    interrupted.wait_for("step   20 ")
    interrupted.proc.send_signal(signal.SIGTERM)
    assert interrupted.finish() == SIGTERM_STATUS, interrupted.stderr[-4000:]
    assert "Traceback" not in interrupted.stderr
    clean = [*train, "--checkpoint-dir", str(tmp_path / "clean"), *common]
    check_stopped_and_resumed(interrupted, run, command, clean, tmp_path)


def test_torchrun_example_stops_on_sigterm_to_one_rank_and_resumes_bit_exact(
    tmp_path: Path,
) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None
    script = str(ROOT / "examples" / "torchrun" / "train.py")
    launch = [torchrun, "--standalone", "--nproc-per-node", "2", script, "--log-every", "10"]
    run = tmp_path / "run"
    command = [*launch, "--checkpoint-dir", str(run)]

    interrupted = Running([*command, NEVER], tmp_path / "interrupted.err")
    interrupted.wait_for("step   20 ")
    os.kill(child_with_rank(interrupted.proc.pid, 1), signal.SIGTERM)
    # Every rank saves and exits with 143; torchrun takes that for a failed worker, stops
    # the others, reports the exit status of each rank it saw end, and exits with 1. A
    # rank still shutting down when torchrun saw the first one end gets torchrun's own
    # SIGTERM (-15), with the checkpoint committed before either rank left step().
    assert interrupted.finish() == 1, interrupted.stderr[-4000:]
    reported = set(re.findall(r"exitcode\s*: (-?\d+) \(pid", interrupted.stderr))
    assert str(SIGTERM_STATUS) in reported, interrupted.stderr[-4000:]
    assert reported <= {str(SIGTERM_STATUS), str(-signal.SIGTERM)}, interrupted.stderr[-4000:]
    clean = [*launch, "--checkpoint-dir", str(tmp_path / "clean")]
    check_stopped_and_resumed(interrupted, run, command, clean, tmp_path)


def test_torchrun_example_answers_help_without_torchrun() -> None:
    script = ROOT / "examples" / "torchrun" / "train.py"
    out = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, env=ENV
    )
    assert out.returncode == 0, out.stderr
    assert "--log-every N" in out.stdout and "--checkpoint-dir URL" in out.stdout
    assert "optimizer.lr: float" in out.stdout
