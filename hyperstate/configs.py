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
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from hyperstate import _fs, ron, scheduled
from hyperstate.distributed.dtensor import reshard
from hyperstate.distributed.save import write_beside
from hyperstate.errors import ConfigError, Issue, ValuePath, format_path
from hyperstate.overrides import apply_overrides_collect, parse_override
from hyperstate.ron import Struct
from hyperstate.scheduled import set_schedules, with_schedule_text
from hyperstate.schema.upgrade import needs_upgrade_pass, upgrade
from hyperstate.serde import from_value, to_value
from hyperstate.storage import blob_file_beside
from hyperstate.tensors.context import reading_blobs
from hyperstate.typeinfo import struct_schema

__all__ = ["dump", "dumps", "load", "loads"]

T = TypeVar("T")
PathLike = str | os.PathLike[str]

log = logging.getLogger("hyperstate")


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
    url = os.fspath(path)
    directory, filename = _fs.split_url(url)
    tree = write_beside(
        directory,
        blob_file_beside(filename),
        lambda: with_schedule_text(obj, to_value(obj, elide_defaults=elide_defaults)),
    )
    text = ron.dumps(tree)
    del tree  # the references are in the text now: free them before the bytes are made
    _fs.write_atomic(url, text.encode("utf-8"), b"\n")
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
    state: bool | None = None,
) -> T:
    """Load a config or state of class ``cls`` from ``path`` (a local path or fsspec URL).

    Without ``path`` the config is built from the class's defaults and ``overrides``.
    Errors are as for :func:`loads`.

    For states (see docs/state.md):

    Args:
        ctx: passed to ``Serializable.deserialize`` (e.g. ``{"config": config}``).
        initial_state: a function of ``ctx["config"]`` returning a fresh state, or such a
            state object; stateful fields (modules, optimizers, ...) load into its objects,
            and fields that the file lacks (added to the class since) take its values.
        map_location: the device to load tensors to (default: where they were saved,
            or the CPU when that device is missing).
        verify: check each blob entry's checksum as it is read.
        state: whether the file is a state, which the code may have changed since it
            was written: fields the class no longer has are ignored, with a warning,
            instead of failing as a config's unknown fields do. By default, a state
            exactly when ``initial_state`` is given.
    """
    if path is None:
        return _build(cls, Struct(None, {}), None, "<defaults>", overrides, ignore_extra_fields)
    url = os.fspath(path)
    return load_text(
        cls,
        url,
        _fs.read_text(url),
        overrides,
        ignore_extra_fields=ignore_extra_fields,
        ctx=ctx,
        initial_state=initial_state,
        map_location=map_location,
        verify=verify,
        state=state,
    )


def load_text(
    cls: type[T],
    url: str,
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
    file_checksums: Mapping[str, str] | None = None,
    state: bool | None = None,
) -> T:
    """:func:`load` of the ``text`` of the file at ``url`` (already read, e.g. by rank 0).

    ``rank`` and ``world_size`` pick each rank's ``PerRank`` values (see
    :class:`~hyperstate.PerRank`); tensors restored into a ``DTensor`` of
    ``initial_state`` are laid out like it. ``file_checksums`` are those ``COMMITTED``
    records of the blob files (see :class:`~hyperstate.tensors.safetensors.BlobReader`).
    """
    tree, deferred = _parse(cls, url, text, overrides)
    context = dict(ctx or {})
    initial = initial_state(context.get("config")) if callable(initial_state) else initial_state
    with reading_blobs(
        _fs.split_url(url)[0],
        ctx=context,
        initial=initial,
        map_location=map_location,
        verify=verify,
        rank=rank,
        world_size=world_size,
        per_rank_reinit=per_rank_reinit,
        reshard=reshard,
        file_checksums=file_checksums,
    ):
        is_state = state if state is not None else initial_state is not None
        return _build(
            cls,
            tree,
            text,
            url,
            overrides,
            ignore_extra_fields,
            state=is_state,
            initial=initial if is_state else None,
            prepare=_filler(deferred),
            log_changes=rank == 0,  # under torchrun, said once
        )


