#!/usr/bin/env bash
# Sets everything up on a fresh machine and runs the demo: a real training loop that
# checkpoints under torchrun (2 ranks, DDP on CPU), is killed with SIGKILL, resumes, and
# matches an uninterrupted run.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -c constraints.txt -e .
.venv/bin/python examples/torchrun/demo.py "$@"
