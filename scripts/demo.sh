#!/usr/bin/env bash
# Sets everything up on a fresh machine and runs the demo: a real training loop under
# torchrun (2 ranks, DDP on CPU) that checkpoints, is stopped twice (SIGKILL of every
# process; SIGTERM to one rank, which commits the step reached and exits with 143), is
# resumed each time with the same command, and ends as an uninterrupted run does, bit for
# bit. Exits with 0 only if every check passed.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -c constraints.txt -e .
.venv/bin/python examples/torchrun/demo.py "$@"
