"""The start of a restore: rank 0 chooses what to resume from and sends it to every rank.

So that all ranks resume from the same checkpoint with the same config, rank 0 alone
looks at the storage, reads the chosen checkpoint's text files, and broadcasts them (as
JSON, which escapes a whole ``state.ron`` in C); every rank then decodes them itself
(:func:`decode_everywhere`), and a checkpoint whose blobs turn out corrupt on any rank
is skipped by all of them together.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from hyperstate import _fs
from hyperstate.distributed.collectives import Ranks
from hyperstate.errors import BlobError, StorageError
from hyperstate.storage import (
    COMMITTED,
    CONFIG_FILE,
    STATE_FILE,
    CheckpointInfo,
    CheckpointStore,
    Manifest,
    checkpoint_at,
)

__all__ = ["Corrupt", "Found", "decode_everywhere", "find"]

log = logging.getLogger("hyperstate")


@dataclass(frozen=True)
class Found:
    """What a run starts from: a checkpoint (``info`` and both texts), a config file
    (``config_text`` and its ``name``), or nothing (all None); and the newer checkpoints
    skipped because they failed the quick check (``skipped``: number -> reason)."""

    info: CheckpointInfo | None = None
    config_text: str | None = None
    state_text: str | None = None
    name: str | None = None
    skipped: dict[int, str] = field(default_factory=dict)


class Corrupt(Exception):
    """A checkpoint's blobs failed verification on some rank while it was decoded."""


def find(
    ranks: Ranks, store: CheckpointStore | None, path: str | None, skip: Collection[int] = ()
) -> Found:
    """Step ``find checkpoint``: the newest committed checkpoint of ``store`` that passes the
    quick check (every file there, at its size), except those in ``skip``; else ``path``;
    as rank 0 sees it, on every rank.

    ``path`` may be a config file, a checkpoint directory, or a run directory (one that
    holds checkpoints: its newest committed one that passes the quick check counts, as if
    its directory were given). A checkpoint taken from ``path`` that is in ``skip`` (it
    failed verification while it was decoded) is an error: the caller named it, so it is
    not silently replaced by another.

    Raises:
        StorageError: ``path`` is none of these (nothing there, or a directory without a
            committed checkpoint), or its checkpoint is in ``skip``.
    """

    def choose() -> bytes:
        found: dict[str, Any] = {"skipped": {}}
        # Reading never deletes: an uncommitted directory may be another process's save
        # in progress. The manager removes abandoned ones once it has committed.
        source, texts = None, None
        if store is not None:
            source, texts = _newest(store, skip, found["skipped"])
        if source is None and path is not None:
            source, texts = _at_path(path, skip)
        if source is not None and texts is not None:
            found |= {
                "number": source.number,
                "path": source.path,
                "manifest": source.manifest.dumps(),
                "config": _fs.decode_text(texts[CONFIG_FILE], f"{source.path}/{CONFIG_FILE}"),
                "state": _fs.decode_text(texts[STATE_FILE], f"{source.path}/{STATE_FILE}"),
            }
        elif path is not None:
            found |= {"name": path, "config": _read_config_file(path)}
        return json.dumps(found).encode()

    found = json.loads(ranks.run_on_coordinator("find checkpoint", choose))
    skipped = {int(n): reason for n, reason in found["skipped"].items()}
    if "number" in found:
        manifest = Manifest.loads(found["manifest"], f"{found['path']}/{COMMITTED}")
        info = CheckpointInfo(found["number"], found["path"], manifest)
        return Found(info, found["config"], found["state"], skipped=skipped)
    if "config" in found:
        return Found(None, found["config"], None, found["name"], skipped)
    return Found(skipped=skipped)


_Texts = dict[str, bytes]


