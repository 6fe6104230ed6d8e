"""The command line of a training script: ``--config``, ``--checkpoint-dir``, overrides.

``python train.py --config config.ron --checkpoint-dir runs/17 optimizer.lr=0.1``

:meth:`HyperState.from_args <hyperstate.StateManager.from_args>` is a training script's
entry point; :func:`from_args` builds only a config. Both parse the arguments with
``argparse`` (a script's own ``ArgumentParser`` may join in), answer ``--help`` with the
config's fields, answer ``--print-config`` with the config the run would use, and exit with
status 2 and one line of error on bad input, as ``argparse`` does.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from hyperstate import ron
from hyperstate.configs import dumps, load, loads
from hyperstate.distributed.collectives import Ranks
from hyperstate.distributed.restore import find
from hyperstate.errors import ConfigError, HyperstateError, format_path
from hyperstate.scheduled import schedules
from hyperstate.schema.docs import field_docs
from hyperstate.serde import to_value
from hyperstate.storage import CONFIG_FILE, CheckpointStore
from hyperstate.typeinfo import (
    DictType,
    EnumType,
    ListType,
    OptionType,
    SchemaType,
    StructType,
    VarTupleType,
    format_type,
    struct_schema,
)

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

__all__ = ["CommandLine", "from_args", "help_text", "parse_command_line", "resolve_config"]

T = TypeVar("T")

_USAGE = "%(prog)s [--config PATH] [path=value ...]"
_HELP_FLAGS = ("-h", "--help")


def from_args(cls: type[T], argv: Sequence[str] | None = None, *, prog: str | None = None) -> T:
    """Build a config from command-line arguments.

    Accepts ``--config PATH`` (a config file, a checkpoint directory, or a run directory:
    the config of its newest committed checkpoint), then any number of ``path=value``
    overrides (``optimizer.lr=0.1``, ``layers[0].width=64``, ``tags+={"a": 1}``); ``--hps``
    before the overrides is allowed and ignored. ``--help`` prints every field path with
    its type, default and doc (with ``--config``, the file's values), then exits;
    ``--print-config`` prints the config as RON and exits.

    Like ``argparse``, bad arguments print an error naming the problem and exit with
    status 2. A training script that checkpoints calls
    :meth:`HyperState.from_args <hyperstate.StateManager.from_args>` instead.

    Args:
        cls: the config dataclass.
        argv: the arguments (default: ``sys.argv[1:]``).
        prog: the program name shown in the usage line.
    """
    command = parse_command_line(cls, argv, prog=prog, usage=_USAGE)
    try:
        config, _ = resolve_config(cls, command.path, None, command.overrides)
    except HyperstateError as e:
        command.fail(e)
    return config


@dataclass(frozen=True)
class CommandLine:
    """What a training script's command line asks for (``--help`` and ``--print-config``
    were answered already).

    Attributes:
        path: ``--config``: a config file, a checkpoint directory or a run directory.
        checkpoint_dir: ``--checkpoint-dir``: where the run's checkpoints go.
        overrides: the ``path=value`` arguments, in order.
        args: the options of the script's own parser (an empty namespace without one).
        parser: the parser that read the arguments (hyperstate's options and the script's).
    """

    path: str | None
    checkpoint_dir: str | None
    overrides: tuple[str, ...]
    args: argparse.Namespace
    parser: argparse.ArgumentParser

    def fail(self, error: BaseException | str) -> NoReturn:
        """Print the usage and ``PROG: error: <one line>`` to stderr and exit with status 2,
        as ``argparse`` does for a bad argument."""
        self.parser.error(_one_line(error))


def parse_command_line(
    config_clz: type,
    argv: Sequence[str] | None = None,
    *,
    parser: argparse.ArgumentParser | None = None,
    prog: str | None = None,
    usage: str | None = None,
    resume: bool = False,
    path: str | os.PathLike[str] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] | None = None,
) -> CommandLine:
    """Parse a training script's arguments; answer ``--help`` and ``--print-config``.

    The options are ``--config PATH``, ``--checkpoint-dir URL`` (with ``resume``),
    ``--print-config``, ``--help``, the options of ``parser`` (the script's own, parsed
    alongside and listed in the help with the config fields), and ``path=value``
    overrides anywhere among them. ``path`` and ``checkpoint_dir`` are what the options
    default to; ``overrides`` come before those of the command line.

    Exits with status 0 after ``--help`` or ``--print-config``, and with status 2 and an
    error line (see :meth:`CommandLine.fail`) on a bad argument or config.

    Raises:
        ValueError: ``parser`` already defines one of hyperstate's options.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    combined = _parser(config_clz, parser, prog, usage, resume)
    if "--hps" not in combined._option_string_actions:
        argv = [a for a in argv if a != "--hps"]  # earlier releases' marker, without a value
    try:
        try:
            namespace = combined.parse_intermixed_args(argv)
        except TypeError:  # a script's parser with subcommands cannot be parsed intermixed
            namespace = combined.parse_args(argv)
    except _HelpRequested:
        print(_help(config_clz, combined, argv, path, checkpoint_dir))
        raise SystemExit(0) from None
    own = vars(namespace)
    print_config = own.pop(_DEST["--print-config"])
    command = CommandLine(
        path=own.pop(_DEST["--config"]) or _fspath(path),
        checkpoint_dir=own.pop(_DEST["--checkpoint-dir"], None) or _fspath(checkpoint_dir),
        overrides=(*(overrides or ()), *own.pop(_DEST["overrides"])),
        args=argparse.Namespace(**own),
        parser=combined,
    )
    if print_config:
        try:
            config: Any = resolve_config(
                config_clz, command.path, command.checkpoint_dir, command.overrides
            )[0]
        except HyperstateError as e:
            command.fail(e)
        print(dumps(config))
        raise SystemExit(0)
    return command


