"""Live edits: change the hyperparameters of a running experiment without a restart.

``hyperstate set RUN_DIR optimizer.lr=1e-4`` (or :func:`request_edit`) writes an edit
request into ``RUN_DIR/edits/``. The running ``HyperState`` looks for requests at its
``step()`` (at most every few seconds), validates each like command-line overrides,
applies it, logs old -> new, and writes the outcome next to the request
(``NAME.applied`` or ``NAME.rejected`` with the reason). A bad edit never stops the run.
The next checkpoint's ``config.ron`` records the new values.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Sequence
from typing import Any

from hyperstate import _fs, ron, scheduled
from hyperstate.errors import ConfigError, HyperstateError
from hyperstate.overrides import apply_overrides
from hyperstate.scheduled import schedules, set_schedules, with_schedule_text
from hyperstate.serde import from_value, to_value
from hyperstate.storage import EDITS_DIR as _EDITS_DIR
from hyperstate.typeinfo import struct_schema

__all__ = ["EDITS_DIR", "apply_edit_requests", "request_edit"]

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
