"""Live edits: change the hyperparameters of a running experiment without a restart.

``hyperstate set RUN_DIR optimizer.lr=1e-4`` (or :func:`request_edit`) writes an edit
request into ``RUN_DIR/edits/``. The running ``HyperState`` looks for requests at its
``step()`` (at most every few seconds), validates each like command-line overrides,
applies it, logs old -> new, and writes the outcome next to the request
(``NAME.applied`` or ``NAME.rejected`` with the reason). A bad edit never stops the run.
The next checkpoint's ``config.ron`` records the new values.

The command checks an edit before it writes the request (:func:`check_edit`), against
the ``config.ron`` of the run's newest committed checkpoint, and can wait for the
outcome (:func:`wait_for_edit`).
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hyperstate import _fs, ron, scheduled
from hyperstate.errors import (
    ConfigError,
    HyperstateError,
    Issue,
    PathSegment,
    ScheduleError,
    format_int,
    format_path,
)
from hyperstate.overrides import Override, apply_overrides, parse_override
from hyperstate.schedule import looks_like_schedule
from hyperstate.scheduled import schedules, set_schedules, with_schedule_text
from hyperstate.serde import did_you_mean, from_value, to_value
from hyperstate.storage import CONFIG_FILE, CheckpointInfo, CheckpointStore
from hyperstate.storage import EDITS_DIR as _EDITS_DIR
from hyperstate.typeinfo import struct_schema

__all__ = [
    "EDITS_DIR",
    "EditOutcome",
    "apply_edit_requests",
    "check_edit",
    "edit_outcome",
    "request_edit",
    "wait_for_edit",
]

EDITS_DIR = _EDITS_DIR  # where requests wait: see hyperstate.storage.EDITS_DIR
log = logging.getLogger("hyperstate")


def request_edit(run_dir: str | os.PathLike[str], overrides: Sequence[str]) -> str:
    """Ask the run writing checkpoints to ``run_dir`` to apply ``overrides``; return the
    request's path. The overrides are checked by the run, against its config class."""
    if not overrides:
        raise HyperstateError("an edit needs at least one path=value override")
    name = f"edit-{time.time_ns():020d}-{secrets.token_hex(3)}.ron"
    path = f"{os.fspath(run_dir).rstrip('/')}/{EDITS_DIR}/{name}"
    _fs.write_atomic(path, (ron.dumps(list(overrides)) + "\n").encode("utf-8"))
    return path


# ---------------------------------------------------------------------------------------
# Checking an edit before it is requested


def check_edit(run_dir: str | os.PathLike[str], overrides: Sequence[str]) -> CheckpointInfo:
    """Check ``overrides`` against the run of ``run_dir`` before requesting them; return
    the checkpoint they were checked against.

    The run's config class cannot be imported here, so the check uses what the
    ``config.ron`` of the newest committed checkpoint shows:

    * each path must lead to a field (or list item, or map entry) that the file has;
      an unknown field name gets a "did you mean" suggestion. A new map key, or a path
      into a value that the file leaves ``None`` or an empty ``Config()`` (an imported
      checkpoint), cannot be checked and is left to the run.
    * the value must be of the kind the field holds now: ``true``/``false`` (or ``1``/``0``)
      for a bool; an int for an int; a number or a schedule for a float, or for a field
      that holds a schedule now; a struct for a struct (its fields checked the same way,
      unless it names another struct); a list or tuple for a list or tuple, a map for a
      map (their items checked against the items the file has); a variant name for an
      enum. A string field takes any text, and ``None`` is taken for any field (whether a
      field is ``Optional`` does not show in the file). ``+=`` needs a list or a map.

    A union or ``Any`` field may hold another kind than the one the file shows: use
    :func:`request_edit` directly (``hyperstate set --no-check``) for such an edit. The
    run checks every request again against its config class, whatever was checked here.

    Raises:
        HyperstateError: ``run_dir`` is not a directory or holds no committed checkpoint.
        ConfigError: an override does not fit; every bad override is listed, each with
            its path and the override string.
    """
    if not overrides:
        raise HyperstateError("an edit needs at least one path=value override")
    url = os.fspath(run_dir).rstrip("/") or os.fspath(run_dir)
    fs, fs_path = _fs.url_to_fs(url)
    if not fs.isdir(fs_path):
        raise HyperstateError(f"{url}: no such directory; expected the checkpoint_dir of a run")
    info = CheckpointStore(url).latest()
    if info is None:
        raise HyperstateError(
            f"no committed checkpoint in {url}: expected the checkpoint_dir of a run that "
            "has saved at least once (an edit is checked against its config.ron)"
        )
    config_url = f"{info.path}/{CONFIG_FILE}"
    tree = ron.loads(_fs.read_text(config_url, within=info.path), path=config_url)
    issues: list[Issue] = []
    for text in overrides:
        try:
            override = parse_override(text)
        except ConfigError as e:
            issues.extend(e.issues)
            continue
        issue = _check_override(tree, override)
        if issue is not None:
            issues.append(issue)
    if issues:
        raise ConfigError(issues, context=f"the edit does not fit {config_url}")
    return info


