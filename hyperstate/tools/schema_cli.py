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
from hyperstate.storage import CONFIG_FILE, CheckpointStore

__all__ = ["add_commands", "run_command", "schema_evolution_cli"]

DEFAULT_SCHEMA = "config-schema.ron"

_COMMANDS = {
    "dump-schema": "write the schema file of the config class (commit it to version control)",
    "check-schema": "compare the config class with the schema file; propose upgrade rules",
    "upgrade-schema": "check, then rewrite the schema file once every incompatibility is handled",
    "upgrade-config": "rewrite config files (or checkpoint or run directories) to the latest "
    "version",
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
                "files",
                nargs="+",
                metavar="FILE",
                help="config files, checkpoint directories, or run directories (the "
                "config.ron of every committed checkpoint)",
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
        try:
            paths = _config_files(given, out)
        except (HyperstateError, OSError) as e:
            failed += 1
            print(f"FAILED {given}: {e}", file=out)
            continue
        for path in paths:
            failed += _upgrade_config(config_clz, path, dry_run, out)
    return 1 if failed else 0


def _upgrade_config(config_clz: type, path: str, dry_run: bool, out: TextIO) -> int:
    """Upgrade one config file; 1 when it failed (and was left as it was), else 0."""
    try:
        text = _fs.read_text(path)
        upgraded = dumps(loads(config_clz, text, path=path)) + "\n"
    except (HyperstateError, OSError, UnicodeDecodeError) as e:
        print(f"FAILED {path}: {e}", file=out)
        print(f"       {path} was left unchanged", file=out)
        return 1
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
    return 0


def _config_files(given: str, out: TextIO) -> list[str]:
    """The config files that ``given`` names: itself (a file), the ``config.ron`` of a
    checkpoint directory, or that of every committed checkpoint of a run directory,
    oldest first (resume reads the newest; the older ones are what a person goes back
    to). A run's uncommitted directories are left alone: one may be a save in progress.
    """
    fs, fs_path = _fs.url_to_fs(given)
    if not fs.isdir(fs_path):
        return [given]
    directory = given.rstrip("/") or given
    config = f"{directory}/{CONFIG_FILE}"
    if fs.isfile(f"{fs_path.rstrip('/')}/{CONFIG_FILE}"):
        return [config]
    run = CheckpointStore(directory)
    checkpoints = run.list()
    if not checkpoints:
        return [config]  # not a run either: reported as a missing file
    uncommitted = run.uncommitted()
    if uncommitted:
        print(f"skipped {len(uncommitted)} uncommitted checkpoint(s) in {directory}", file=out)
    return [f"{info.path}/{CONFIG_FILE}" for info in checkpoints]


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
