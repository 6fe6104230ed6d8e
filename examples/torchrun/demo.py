"""The demo: a 2-rank DDP job under torchrun, SIGKILLed mid-run, resumed, and compared.

python examples/torchrun/demo.py
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def command(checkpoint_dir: str, ranks: int = 2) -> list[str]:
    return [
        TORCHRUN,
        "--standalone",
        f"--nproc-per-node={ranks}",
        str(HERE / "train.py"),
        "--checkpoint-dir",
        checkpoint_dir,
    ]


def run(checkpoint_dir: str, ranks: int = 2) -> str:
    out = subprocess.run(
        command(checkpoint_dir, ranks), capture_output=True, text=True, check=True, env=ENV
    ).stdout
    print(out, end="")
    return out.strip().splitlines()[-1]


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


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        print("== an uninterrupted run: torchrun --nproc-per-node=2")
        expected = run(os.path.join(tmp, "clean"))

        print("\n== the same run, every process SIGKILLed after step 100")
        killed = os.path.join(tmp, "killed")
        job = subprocess.Popen(command(killed), stdout=subprocess.PIPE, env=ENV)
        assert job.stdout is not None
        for _ in range(2):  # steps 50 and 100
            print(job.stdout.readline().decode(), end="")
        for pid in [job.pid, *descendants(job.pid)]:  # torchrun and both ranks
            os.kill(pid, signal.SIGKILL)
        job.wait()
        print(f"killed (exit status {job.returncode}); checkpoints on disk:")
        for entry in sorted(os.listdir(killed)):
            committed = os.path.exists(os.path.join(killed, entry, "COMMITTED"))
            files = sorted(os.listdir(os.path.join(killed, entry, "blobs")))
            state = "committed" if committed else "partial, will be ignored"
            print(f"  {entry}  {state}  blobs: {', '.join(files)}")

        print("\n== resumed with the same command")
        resumed = run(killed)
        print()
        print(f"uninterrupted: {expected}")
        print(f"resumed:       {resumed}")
        if resumed != expected:
            raise SystemExit("the resumed run differs from the uninterrupted one")
        print("identical: the kill cost nothing but the steps since the last checkpoint")


if __name__ == "__main__":
    main()
