"""Load and dump typed configs as RON text: the functions users call.

>>> from dataclasses import dataclass
>>> @dataclass
... class Config:
...     lr: float
...     batch_size: int
>>> print(dumps(Config(lr=0.1, batch_size=256)))
Config(
    lr: 0.1,
    batch_size: 256,
)
>>> loads(Config, "Config(lr: 0.1, batch_size: 256)", overrides=["lr=0.3"])
Config(lr=0.3, batch_size=256)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any, TypeVar

from hyperstate import _fs, ron
from hyperstate.errors import ConfigError, Issue, PathSegment
from hyperstate.overrides import apply_overrides_collect
from hyperstate.ron import Struct
from hyperstate.schema.types import struct_schema
from hyperstate.schema.upgrade import upgrade
from hyperstate.serde import from_value, to_value

__all__ = ["dump", "dumps", "load", "loads"]

T = TypeVar("T")
PathLike = str | os.PathLike[str]


def dumps(obj: Any, *, elide_defaults: bool = False) -> str:
    """The RON text of ``obj`` (a dataclass instance), without a trailing newline.

    Args:
        obj: the config to write.
        elide_defaults: leave out fields whose value equals their default.
    """
    return ron.dumps(to_value(obj, elide_defaults=elide_defaults))


def dump(obj: Any, path: PathLike | None = None, *, elide_defaults: bool = False) -> str:
    """Write ``obj`` as RON to ``path`` (a local path or fsspec URL) and return the text.

    Without ``path`` only the text is returned. Writing is atomic: a crash leaves either
    the old file or the complete new one, never half a file.
    """
    text = dumps(obj, elide_defaults=elide_defaults)
    if path is not None:
        _fs.write_atomic(path, (text + "\n").encode("utf-8"))
    return text


def loads(
    cls: type[T],
    text: str,
    overrides: Sequence[str] | None = None,
    *,
    ignore_extra_fields: bool = False,
    path: str = "<string>",
) -> T:
    """Parse RON ``text`` into an instance of dataclass ``cls``.

    Args:
        cls: the config class.
        text: RON text.
        overrides: ``"path=value"`` strings applied on top (``["optimizer.lr=0.1"]``).
        ignore_extra_fields: skip fields that ``cls`` does not have instead of failing.
        path: the name to show in error messages.

    Raises:
        ParseError: the text is not valid RON (with line, column and a caret).
        ConfigError: the data does not fit ``cls``; lists every problem with its path and
            ``file:line:col`` or the override that caused it.
    """
    tree = ron.loads(text, path=path)
    return _build(cls, tree, text, path, overrides, ignore_extra_fields)


def load(
    cls: type[T],
    path: PathLike | None = None,
    overrides: Sequence[str] | None = None,
    *,
    ignore_extra_fields: bool = False,
) -> T:
    """Load a config of class ``cls`` from ``path`` (a local path or fsspec URL).

    Without ``path`` the config is built from the class's defaults and ``overrides``.
    Errors are as for :func:`loads`.
    """
    if path is None:
        return _build(cls, Struct(None, {}), None, "<defaults>", overrides, ignore_extra_fields)
    name = os.fspath(path)
    text = _fs.read_text(name)
    return _build(cls, ron.loads(text, path=name), text, name, overrides, ignore_extra_fields)


def _build(
    cls: type[T],
    tree: Any,
    text: str | None,
    file: str,
    overrides: Sequence[str] | None,
    ignore_extra_fields: bool,
) -> T:
    node = struct_schema(cls)
    try:
        tree = upgrade(node, tree)
    except ConfigError as e:
        raise ConfigError(_place(list(e.issues), text, file, {}), context=e.context) from None
    applied: dict[tuple[PathSegment, ...], str] = {}
    bad_overrides: list[Issue] = []
    if overrides:
        # Bad overrides are skipped so that the typed load can report its own problems
        # too: the user sees everything wrong with one command line at once.
        tree, applied, bad_overrides = apply_overrides_collect(node, tree, overrides)
    result = from_value(node, tree, ignore_extra_fields=ignore_extra_fields, collect=True)
    if result.issues or bad_overrides:
        raise ConfigError(bad_overrides + _place(result.issues, text, file, applied))
    value: T = result.value
    return value


def _place(
    issues: list[Issue],
    text: str | None,
    file: str,
    applied: dict[tuple[PathSegment, ...], str],
) -> list[Issue]:
    """Attach to each issue the override that set its value, or its place in the file."""
    positions: dict[Any, tuple[int, int]] = {}
    from_file = [i.path for i in issues if _override_of(i.path, applied) is None]
    if text is not None and from_file:
        positions = ron.locate(text, from_file, path=file)
    placed = []
    for issue in issues:
        override = _override_of(issue.path, applied)
        location = None
        if override is None and issue.path in positions:
            line, col = positions[issue.path]
            location = f"{file}:{line}:{col}"
        placed.append(dataclasses.replace(issue, location=location, override=override))
    return placed


def _override_of(
    path: tuple[PathSegment, ...], applied: dict[tuple[PathSegment, ...], str]
) -> str | None:
    for i in range(len(path), -1, -1):
        override = applied.get(path[:i])
        if override is not None:
            return override
    return None