def _build(
    cls: type[T],
    tree: Any,
    text: str | None,
    file: str,
    overrides: Sequence[str] | None,
    ignore_extra_fields: bool,
    *,
    state: bool = False,
    initial: Any = None,
    prepare: Callable[[Any], None] | None = None,
    log_changes: bool = True,
) -> T:
    node = struct_schema(cls)
    # Only a file can be at an old version: a config built from the defaults is current.
    if text is not None:
        try:
            tree = upgrade(node, tree)
        except ConfigError as e:
            raise ConfigError(_place(list(e.issues), text, file, {}), context=e.context) from None
    applied: dict[ValuePath, str] = {}
    bad_overrides: list[Issue] = []
    if overrides:
        # Bad overrides are skipped so that the typed load can report its own problems
        # too: the user sees everything wrong with one command line at once.
        tree, applied, bad_overrides = apply_overrides_collect(
            node, tree, overrides, schedules=scheduled.parse
        )
    result = from_value(
        node,
        tree,
        ignore_extra_fields=ignore_extra_fields,
        collect=True,
        schedules=scheduled.parse,
        # A Lazy field decoded later, on first access, places its issues in the file too.
        place=lambda issues: _place(issues, text, file, applied),
        state=state,
        initial=initial,
        prepare=prepare,
    )
    if result.issues or bad_overrides:
        raise ConfigError(bad_overrides + _place(result.issues, text, file, applied))
    value: T = result.value
    if log_changes:
        _log_code_changes(node.name, file, result.taken, result.dropped)
    if result.schedules:
        set_schedules(value, result.schedules)
    return value


def _parse(
    cls: type[Any], url: str, text: str, overrides: Sequence[str] | None
) -> tuple[Any, dict[str, ron.Deferred]]:
    """The value tree of ``text``; for a ``Lazy`` state, its lazy fields still unparsed.

    The text of a field that loads on access (tensors, ``Serializable`` values...) is
    only skipped over here (a scan in C, much faster than parsing) and parsed when the
    field is first read, so that opening a state with many tensors does not parse all
    their references. Where the tree is rewritten before the typed load (an upgrade from
    an older version, an override into the field), the whole text is parsed.
    """
    node = struct_schema(cls)
    fields = set(node.lazy_fields)
    if fields:
        fields.difference_update(f.name for f in node.fields if needs_upgrade_pass(f.type))
        for override in overrides or ():
            try:
                head = parse_override(override).path[0]
            except ConfigError:
                return ron.loads(text, path=url), {}  # reported by the typed load
            fields.discard(head if isinstance(head, str) else "")
    if not fields:
        return ron.loads(text, path=url), {}
    tree, deferred = ron.loads_deferred(text, fields, path=url)
    if deferred and node.version is not None:
        found = tree.fields.get("version", 0) if isinstance(tree, ron.Struct) else None
        if found != node.version or type(found) is not int:
            return ron.loads(text, path=url), {}  # the upgrade rules may rewrite anything
    return tree, deferred


def _filler(deferred: dict[str, ron.Deferred]) -> Callable[[Any], None] | None:
    """What a ``Lazy`` field runs before its first decode: parse its skipped text into
    the empty container that stands for it (errors keep their ``file:line:col``)."""
    if not deferred:
        return None
    by_container = {id(d.value): d for d in deferred.values()}

    def fill(raw: Any) -> None:
        found = by_container.get(id(raw))
        if found is not None:
            found.fill()

    return fill


def _log_code_changes(
    name: str, file: str, taken: list[ValuePath], dropped: list[ValuePath]
) -> None:
    """Say which fields of a state the code has gained or lost since ``file`` was written."""
    if taken:
        log.info(
            "%s: fields not in the checkpoint, taken from initial_state: %s",
            file,
            ", ".join(map(format_path, taken)),
        )
    if dropped:
        renamed = (
            "; if one of them was renamed, make the class Versioned with a RenameField "
            "rule to keep its value (docs/state.md)"
            if taken
            else ""
        )
        log.warning(
            "%s: fields of the checkpoint that %s no longer has, ignored: %s%s",
            file,
            name,
            ", ".join(map(format_path, dropped)),
            renamed,
        )


def _place(
    issues: list[Issue],
    text: str | None,
    file: str,
    applied: dict[ValuePath, str],
) -> list[Issue]:
    """Attach to each issue the override that set its value, or its place in the file:
    the place of the value, or of its field name or key for an issue ``about_key``."""
    values: dict[Any, tuple[int, int]] = {}
    keys: dict[Any, tuple[int, int]] = {}
    from_file = [i for i in issues if _override_of(i.path, applied) is None]
    if text is not None and from_file:
        value_paths = [i.path for i in from_file if not i.about_key]
        key_paths = [i.path for i in from_file if i.about_key]
        if value_paths:
            values = ron.locate(text, value_paths, path=file)
        if key_paths:
            keys = ron.locate(text, key_paths, path=file, at_key=True)
    placed = []
    for issue in issues:
        override = _override_of(issue.path, applied)
        positions = keys if issue.about_key else values
        location = None
        if override is None and issue.path in positions:
            line, col = positions[issue.path]
            location = f"{file}:{line}:{col}"
        placed.append(dataclasses.replace(issue, location=location, override=override))
    return placed


def _override_of(path: ValuePath, applied: dict[ValuePath, str]) -> str | None:
    for i in range(len(path), -1, -1):
        override = applied.get(path[:i])
        if override is not None:
            return override
    return None
