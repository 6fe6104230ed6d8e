"""Start a job with N ranks the way torchrun does (env:// rendezvous on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JOB = Path(__file__).with_name("job.py")


@dataclass
class Rank:
    returncode: int
    stdout: str
    stderr: str

    @property
    def result(self) -> dict[str, Any]:
        for line in self.stdout.splitlines():
            if line.startswith("RESULT "):
                value: dict[str, Any] = json.loads(line[len("RESULT ") :])
                return value
        raise AssertionError(f"no RESULT line (exit {self.returncode}):\n{self.stderr[-3000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(world: int, *args: str, script: Path = JOB, timeout: float = 120) -> list[Rank]:
    """Run ``script`` with ``world`` ranks; wait for all; return each rank's outcome.

    The rendezvous port is picked free, then bound by rank 0 a moment later; if another
    process took it in between (tests run in parallel), the job is started again.
    """
    for _ in range(3):
        ranks = _launch(world, args, script, timeout)
        if not any("EADDRINUSE" in r.stderr or "ddress already in use" in r.stderr for r in ranks):
            break
    return ranks


def _launch(world: int, args: tuple[str, ...], script: Path, timeout: float) -> list[Rank]:
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(world),
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), *args],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r), "GROUP_RANK": "0"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(world)
    ]
    ranks = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            ranks.append(Rank(p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return ranks
