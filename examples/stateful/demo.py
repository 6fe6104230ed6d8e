"""The demo in one process: train, get stopped mid-run (SIGKILL, then SIGTERM), resume,
and match an uninterrupted run.

    python examples/stateful/demo.py

Exits with status 0 only if both resumed runs end with the uninterrupted run's weights.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
INTERRUPT_AT = 110  # between the checkpoints of steps 100 and 120


def command(checkpoint_dir: Path) -> list[str]:
    script = [str(HERE / "train.py"), "--config", str(HERE / "config.ron"), "--log-every", "10"]
    return [sys.executable, *script, "--checkpoint-dir", str(checkpoint_dir)]


def run(checkpoint_dir: Path) -> str:
    """Run to the end; show its lines (every 50th step) and return the last."""
    out = subprocess.run(
        command(checkpoint_dir), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    lines = out.stdout.splitlines()
    for line in lines:
        if not line.startswith("step ") or int(line.split()[1]) % 50 == 0:
            print(line)
    if out.returncode != 0:
        raise SystemExit(f"the run failed (exit status {out.returncode})")
    return lines[-1]


def interrupted(checkpoint_dir: Path, sig: signal.Signals) -> None:
    """Start a run and send it ``sig`` once it reports step INTERRUPT_AT."""
    child = subprocess.Popen(
        command(checkpoint_dir), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith(f"step {INTERRUPT_AT:4d} "):
            print(f"{line.rstrip()}   <- {sig.name}")
            child.send_signal(sig)
            break
        if int(line.split()[1]) % 50 == 0:
            print(line, end="")
    for line in child.stdout:  # after SIGTERM: "stopped at step N: checkpoint N committed"
        print(line, end="")
    status = child.wait()
    print(f"exit status {status}; checkpoints on disk:")
    for entry in sorted(checkpoint_dir.glob("step-*")):
        committed = (entry / "COMMITTED").exists()
        print(f"  {entry.name}  {'committed' if committed else 'partial, will be ignored'}")


def main() -> None:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        print("== an uninterrupted run")
        expected = run(tmp / "clean")
        results = []
        for sig in (signal.SIGKILL, signal.SIGTERM):
            print(f"\n== the same run, sent {sig.name} at step {INTERRUPT_AT}")
            interrupted(tmp / sig.name, sig)
            print("resumed with the same command:")
            results.append((sig.name, run(tmp / sig.name)))
        print(f"\nuninterrupted:        {expected}")
        for name, resumed in results:
            print(f"resumed after {name}: {resumed}")
        if any(resumed != expected for _, resumed in results):
            raise SystemExit("a resumed run differs from the uninterrupted one")
        print("identical: SIGKILL cost the steps since the last checkpoint, SIGTERM cost nothing")


if __name__ == "__main__":
    main()