def resolve_config(
    cls: type[T],
    path: str | None,
    checkpoint_dir: str | None,
    overrides: Sequence[str] = (),
) -> tuple[T, str | None]:
    """The config a run with these arguments starts with, and where it comes from.

    That is the config of the newest committed checkpoint of ``checkpoint_dir`` (the run
    resumes); else the config at ``path`` (a config file, a checkpoint directory, or a run
    directory: its newest committed checkpoint); else the defaults; with ``overrides``
    applied. Only text is read: no state is built, no tensor loaded.
    """
    store = CheckpointStore(checkpoint_dir) if checkpoint_dir else None
    found = find(Ranks.alone(), store, path)
    if found.info is not None and found.config_text is not None:
        where = f"{found.info.path}/{CONFIG_FILE}"
        return loads(cls, found.config_text, overrides, path=where), where
    if found.config_text is not None:
        name = found.name or "<config>"
        return loads(cls, found.config_text, overrides, path=name), name
    return load(cls, None, overrides), None


def _one_line(error: BaseException | str) -> str:
    """An error as one line, for a command's ``error:`` line: every problem of a
    :class:`~hyperstate.ConfigError`, joined with ``;``; the first line of others (a
    parse error's source line and caret are left out)."""
    if isinstance(error, ConfigError):
        head = f"{error.context}: " if error.context else ""
        return head + "; ".join(str(issue) for issue in error.issues)
    text = str(error).strip() or type(error).__name__
    return text.partition("\n")[0]


def help_text(cls: type, *, prog: str = "train.py") -> str:
    """The ``--help`` text of :func:`from_args`: usage, options, then every field path
    with its type, default and doc."""
    return _help(cls, _parser(cls, None, prog, _USAGE, False), [], None, None)


# -- the parser ---------------------------------------------------------------------------

# hyperstate's options and where argparse keeps them: dests no script's option has.
_DEST = {
    "--config": "_hyperstate_config",
    "--checkpoint-dir": "_hyperstate_checkpoint_dir",
    "--print-config": "_hyperstate_print_config",
    "overrides": "_hyperstate_overrides",
}
_OPTIONS = frozenset({"--config", "--checkpoint-dir", "--print-config"})


