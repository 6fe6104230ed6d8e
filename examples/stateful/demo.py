"""The demo: train, get killed with SIGKILL mid-run, resume, and match an uninterrupted run.

python examples/stateful/demo.py
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRAIN = [sys.executable, str(HERE / "train.py"), "--config", str(HERE / "config.ron")]


def run(checkpoint_dir: str) -> str:
    out = subprocess.run(
        [*TRAIN, "--checkpoint-dir", checkpoint_dir], capture_output=True, text=True, check=True
    ).stdout
    print(out, end="")
    return out.strip().splitlines()[-1]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        print("== an uninterrupted run")
        expected = run(os.path.join(tmp, "clean"))

        print("\n== the same run, killed with SIGKILL after a moment")
        killed = os.path.join(tmp, "killed")
        child = subprocess.Popen([*TRAIN, "--checkpoint-dir", killed], stdout=subprocess.PIPE)
        assert child.stdout is not None
        for _ in range(2):  # let it get past step 100
            print(child.stdout.readline().decode(), end="")
        time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait()
        print(f"killed (exit status {child.returncode}); checkpoints on disk:")
        for entry in sorted(os.listdir(killed)):
            committed = os.path.exists(os.path.join(killed, entry, "COMMITTED"))
            print(f"  {entry}  {'committed' if committed else 'partial, will be ignored'}")

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