def _newest(
    store: CheckpointStore, skip: Collection[int], skipped: dict[str, str] | None
) -> tuple[CheckpointInfo | None, _Texts | None]:
    """The newest committed checkpoint of ``store`` not in ``skip`` that passes the quick
    check, and its texts; those that fail it are logged (and put in ``skipped``)."""
    for info in reversed(store.list()):
        if info.number in skip:
            continue
        problems = [str(p) for p in store.quick_check(info) if p.fatal]
        if not problems:
            try:
                return info, _read_texts(info)
            except StorageError as e:
                problems.append(str(e))
        reason = "; ".join(problems)
        log.warning("skipping checkpoint %s: %s", info.path, reason)
        if skipped is not None:
            skipped[str(info.number)] = reason
    return None, None


def _at_path(path: str, skip: Collection[int]) -> tuple[CheckpointInfo | None, _Texts | None]:
    """The checkpoint that ``path`` names, as a checkpoint directory or a run directory;
    (None, None) when ``path`` is neither (a config file, or nothing)."""
    source = checkpoint_at(path)
    texts: _Texts | None = None
    if source is not None:
        texts = _read_texts(source)
    else:
        fs, fs_path = _fs.url_to_fs(path)
        if not fs.isdir(fs_path):
            return None, None
        # Checkpoints that fail the quick check are passed over here but not reported in
        # ``Found.skipped``: those numbers are the caller's store's, not this run's.
        run = CheckpointStore(path)
        source, texts = _newest(run, (), None)
        if source is None:
            uncommitted = len(run.uncommitted())
            raise StorageError(
                "find checkpoint",
                path,
                "expected a config file, a checkpoint directory or a run directory with a "
                "committed checkpoint, found a directory without one"
                + (f" ({uncommitted} uncommitted)" if uncommitted else ""),
            )
    if source.number in skip:
        why = skip.get(source.number) if isinstance(skip, Mapping) else None
        raise StorageError(
            "restore",
            source.path,
            "the checkpoint failed verification"
            + (f": {why}" if why else "")
            + "; give the directory of an earlier checkpoint as path",
        )
    return source, texts


def _read_config_file(path: str) -> str:
    try:
        return _fs.read_text(path)
    except FileNotFoundError:
        raise StorageError(
            "read config",
            path,
            "no such file or directory: expected a config file, a checkpoint directory "
            "or a run directory",
        ) from None


def _read_texts(info: CheckpointInfo) -> dict[str, bytes]:
    """The text files of checkpoint ``info``, warning about those edited since commit.

    Only regular files inside the checkpoint are read, of bounded size: a link to a file
    outside it is refused (a ``StorageError``), never quoted in an error.
    """
    texts = {
        name: _fs.read_bytes(f"{info.path}/{name}", within=info.path)
        for name in (CONFIG_FILE, STATE_FILE)
    }
    for name, data in texts.items():
        entry = info.manifest.files.get(name)
        if entry is not None and entry.checksum != _fs.checksum(data):
            log.warning("%s/%s was edited since it was committed", info.path, name)
    return texts


def decode_everywhere(ranks: Ranks, decode: Callable[[], Any], context: str) -> Any:
    """Step ``restore``: run ``decode()`` on every rank; return this rank's result.

    If the blobs read turned out corrupt or missing on any rank (a ``BlobError`` or a
    ``StorageError``), every rank raises :class:`Corrupt`, so that all of them skip the
    checkpoint together; any other error is raised as by :meth:`Ranks.run`.
    """
    result: list[Any] = []

    def run() -> bytes:
        try:
            result.append(decode())
        except (BlobError, StorageError) as e:
            return f"{type(e).__name__}: {e}".encode()
        return b""

    reports = ranks.run("restore", run, context=context)
    failures = {r: m.decode("utf-8", "replace") for r, m in enumerate(reports) if m}
    if failures:
        if ranks.distributed:
            raise Corrupt("; ".join(f"rank {r}: {m}" for r, m in failures.items()))
        raise Corrupt(failures[0])
    return result[0]
