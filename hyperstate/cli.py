"""The ``hyperstate`` console command."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import hyperstate

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hyperstate`` command."""
    parser = argparse.ArgumentParser(
        prog="hyperstate",
        description="Typed configs, schema evolution and checkpoints for PyTorch training runs.",
    )
    parser.add_argument(
        "--version", action="version", version=f"hyperstate {hyperstate.__version__}"
    )
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
