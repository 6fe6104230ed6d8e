"""The schema evolution CLI: ``dump-schema``, ``check-schema``, ``upgrade-schema``,
``upgrade-config``.

Add it to the file that defines your config::

    from hyperstate import schema_evolution_cli

    if __name__ == "__main__":
        schema_evolution_cli(Config)

and run ``python config.py check-schema``. The same commands are reachable as
``hyperstate schema COMMAND --config-class module:Class``.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn, TextIO

from hyperstate import _fs
from hyperstate.configs import dumps, loads
from hyperstate.errors import HyperstateError
from hyperstate.schema.model import dump_schema, load_schema
from hyperstate.schema.schema_change import Severity
from hyperstate.schema.schema_checker import SchemaChecker

__all__ = ["add_commands", "run_command", "schema_evolution_cli"]

DEFAULT_SCHEMA = "config-schema.ron"

_COMMANDS = {
    "dump-schema": "write the schema file of the config class (commit it to version control)",
    "check-schema": "compare the config class with the schema file; propose upgrade rules",
    "upgrade-schema": "check, then rewrite the schema file once every incompatibility is handled",
    "upgrade-config": "rewrite config files (or checkpoint directories) to the latest version",
}


def schema_evolution_cli(
    config_clz: type, argv: Sequence[str] | None = None, *, prog: str | None = None
) -> NoReturn:
    """Run the schema evolution command line for ``config_clz`` and exit.

    Exit status: 0 when the command succeeded (for ``check-schema``: the schema is
    compatible), 1 when it found problems, 2 for bad usage.
    """
    parser = argparse.ArgumentParser(
        prog=prog or os.path.basename(sys.argv[0] or "config.py"),
        description=f"Schema evolution for {config_clz.__name__}.",
    )
    add_commands(parser)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        raise SystemExit(0)
    raise SystemExit(run_command(config_clz, args))


def add_commands(parser: argparse.ArgumentParser) -> None:
    """Add the four commands as subcommands of ``parser`` (``args.command`` names one)."""
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, help_text in _COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == "upgrade-config":
            command.add_argument(
                "files", nargs="+", metavar="FILE", help="config files or checkpoint dirs"
            )
            command.add_argument(
                "--dry-run", action="store_true", help="show the changes, write nothing"
            )
        else:
            command.add_argument(
                "--schema",
                default=DEFAULT_SCHEMA,
                metavar="PATH",
                help=f"the schema file (default: {DEFAULT_SCHEMA})",
            )


def run_command(config_clz: type, args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run the command named in ``args``; returns the exit status."""
    out = out or sys.stdout
    color = _use_color(out)
    try:
        if args.command == "dump-schema":
            dump_schema(config_clz, args.schema)
            print(f"wrote {args.schema}", file=out)
            return 0
        if args.command in ("check-schema", "upgrade-schema"):
            return _check(config_clz, args.schema, args.command == "upgrade-schema", out, color)
        if args.command == "upgrade-config":
            return _upgrade_configs(config_clz, args.files, args.dry_run, out)
    except (HyperstateError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    raise ValueError(f"unknown command {args.command!r}")


def _check(config_clz: type, schema_path: str, rewrite: bool, out: TextIO, color: bool) -> int:
    fs, fs_path = _fs.url_to_fs(schema_path)
    if not fs.exists(fs_path):
        print(
            f"error: no schema file at {schema_path}; create it with dump-schema",
            file=sys.stderr,
        )
        return 2
    checker = SchemaChecker(load_schema(schema_path), config_clz)
    print(_colorize(checker.report(), color), file=out)
    if checker.severity() >= Severity.WARN:
        return 1
    if rewrite:
        dump_schema(config_clz, schema_path)
        print(f"updated {schema_path}", file=out)
    return 0


def _upgrade_configs(config_clz: type, files: Sequence[str], dry_run: bool, out: TextIO) -> int:
    failed = 0
    for given in files:
        path = _config_file(given)
        try:
            text = _fs.read_text(path)
            upgraded = dumps(loads(config_clz, text, path=path)) + "\n"
        except (HyperstateError, OSError, UnicodeDecodeError) as e:
            failed += 1
            print(f"FAILED {path}: {e}", file=out)
            print(f"       {path} was left unchanged", file=out)
            continue
        if upgraded == text:
            print(f"up to date: {path}", file=out)
        elif dry_run:
            diff = difflib.unified_diff(
                text.splitlines(keepends=True),
                upgraded.splitlines(keepends=True),
                fromfile=f"{path} (now)",
                tofile=f"{path} (upgraded)",
            )
            out.writelines(diff)
            print(f"would upgrade {path}", file=out)
        else:
            _fs.write_atomic(path, upgraded.encode("utf-8"))
            print(f"upgraded {path}", file=out)
    return 1 if failed else 0


def _config_file(path: str) -> str:
    fs, fs_path = _fs.url_to_fs(path)
    if fs.isdir(fs_path):
        return path.rstrip("/") + "/config.ron"
    return path


def _use_color(out: TextIO) -> bool:
    return out.isatty() and "NO_COLOR" not in os.environ


_COLORS = {"INFO ": "\033[36m", "WARN ": "\033[33m", "ERROR": "\033[31m"}


def _colorize(report: str, color: bool) -> str:
    if not color:
        return report
    lines = []
    for line in report.splitlines():
        code = _COLORS.get(line[:5])
        lines.append(f"{code}{line[:5]}\033[0m{line[5:]}" if code else line)
    return "\n".join(lines)
