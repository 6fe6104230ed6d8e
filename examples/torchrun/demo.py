"""The demo: a 2-rank DDP job under torchrun, interrupted twice, resumed, and compared.

    python examples/torchrun/demo.py

1. An uninterrupted run of examples/torchrun/train.py, for reference.
2. The same run, SIGKILLed (torchrun and both ranks) between two periodic checkpoints:
   nothing can be saved; the same command resumes from the newest committed checkpoint
   and does the steps since then again.
3. The same run, with SIGTERM sent to rank 1 only, as a scheduler does before it takes a
   node away: every rank commits a checkpoint of the step reached and exits with status
   143; torchrun reports the ranks as failed and exits with status 1. The same command
   resumes from that very step.

Both resumed runs must end with the weights of the uninterrupted run, bit for bit. The
demo exits with status 0 only if every check passed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from hyperstate.storage import CheckpointStore

HERE = Path(__file__).resolve().parent
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
EVERY = 20  # train.py checkpoints every 20 steps
INTERRUPT_AT = 110  # between the checkpoints of steps 100 and 120
SIGTERM_STATUS = 128 + signal.SIGTERM  # 143: how a process that Preempted ended exits

checks: list[tuple[str, bool]] = []


def check(ok: bool, what: str) -> None:
    checks.append((what, ok))
    print(f"  [{'ok' if ok else 'FAILED'}] {what}")


def command(checkpoint_dir: Path) -> list[str]:
    # Rank 0 prints every 10 steps, so that the demo knows when to interrupt; it shows fewer.
    script = [str(HERE / "train.py"), "--checkpoint-dir", str(checkpoint_dir), "--log-every", "10"]
    return [TORCHRUN, "--standalone", "--nproc-per-node=2", *script]


def shown(line: str) -> bool:
    m = re.match(r"step +(\d+) ", line)
    return m is None or int(m[1]) % 50 == 0


class Job:
    """torchrun running train.py: rank 0's stdout read line by line, stderr kept in a file
    (hyperstate's log lines, and torchrun's report when a rank fails)."""

    def __init__(self, checkpoint_dir: Path, tmp: Path) -> None:
        self.tmp = tmp
        self.stderr_path = tmp / f"{checkpoint_dir.name}.stderr"
        args = command(checkpoint_dir)
        script = os.path.relpath(args[3])
        shell = ["torchrun", *args[1:3], script if not script.startswith("..") else args[3]]
        print(f"$ {self.short(' '.join([*shell, *args[4:]]))}")
        with open(self.stderr_path, "a") as stderr:
            self.proc = subprocess.Popen(
                args, stdout=subprocess.PIPE, stderr=stderr, text=True, env=ENV
            )
        self.lines: list[str] = []

    def short(self, text: str) -> str:
        return text.replace(str(self.tmp), "$TMP")

    def read_until(self, step: int) -> bool:
        """Show rank 0's lines until it reports ``step``; False if it ended first."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith(f"step {step:4d} "):
                print(f"{line.rstrip()}   <- here")
                return True
            if shown(line):
                print(line, end="")
        return False

    def finish(self, *logged: str) -> int:
        """Wait for the end; show hyperstate's log lines that contain one of ``logged``,
        then rank 0's lines."""
        assert self.proc.stdout is not None
        rest = [line.rstrip("\n") for line in self.proc.stdout]
        status = self.proc.wait()
        self.lines += rest
        for line in self.stderr().splitlines():
            if line.startswith("hyperstate: ") and any(p in line for p in logged):
                print(f"(log) {self.short(line)}")
        for line in rest:
            if shown(line):
                print(line)
        return status

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def found(self, pattern: str) -> int | None:
        """The number in the first of rank 0's lines that match ``pattern``."""
        for line in self.lines:
            m = re.match(pattern, line)
            if m:
                return int(m[1])
        return None

    def rank_pid(self, rank: int) -> int | None:
        """The process of ``rank``: the one torchrun started with RANK=<rank>."""
        for pid in descendants(self.proc.pid):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ:
                return pid
        return None


