"""``from_args``: what a training script calls to get its config from the command line.

``python train.py --config config.ron optimizer.lr=0.1 steps=1000``
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn, TypeVar

from hyperstate import ron
from hyperstate.configs import load
from hyperstate.errors import HyperstateError
from hyperstate.schema.docs import field_docs
from hyperstate.serde import to_value
from hyperstate.typeinfo import (
    DictType,
    ListType,
    OptionType,
    SchemaType,
    StructType,
    format_type,
    struct_schema,
)

__all__ = ["from_args", "help_text"]

T = TypeVar("T")

_USAGE = "usage: {prog} [--config PATH] [path=value ...]"


def from_args(cls: type[T], argv: Sequence[str] | None = None, *, prog: str | None = None) -> T:
    """Build a config from command-line arguments.

    Accepts ``--config PATH`` (or ``--config=PATH``) for a RON file, then any number of
    ``path=value`` overrides (``optimizer.lr=0.1``, ``layers[0].width=64``,
    ``tags+={"a": 1}``); ``--hps`` before the overrides is allowed and ignored. ``--help``
    prints every field path with its type, default and doc, then exits.

    Like ``argparse``, bad arguments print an error naming the problem and exit with
    status 2.

    Args:
        cls: the config dataclass.
        argv: the arguments (default: ``sys.argv[1:]``).
        prog: the program name shown in the usage line.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    prog = prog or os.path.basename(sys.argv[0] or "train.py")
    config_path: str | None = None
    overrides: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-h", "--help"):
            print(help_text(cls, prog=prog))
            raise SystemExit(0)
        if arg == "--config" or arg == "-c":
            if i + 1 >= len(args):
                _exit(prog, "--config expects a path")
            config_path = args[i + 1]
            i += 2
            continue
        if arg.startswith("--config="):
            config_path = arg.split("=", 1)[1]
        elif arg in ("--hps", "--"):
            pass
        elif arg.startswith("-") and "=" not in arg.split(".", 1)[0]:
            _exit(prog, f"unknown option {arg!r}; expected --config PATH or path=value")
        else:
            overrides.append(arg)
        i += 1
    try:
        return load(cls, config_path, overrides)
    except (HyperstateError, OSError) as e:
        _exit(prog, str(e))


def _exit(prog: str, message: str) -> NoReturn:
    print(_USAGE.format(prog=prog), file=sys.stderr)
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def help_text(cls: type, *, prog: str = "train.py") -> str:
    """The ``--help`` text: usage, then every field path with type, default and doc."""
    lines = [
        _USAGE.format(prog=prog),
        "",
        f"Override any field of {cls.__name__} with path=value (values are RON; a bare word is",
        "a string). Lists: layers[0].width=64, layers+=[...]. Maps: tags.name=1.",
        "",
        "fields:",
    ]
    for path, node, default, doc in _walk(struct_schema(cls), ""):
        entry = f"  {path}: {format_type(node)}"
        if default is not None:
            entry += f" = {default}"
        lines.append(entry)
        if doc:
            lines.extend(f"      {line}" for line in doc.splitlines())
    return "\n".join(lines)


def _walk(node: StructType, prefix: str) -> Iterator[tuple[str, SchemaType, str | None, str]]:
    docs = field_docs(node.cls)
    for f in node.fields:
        path = f"{prefix}{f.name}"
        inner = f.type.inner if isinstance(f.type, OptionType) else f.type
        default = _render_default(f.make_default(), f.type) if f.has_default else None
        if isinstance(inner, StructType) and inner is not node:
            yield (
                path,
                f.type,
                None if default and "\n" in default else default,
                docs.get(f.name, ""),
            )
            yield from _walk(inner, f"{path}.")
        elif isinstance(inner, ListType) and isinstance(inner.item, StructType):
            yield path, f.type, _short(default), docs.get(f.name, "")
            yield from _walk(inner.item, f"{path}[i].")
        elif isinstance(inner, DictType) and isinstance(inner.value, StructType):
            yield path, f.type, _short(default), docs.get(f.name, "")
            yield from _walk(inner.value, f"{path}.KEY.")
        else:
            yield path, f.type, _short(default), docs.get(f.name, "")


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
