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
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from hyperstate import _fs, ron
from hyperstate.errors import ConfigError, Issue, PathSegment
from hyperstate.overrides import apply_overrides_collect, parse_override
from hyperstate.ron import Struct
from hyperstate.scheduled import set_schedules, with_schedule_text
from hyperstate.schema.types import struct_schema
from hyperstate.schema.upgrade import needs_upgrade_pass, upgrade
from hyperstate.serde import from_value, to_value
from hyperstate.state import deferred_fields, loading_lazily, reading_blobs, writing_blobs

__all__ = ["dump", "dumps", "load", "loads"]

T = TypeVar("T")
PathLike = str | os.PathLike[str]


def dumps(obj: Any, *, elide_defaults: bool = False) -> str:
    """The RON text of ``obj`` (a dataclass instance), without a trailing newline.

    Args:
        obj: the config to write.
        elide_defaults: leave out fields whose value equals their default.
    """
    return ron.dumps(with_schedule_text(obj, to_value(obj, elide_defaults=elide_defaults)))


def dump(obj: Any, path: PathLike | None = None, *, elide_defaults: bool = False) -> str:
    """Write ``obj`` as RON to ``path`` (a local path or fsspec URL) and return the text.

    Without ``path`` only the text is returned. Writing is atomic: a crash leaves either
    the old file or the complete new one, never half a file.

    A state holding tensors or arrays also writes them to a safetensors blob file beside
    the text (``blobs/rank-00000.safetensors`` for ``state.ron``), before the text, and
    the text refers to them with their checksums.
    """
    if path is None:
        return dumps(obj, elide_defaults=elide_defaults)
    name = os.fspath(path)
    directory, filename = _split(name)
    with writing_blobs(directory, _blob_file(filename)) as flush:
        tree = with_schedule_text(obj, to_value(obj, elide_defaults=elide_defaults))
        flush()
    text = ron.dumps(tree)
    del tree  # the references are in the text now: free them before the bytes are made
    _fs.write_atomic(name, text.encode("utf-8"), b"\n")
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
    ctx: dict[str, Any] | None = None,
    initial_state: Any = None,
    map_location: Any = None,
    verify: bool = True,
) -> T:
    """Load a config or state of class ``cls`` from ``path`` (a local path or fsspec URL).

    Without ``path`` the config is built from the class's defaults and ``overrides``.
    Errors are as for :func:`loads`.

    For states (see docs/state.md):

    Args:
        ctx: passed to ``Serializable.deserialize`` (e.g. ``{"config": config}``).
        initial_state: a function of ``ctx["config"]`` returning a fresh state, or such a
            state object; stateful fields (modules, optimizers, ...) load into its objects.
        map_location: the device to load tensors to (default: where they were saved,
            or the CPU when that device is missing).
        verify: check each blob entry's checksum as it is read.
    """
    if path is None:
        return _build(cls, Struct(None, {}), None, "<defaults>", overrides, ignore_extra_fields)
    name = os.fspath(path)
    return _load_text(
        cls,
        name,
        _fs.read_text(name),
        overrides,
        ignore_extra_fields=ignore_extra_fields,
        ctx=ctx,
        initial_state=initial_state,
        map_location=map_location,
        verify=verify,
    )


def _load_text(
    cls: type[T],
    name: str,
    text: str,
    overrides: Sequence[str] | None = None,
    *,
    ignore_extra_fields: bool = False,
    ctx: dict[str, Any] | None = None,
    initial_state: Any = None,
    map_location: Any = None,
    verify: bool = True,
    rank: int = 0,
    world_size: int = 1,
    per_rank_reinit: bool = False,
) -> T:
    """:func:`load` of the ``text`` of file ``name`` (already read, e.g. by another rank)."""
    tree, deferred = _parse(cls, name, text, overrides)
    context = dict(ctx or {})
    initial = initial_state(context.get("config")) if callable(initial_state) else initial_state
    with reading_blobs(
        _split(name)[0],
        ctx=context,
        initial=initial,
        map_location=map_location,
        verify=verify,
        rank=rank,
        world_size=world_size,
        per_rank_reinit=per_rank_reinit,
    ):
        if not deferred:
            return _build(cls, tree, text, name, overrides, ignore_extra_fields)
        around = {field: _parse_on_access(field, d, name) for field, d in deferred.items()}
        with loading_lazily(around):
            return _build(cls, tree, text, name, overrides, ignore_extra_fields)


def _parse(
    cls: type[Any], name: str, text: str, overrides: Sequence[str] | None
) -> tuple[Any, dict[str, ron.Deferred]]:
    """The value tree of ``text``; for a ``Lazy`` state, its lazy fields still unparsed.

    The text of a field that loads on access (tensors, ``Serializable`` values...) is
    only skipped over here and parsed when the field is first read, so that opening a
    state with many tensors does not parse all their references. Where the tree is
    rewritten before the typed load (an upgrade from an older version, an override
    into the field), the whole text is parsed.
    """
    node = struct_schema(cls)
    fields = set(deferred_fields(node))
    if fields:
        fields.difference_update(f.name for f in node.fields if needs_upgrade_pass(f.type))
        for override in overrides or ():
            try:
                head = parse_override(override).path[0]
            except ConfigError:
                return ron.loads(text, path=name), {}  # reported by the typed load
            fields.discard(head if isinstance(head, str) else "")
    if not fields:
        return ron.loads(text, path=name), {}
    tree, deferred = ron.loads_deferred(text, fields, path=name)
    if deferred and node.version is not None:
        found = tree.fields.get("version", 0) if isinstance(tree, Struct) else None
        if found != node.version or type(found) is not int:
            return ron.loads(text, path=name), {}  # the upgrade rules may rewrite anything
    return tree, deferred


def _parse_on_access(
    field: str, deferred: ron.Deferred, file: str
) -> Callable[[Callable[[], Any]], Any]:
    """Load a deferred field: parse its text, then decode it with ``file:line:col`` in errors."""

    def unplaced(issue: Issue) -> bool:
        return issue.location is None and issue.override is None and issue.path[:1] == (field,)

    def around(load: Callable[[], Any]) -> Any:
        deferred.fill()
        try:
            return load()
        except ConfigError as e:
            paths = [i.path[1:] for i in e.issues if unplaced(i)]
            positions = deferred.locate(paths) if paths else {}
            placed = [
                dataclasses.replace(i, location="{}:{}:{}".format(file, *positions[i.path[1:]]))
                if unplaced(i) and i.path[1:] in positions
                else i
                for i in e.issues
            ]
            raise ConfigError(placed, context=e.context) from None

    return around


def _split(path: str) -> tuple[str, str]:
    """(directory, file name) of a local path or URL."""
    if "://" in path:
        directory, _, filename = path.rpartition("/")
        return directory, filename
    absolute = os.path.abspath(path)
    return os.path.dirname(absolute), os.path.basename(absolute)


def _blob_file(filename: str) -> str:
    stem = filename.rsplit(".", 1)[0]
    prefix = "" if stem == "state" else f"{stem}-"
    return f"blobs/{prefix}rank-00000.safetensors"


def _build(
    cls: type[T],
    tree: Any,
    text: str | None,
    file: str,
    overrides: Sequence[str] | None,
    ignore_extra_fields: bool,
) -> T:
    node = struct_schema(cls)
    # Only a file can be at an old version: a config built from the defaults is current.
    if text is not None:
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
    if result.schedules:
        set_schedules(value, result.schedules)
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