class _HelpRequested(Exception):
    """``--help`` was given: answered once every argument is known (``--config`` may
    come after it and supplies the defaults shown)."""


class _Parser(argparse.ArgumentParser):
    def print_help(self, file: SupportsWrite[str] | None = None) -> None:
        # What every help action calls, the script's own included.
        raise _HelpRequested


def _parser(
    config_clz: type,
    script: argparse.ArgumentParser | None,
    prog: str | None,
    usage: str | None,
    resume: bool,
) -> argparse.ArgumentParser:
    """hyperstate's options and the script's own in one parser; the script's parser is
    left as it was (its options are shared, as with ``parents=``)."""
    if script is not None:
        prog = prog or script.prog
        usage = usage or script.usage
    combined = _Parser(
        prog=prog or os.path.basename(sys.argv[0] or "train.py"),
        usage=usage,
        description=script.description if script is not None else None,
        epilog=script.epilog if script is not None else None,
        formatter_class=script.formatter_class if script is not None else argparse.HelpFormatter,
        parents=[script] if script is not None else [],
        add_help=False,
        allow_abbrev=script.allow_abbrev if script is not None else False,
    )
    # argparse has no public way to ask which option strings a parser knows.
    taken = set(combined._option_string_actions)
    ours = _OPTIONS if resume else _OPTIONS - {"--checkpoint-dir"}
    clash = sorted(taken & ours)
    if clash:
        raise ValueError(
            f"the script's parser defines {', '.join(clash)}, which hyperstate's from_args "
            "adds; rename the script's option"
        )
    free = [flag for flag in _HELP_FLAGS if flag not in taken]
    if free:
        combined.add_argument(*free, action="help", help="show this help and exit")
    combined.add_argument(
        "--config",
        dest=_DEST["--config"],
        metavar="PATH",
        help="config file, checkpoint dir or run dir",
    )
    if "-c" not in taken:  # the short form earlier releases took, kept out of the help
        combined.add_argument("-c", dest=_DEST["--config"], help=argparse.SUPPRESS)
    if resume:
        combined.add_argument(
            "--checkpoint-dir",
            dest=_DEST["--checkpoint-dir"],
            metavar="URL",
            help="save checkpoints here; resume from the newest",
        )
    combined.add_argument(
        "--print-config",
        dest=_DEST["--print-config"],
        action="store_true",
        help="print the config as RON and exit",
    )
    combined.add_argument(
        _DEST["overrides"],
        nargs="*",
        metavar="path=value",
        help=f"set a field of {config_clz.__name__} (listed below)",
    )
    return combined


def _fspath(path: str | os.PathLike[str] | None) -> str | None:
    return os.fspath(path) if path is not None else None


# -- the help -----------------------------------------------------------------------------


def _help(
    cls: type,
    parser: argparse.ArgumentParser,
    argv: Sequence[str],
    path: str | os.PathLike[str] | None,
    checkpoint_dir: str | os.PathLike[str] | None,
) -> str:
    """The parser's help, then the config fields with the values the run would start
    with when ``argv`` names a config or a run to resume (else the class defaults)."""
    config: Any = None
    source: str | None = None
    path, checkpoint_dir = _sources(parser, argv, path, checkpoint_dir)
    if path is not None or checkpoint_dir is not None:
        try:
            config, source = resolve_config(cls, path, checkpoint_dir)
        except HyperstateError as e:
            parser.error(_one_line(e))
    lines = [
        parser.format_help().rstrip("\n"),
        "",
        f"Override any field of {cls.__name__} with path=value (values are RON; a bare word is",
        "a string). Lists: layers[0].width=64, layers+=[...]. Maps: tags.name=1.",
        "",
        f"fields (values from {source}):" if source is not None else "fields:",
    ]
    # A scheduled field shows its schedule, not the value at step 0.
    scheduled = {format_path(where): ron.dumps(s.text) for where, s in schedules(config).items()}
    for field_path, node, default, doc in _walk(struct_schema(cls), "", config, frozenset()):
        entry = f"  {field_path}: {format_type(node)}"
        default = scheduled.get(field_path, default)
        if default is not None:
            entry += f" = {default}"
        variants = _variants(node)
        if variants:
            entry += f"  {variants}"
        lines.append(entry)
        if doc:
            lines.extend(f"      {line}" for line in doc.splitlines())
    return "\n".join(lines)