def descendants(pid: int) -> list[int]:
    """The processes started by ``pid`` (torchrun's ranks), from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def newest_committed(run: Path) -> int | None:
    """The newest committed checkpoint (after listing every checkpoint directory), if it
    verifies: every file against the sizes and checksums in its COMMITTED."""
    print(f"checkpoints in {run.name}/:")
    for entry in sorted(run.glob("step-*")):
        committed = (entry / "COMMITTED").exists()
        print(f"  {entry.name}  {'committed' if committed else 'partial: resume ignores it'}")
    store = CheckpointStore(str(run))
    latest = store.latest()
    if latest is None or [p for p in store.verify(latest) if p.fatal]:
        return None
    return latest.number


def resume(run: Path, tmp: Path, expected: str) -> int | None:
    """Run the same command again; check that it ends as the uninterrupted run did."""
    print("\nresumed with the same command:")
    job = Job(run, tmp)
    status = job.finish("resuming from")
    if status != 0:
        print(job.stderr()[-3000:], file=sys.stderr)
    check(status == 0, f"the resumed run ended normally (exit status {status})")
    final = job.lines[-1] if job.lines else "(no output)"
    check(final == expected, f"its final weights equal the uninterrupted run's: {final}")
    return job.found(r"resumed at step (\d+)")


def uninterrupted(tmp: Path) -> str:
    print("== 1. An uninterrupted run, for reference")
    job = Job(tmp / "clean", tmp)
    status = job.finish()
    if status != 0 or not job.lines:
        print(job.stderr()[-3000:], file=sys.stderr)
        raise SystemExit(f"the uninterrupted run failed (exit status {status})")
    return job.lines[-1]


def sigkill(tmp: Path, expected: str) -> None:
    print(f"\n== 2. SIGKILL: torchrun and both ranks killed at step {INTERRUPT_AT}, no warning")
    run = tmp / "killed"
    job = Job(run, tmp)
    if not job.read_until(INTERRUPT_AT):
        check(False, f"the job reached step {INTERRUPT_AT} (exit status {job.proc.wait()})")
        return
    for pid in [job.proc.pid, *descendants(job.proc.pid)]:
        os.kill(pid, signal.SIGKILL)
    print(f"SIGKILL sent to torchrun and its ranks (torchrun's exit status {job.proc.wait()})")
    newest = newest_committed(run)
    check(
        newest is not None and newest % EVERY == 0,
        f"checkpoint {newest}, the last periodic one (every {EVERY} steps), is whole",
    )
    resumed_at = resume(run, tmp, expected)
    check(
        resumed_at is not None and resumed_at == newest,
        f"it resumed at step {resumed_at}: the steps after it were done again",
    )


def sigterm(tmp: Path, expected: str) -> None:
    print(f"\n== 3. SIGTERM to rank 1 only, at step {INTERRUPT_AT}, as a scheduler sends it")
    run = tmp / "terminated"
    job = Job(run, tmp)
    rank1 = job.rank_pid(1) if job.read_until(INTERRUPT_AT) else None
    if rank1 is None:
        check(False, f"the job reached step {INTERRUPT_AT} (exit status {job.proc.wait()})")
        return
    os.kill(rank1, signal.SIGTERM)
    print(f"SIGTERM sent to rank 1 (pid {rank1})")
    status = job.finish("received")
    reached = job.found(r"stopped at step (\d+)")
    # torchrun counts a worker's non-zero exit as a failure: it stops the other workers,
    # prints a report (rank, exitcode, ... for each rank it saw end) and exits with 1. A
    # rank still shutting down when torchrun saw the first one end is ended by torchrun's
    # own SIGTERM (-15); both had left step() with the checkpoint committed.
    report = re.findall(r"rank\s*: (\d+) .*\n\s*exitcode\s*: (-?\d+)", job.stderr())
    ranks = ", ".join(f"rank {rank}: {code}" for rank, code in report)
    print(f"torchrun exited with status {status}; the exit status it reports: {ranks or 'none'}")
    codes = {int(code) for _, code in report}
    check(
        status != 0 and SIGTERM_STATUS in codes and codes <= {SIGTERM_STATUS, -signal.SIGTERM},
        f"the job stopped: the ranks exited with {SIGTERM_STATUS} (128 + SIGTERM), and "
        "torchrun with a non-zero status, as it does for any failed worker",
    )
    newest = newest_committed(run)
    check(
        reached is not None and newest == reached,
        f"checkpoint {newest}, of the very step the job reached ({reached}), is whole",
    )
    resumed_at = resume(run, tmp, expected)
    check(
        resumed_at is not None and resumed_at == newest,
        f"it resumed at step {resumed_at}: no step was done twice",
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        expected = uninterrupted(tmp)
        sigkill(tmp, expected)
        sigterm(tmp, expected)
    failed = [what for what, ok in checks if not ok]
    print()
    if failed:
        print(f"{len(failed)} of {len(checks)} checks FAILED:")
        for what in failed:
            print(f"  {what}")
        raise SystemExit(1)
    print(
        f"All {len(checks)} checks passed. A SIGKILL cost the steps since the last periodic "
        "checkpoint, a SIGTERM cost nothing, and both resumed runs ended bit for bit where "
        "the uninterrupted one did."
    )


if __name__ == "__main__":
    main()
