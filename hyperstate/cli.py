"""The ``hyperstate`` console command.

``hyperstate schema COMMAND --config-class module:Class`` runs the schema evolution
commands (see :mod:`hyperstate.schema.cli`) for a config class named on the command line.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

import hyperstate
from hyperstate.schema import cli as schema_cli

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hyperstate`` command; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="hyperstate",
        description="Typed configs, schema evolution and checkpoints for PyTorch training runs.",
    )
    parser.add_argument(
        "--version", action="version", version=f"hyperstate {hyperstate.__version__}"
    )
    commands = parser.add_subparsers(dest="group", metavar="COMMAND", title="commands")
    schema = commands.add_parser(
        "schema",
        help="schema evolution: dump-schema, check-schema, upgrade-schema, upgrade-config",
        description="Schema evolution commands for the config class given by --config-class.",
    )
    schema.add_argument(
        "--config-class",
        required=True,
        metavar="MODULE:CLASS",
        help="the config class, e.g. config:Config (the current directory is importable)",
    )
    schema_cli.add_commands(schema)
    edit = commands.add_parser(
        "set",
        help="edit the hyperparameters of a running experiment",
        description="Ask the run that checkpoints to RUN_DIR to apply path=value overrides at "
        "its next step(); the outcome is written next to the request (.applied / .rejected).",
    )
    edit.add_argument(
        "run_dir", metavar="RUN_DIR", help="the run's checkpoint_dir (any fsspec URL)"
    )
    edit.add_argument("overrides", nargs="+", metavar="path=value")
    args = parser.parse_args(argv)
    if args.group is None:
        parser.print_help()
        return 0
    if args.group == "set":
        from hyperstate.edits import request_edit

        print(f"requested: {request_edit(args.run_dir, args.overrides)}")
        return 0
    if args.command is None:
        schema.print_help()
        return 0
    try:
        config_clz = _import_class(args.config_class)
    except (ImportError, AttributeError, ValueError) as e:
        print(f"hyperstate schema: error: {e}", file=sys.stderr)
        return 2
    return schema_cli.run_command(config_clz, args)


def _import_class(spec: str) -> type:
    module_name, sep, qualname = spec.partition(":")
    if not sep or not module_name or not qualname:
        raise ValueError(f"expected MODULE:CLASS (e.g. config:Config), found {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    obj: object = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise ValueError(f"{spec} is not a class")
    return obj


if __name__ == "__main__":
    raise SystemExit(main())