def _sources(
    parser: argparse.ArgumentParser,
    argv: Sequence[str],
    path: str | os.PathLike[str] | None,
    checkpoint_dir: str | os.PathLike[str] | None,
) -> tuple[str | None, str | None]:
    """``--config`` and ``--checkpoint-dir`` of ``argv``, read without the script's
    options (a ``--help`` answer must not fail on a required option left out)."""
    sources = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for dest in (_DEST["--config"], _DEST["--checkpoint-dir"]):
        flags = [f for f, a in parser._option_string_actions.items() if a.dest == dest]
        if flags:
            sources.add_argument(*flags, dest=dest)
    known, _ = sources.parse_known_args([a for a in argv if a not in _HELP_FLAGS])
    return (
        getattr(known, _DEST["--config"], None) or _fspath(path),
        getattr(known, _DEST["--checkpoint-dir"], None) or _fspath(checkpoint_dir),
    )


def _walk(
    node: StructType, prefix: str, value: Any, seen: frozenset[type]
) -> Iterator[tuple[str, SchemaType, str | None, str]]:
    """(path, type, default, doc) of every field under ``node``; defaults are taken from
    ``value`` (an instance of the class) when there is one."""
    docs = field_docs(node.cls)
    seen = seen | {node.cls}
    for f in node.fields:
        path = f"{prefix}{f.name}"
        doc = docs.get(f.name, "")
        if value is not None:
            known, current = True, getattr(value, f.name)
        else:
            known = f.has_default
            current = f.make_default() if known else None
        default = _render_default(current, f.type) if known else None
        inner = f.type.inner if isinstance(f.type, OptionType) else f.type
        if isinstance(inner, StructType) and inner.cls not in seen:
            yield path, f.type, None if default and "\n" in default else default, doc
            nested = current if isinstance(current, inner.cls) else None
            yield from _walk(inner, f"{path}.", nested, seen)
        elif isinstance(inner, ListType) and isinstance(inner.item, StructType):
            yield path, f.type, _short(default), doc
            if inner.item.cls not in seen:
                yield from _walk(inner.item, f"{path}[i].", None, seen)
        elif isinstance(inner, DictType) and isinstance(inner.value, StructType):
            yield path, f.type, _short(default), doc
            if inner.value.cls not in seen:
                yield from _walk(inner.value, f"{path}.KEY.", None, seen)
        else:
            yield path, f.type, _short(default), doc


def _variants(node: SchemaType) -> str:
    """``{RELU, GELU}``: the members an enum field (or an optional one, or a list of
    them) may take; empty for other fields."""
    while isinstance(node, OptionType | ListType | VarTupleType):
        node = node.inner if isinstance(node, OptionType) else node.item
    if not isinstance(node, EnumType):
        return ""
    return "{" + ", ".join(member.name for member in node.cls) + "}"


def _render_default(value: Any, node: SchemaType) -> str:
    try:
        return ron.dumps(to_value(value, node))
    except (HyperstateError, TypeError):
        return repr(value)


def _short(text: str | None) -> str | None:
    if text is None:
        return None
    flat = " ".join(line.strip() for line in text.splitlines())
    for wide, tight in (("( ", "("), ("[ ", "["), ("{ ", "{"), (", )", ")"), (", ]", "]")):
        flat = flat.replace(wide, tight)
    flat = flat.replace(", }", "}")
    return flat if len(flat) <= 60 else flat[:57] + "..."