class _Unknown(Exception):
    """The rest of a path goes where the file shows no value: the run checks it."""


def _check_override(tree: Any, override: Override) -> Issue | None:
    node = tree
    path: list[PathSegment] = []
    try:
        for seg in override.path:
            node, key = _child(_opened(node), seg, path)
            path.append(key)
    except _Unknown:
        return None
    except _Mismatch as e:
        return Issue((*path, *e.path), e.message, override=override.text, hint=e.hint)
    where = tuple(path)
    current = _opened(node)
    appendable = current is None or type(current) in (list, tuple, dict)
    if override.op == "+=" and not appendable:
        return Issue(
            where,
            f"'+=' appends to a list or merges into a map, found {_brief(current)}",
            override=override.text,
        )
    problem = _check_value(current, override.value, override.op)
    if problem is None:
        return None
    return Issue(
        (*where, *problem.path), problem.message, override=override.text, hint=problem.hint
    )


def _opened(node: Any) -> Any:
    while type(node) is ron.Some:
        node = node.value
    return node


class _Mismatch(Exception):
    """An override that does not fit what the file holds; ``path`` is below the override's."""

    def __init__(
        self, message: str, path: tuple[PathSegment, ...] = (), hint: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.hint = hint


def _child(node: Any, seg: Any, path: list[PathSegment]) -> tuple[Any, PathSegment]:
    """The value at path segment ``seg`` of ``node`` and its key."""
    raw = seg[0] if type(seg) is tuple else seg
    if node is None:
        raise _Unknown
    if type(node) is ron.Struct:
        if not node.fields:
            raise _Unknown  # `Config()`: the file lists no field
        name = format_int(raw) if type(raw) is int else str(raw)
        if name not in node.fields:
            known = list(node.fields)
            hint = did_you_mean(name, known) or f"fields: {', '.join(known)}"
            owner = node.name or format_path(path) or "the config"
            raise _Mismatch(f"unknown field '{name}' in {owner}", (name,), hint)
        return node.fields[name], name
    if type(node) is dict:
        for key, value in node.items():
            if key == raw or (type(key) is ron.Ident and key.name == raw) or str(key) == str(raw):
                return value, key
        raise _Unknown  # a new key: what it may hold does not show in the file
    items = node.items if type(node) is ron.TupleStruct else node
    if type(items) in (list, tuple):
        if type(raw) is not int or type(seg) is tuple:
            raise _Mismatch(f"expected a list index, found {raw!r}")
        if not -len(items) <= raw < len(items):
            raise _Mismatch(
                f"index {format_int(raw)} out of range for {format_path(path)} "
                f"(length {len(items)})",
                (raw,),
                hint=f"use '{format_path(path)}+=[...]' to append",
            )
        return items[raw % len(items)], raw % len(items)
    raise _Mismatch(f"expected a struct, list or map, found {_brief(node)} (no item {raw!r})")


_BOOL_WORDS = frozenset(["true", "false", "1", "0"])


def _check_value(current: Any, text: str, op: str) -> _Mismatch | None:
    """Whether the value text of an override fits what the file holds now (``current``)."""
    if current is None:
        return None  # an Optional left None: its type does not show
    number = type(current) in (int, float) or _is_schedule(current)
    if op == "=":
        if type(current) is bool and text.strip().lower() in _BOOL_WORDS:
            return None
        if type(current) is str and not number:
            return None  # bare words: any text is a string
    try:
        value = ron.loads(text, path="<override>")
    except ron.ParseError as e:
        if op == "=" and type(current) is ron.Ident:
            return None  # a bare word; whether it names a variant, the run checks
        if op == "=" and number and looks_like_schedule(text):
            return _schedule_problem(text)  # `lr=step: 3e-4@0 cos 0@1e5` needs no quotes
        return _Mismatch(
            f"cannot parse value {text!r} as {_kind(current)} (the file holds "
            f"{_brief(current)}): {e.msg} at column {e.col}"
        )
    return _fits(current, value)


def _fits(current: Any, value: Any) -> _Mismatch | None:
    """Whether ``value`` may stand where the file holds ``current``; the mismatch if not."""
    current, value = _opened(current), _opened(value)
    if current is None or value is None:
        return None
    ok: bool
    t = type(current)
    if t is bool:
        ok = type(value) is bool
    elif (t in (int, float) or _is_schedule(current)) and _is_schedule(value):
        return _schedule_problem(value)  # a schedule in quotes
    elif t is int:
        ok = type(value) is int
    elif t is float or _is_schedule(current):
        ok = type(value) in (int, float)  # a number field that holds a schedule now
    elif t is str:
        ok = type(value) is str
    elif t is ron.Ident:
        ok = type(value) in (ron.Ident, str)
    elif t is ron.Struct:
        if type(value) is not ron.Struct:
            ok = False
        elif value.name is not None and current.name is not None and value.name != current.name:
            return None  # another struct (a union): its fields do not show in the file
        else:
            for name, item in value.fields.items():
                if current.fields and name not in current.fields:
                    known = list(current.fields)
                    hint = did_you_mean(name, known) or f"fields: {', '.join(known)}"
                    return _Mismatch(
                        f"unknown field '{name}' in {current.name or 'the struct'}", (name,), hint
                    )
                if name in current.fields:
                    problem = _fits(current.fields[name], item)
                    if problem is not None:
                        return _Mismatch(problem.message, (name, *problem.path), problem.hint)
            return None
    elif t in (list, tuple, ron.TupleStruct):
        items = (
            list(value.items if type(value) is ron.TupleStruct else value)
            if type(value) in (list, tuple, ron.TupleStruct)
            else None
        )
        ok = items is not None
        if items is not None:
            known = list(current.items if t is ron.TupleStruct else current)
            return _items_fit(known, list(enumerate(items)))
    elif t is dict:
        ok = type(value) is dict or (type(value) is ron.Struct and value.name is None)
        if ok:
            entries = value.fields if type(value) is ron.Struct else value
            return _items_fit(list(current.values()), list(entries.items()))
    else:
        return None
    if ok:
        return None
    return _Mismatch(
        f"expected {_kind(current)} (the file holds {_brief(current)}), found {_brief(value)}"
    )


def _is_schedule(value: Any) -> bool:
    """Whether a value is schedule text: what a number field holding a schedule shows."""
    return type(value) is str and looks_like_schedule(value)


def _schedule_problem(text: str) -> _Mismatch | None:
    try:
        scheduled.parse(text)
    except ScheduleError as e:
        return _Mismatch(str(e).partition("\n")[0])
    return None


def _items_fit(known: list[Any], items: list[tuple[Any, Any]]) -> _Mismatch | None:
    """Items of a list or map fit when each fits one of the items the file has (the
    first few: a list of many numbers needs no more)."""
    if not known:
        return None
    known = known[:8]
    for key, item in items:
        problems = [_fits(k, item) for k in known]
        if all(p is not None for p in problems):
            first = problems[0]
            assert first is not None
            return _Mismatch(first.message, (key, *first.path), first.hint)
    return None


def _kind(value: Any) -> str:
    t = type(value)
    if t is bool:
        return "true or false"
    if t is int:
        return "an int"
    if t is float or _is_schedule(value):
        return "a number or a schedule"
    if t is str:
        return "a string"
    if t is ron.Ident:
        return "a variant name"
    if t is ron.Struct:
        return f"a struct {value.name}(...)" if value.name else "a struct (...)"
    if t in (list, tuple, ron.TupleStruct):
        return "a list or tuple"
    if t is dict:
        return "a map {...}"
    return f"a {t.__name__}"


def _brief(value: Any) -> str:
    """A value as a message shows it: a leaf as RON, a container by its kind."""
    value = _opened(value)
    t = type(value)
    if t is ron.Struct:
        return f"{value.name or ''}(...)"
    if t is ron.TupleStruct:
        return f"{value.name}(...)"
    if t is list:
        return "[...]" if value else "[]"
    if t is tuple:
        return "(...)" if value else "()"
    if t is dict:
        return "{...}" if value else "{}"
    try:
        text = ron.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------------------------
# Waiting for the outcome


@dataclass(frozen=True)
class EditOutcome:
    """What the run did with an edit request.

    Attributes:
        applied: True when it applied the edit, False when it rejected it.
        report: for an applied edit, one ``path: old -> new`` line per changed field
            (empty when nothing changed); for a rejected one, the reason.
    """

    applied: bool
    report: str


def edit_outcome(request: str) -> EditOutcome | None:
    """The outcome of ``request`` (a path :func:`request_edit` returned), None while the
    run has not handled it."""
    directory = request.rsplit("/", 1)[0]
    fs, fs_dir = _fs.url_to_fs(directory)
    fs.invalidate_cache(fs_dir)  # an object store's listing cache would never see it
    for suffix, applied in ((".applied", True), (".rejected", False)):
        try:
            text = _fs.read_text(request + suffix, within=directory)
        except FileNotFoundError:
            continue
        return EditOutcome(applied, text.strip())
    return None


def wait_for_edit(request: str, timeout: float) -> EditOutcome | None:
    """Wait until the run applied or rejected ``request``, at most ``timeout`` seconds;
    return the outcome, or None when there is none yet (the request stays pending).

    The run looks for requests at its ``step()``, at most every ``edit_check_seconds``.
    """
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        outcome = edit_outcome(request)
        if outcome is not None:
            return outcome
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        time.sleep(min(delay, left))
        delay = min(delay * 2, 1.0)


def apply_edit_requests(
    run_dir: str, config: Any, applied: list[list[str]] | None = None
) -> list[str]:
    """Apply pending edit requests of ``run_dir`` to ``config`` in place; return their paths.

    Each request is applied whole or not at all, oldest first. The overrides of each
    applied request are appended to ``applied`` (so that other ranks can apply them too,
    with :func:`apply_edit`).
    """
    fs, root = _fs.url_to_fs(f"{run_dir.rstrip('/')}/{EDITS_DIR}")
    try:
        names = sorted(fs.ls(root, detail=False))
    except FileNotFoundError:
        return []
    done = {n.rsplit(".", 1)[0] for n in names if n.endswith((".applied", ".rejected"))}
    handled = []
    for name in names:
        if not name.endswith(".ron") or name in done:
            continue
        try:
            overrides = _read_request(fs, name, root)
            changes = apply_edit(config, overrides)
        except Exception as e:  # whatever the request holds, the run goes on without it
            reason = str(e) if isinstance(e, HyperstateError) else f"{type(e).__name__}: {e}"
            log.warning("rejected live edit %s: %s", name, reason)
            fs.pipe_file(f"{name}.rejected", f"{reason}\n".encode())
        else:
            if applied is not None:
                applied.append(overrides)
            for path, (old, new) in changes.items():
                log.info("live edit %s: %s -> %s", path, old, new)
            report = "".join(f"{p}: {o!r} -> {n!r}\n" for p, (o, n) in changes.items())
            fs.pipe_file(f"{name}.applied", report.encode())
        handled.append(name)
    return handled


def _read_request(fs: Any, name: str, root: str) -> list[str]:
    # A regular file inside edits/ only, of bounded size: a FIFO must not hang the run.
    text = _fs.decode_text(_fs.read_from(fs, name, name, within=root), name)
    value = ron.loads(text, path=name)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise HyperstateError(f'{name}: expected a list of "path=value" strings')
    return value


def apply_edit(config: Any, overrides: list[str]) -> dict[str, tuple[Any, Any]]:
    """Apply ``overrides`` to ``config`` in place, all or none; return the changed fields.

    Returns ``{dotted path: (old, new)}``. Raises :class:`ConfigError` when an override
    does not fit, leaving ``config`` as it was.
    """
    node = struct_schema(type(config))
    tree = with_schedule_text(config, to_value(config))
    tree, _ = apply_overrides(node, tree, overrides, schedules=scheduled.parse)
    result = from_value(node, tree, collect=True, schedules=scheduled.parse)
    if result.issues:
        raise ConfigError(result.issues)
    new = result.value
    changes: dict[str, tuple[Any, Any]] = {}
    before = {**_flat(config, ""), **{_dotted(p): s.text for p, s in schedules(config).items()}}
    after = {**_flat(new, ""), **{_dotted(p): s.text for p, s in result.schedules.items()}}
    for key, value in after.items():
        if before.get(key) != value:
            changes[key] = (before.get(key), value)
    for name in getattr(type(config), "__dataclass_fields__", {}):
        object.__setattr__(config, name, getattr(new, name))  # keep the root object
    set_schedules(config, result.schedules)
    return changes


def _dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)


def _flat(obj: Any, prefix: str) -> dict[str, Any]:
    fields = getattr(type(obj), "__dataclass_fields__", None)
    if fields is None:
        return {prefix: obj}
    out: dict[str, Any] = {}
    for name in fields:
        out.update(
            _flat(getattr(obj, name), f"{prefix}{name}" if not prefix else f"{prefix}.{name}")
        )
    return out
