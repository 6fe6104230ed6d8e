"""Lightning checkpoints written as hyperstate checkpoints: no pickle, crash-safe, readable.

``Trainer(plugins=[HyperstateCheckpointIO()])`` (or ``Fabric(plugins=[...])``) makes every
checkpoint Lightning saves a hyperstate checkpoint: the checkpoint dict in ``state.ron``
(numbers, strings, the optimizer's ``param_groups``, the loops' progress, the callbacks'
state, the hyperparameters, all as text), its tensors in a safetensors blob file, and
``COMMITTED`` written last. Any fsspec URL works. See docs/integrations.md.

The path Lightning names (``checkpoints/epoch=0-step=100.ckpt``, ``checkpoints/last.ckpt``)
becomes a directory that holds the checkpoint as its one committed checkpoint, numbered by
the trainer's ``global_step``::

    checkpoints/last.ckpt/
        step-000000000100/
            state.ron
            blobs/rank-00000.safetensors
            COMMITTED

The extra level is what makes overwriting safe: Lightning saves ``last.ckpt`` again and
again, and the new save goes into a directory of its own beside the old one, so the old
checkpoint stays whole and loadable until the new one is committed (see
:meth:`HyperstateCheckpointIO.save_checkpoint`). ``hyperstate show``, ``verify``, ``diff``,
``ls`` and ``convert`` take the path as they take any run directory.

``LightningModule.load_from_checkpoint`` reads its path with ``torch.load`` itself, not
through the plugin; :func:`load_from_checkpoint` is its counterpart for these checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import os
import pathlib
import posixpath
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

try:
    from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
except ImportError as _missing:  # pragma: no cover - the extra is not installed
    raise ImportError(
        "hyperstate.integrations.lightning needs Lightning: pip install 'hyperstate[lightning]'"
    ) from _missing

import numpy as np
import torch

from hyperstate import _fs, ron
from hyperstate.distributed.collectives import Ranks
from hyperstate.distributed.save import CheckpointSave
from hyperstate.errors import (
    ConfigError,
    Issue,
    StateError,
    StorageError,
    ValuePath,
    format_value,
)
from hyperstate.serde import decode_plain, encode_plain
from hyperstate.storage import STATE_FILE, CheckpointInfo, CheckpointStore, RetentionPolicy
from hyperstate.tensors.context import reading_blobs

if TYPE_CHECKING:
    import lightning.pytorch as pl

__all__ = ["HyperstateCheckpointIO", "load_from_checkpoint"]

log = logging.getLogger("hyperstate")

_Loaded = TypeVar("_Loaded", bound="pl.LightningModule | pl.LightningDataModule")

# Values written as they are: each one reads back as the same value of the same type.
_PLAIN = (type(None), bool, int, float, str, bytes)
_WRITTEN = (
    "a tensor, a numpy array, an int, float, str, bytes, bool or None, "
    "or a list, tuple or dict of them"
)
_BAD_KEY = "expected a key that is a str, int, float, bool, None, bytes or a tuple of them"


class HyperstateCheckpointIO(CheckpointIO):
    """A Lightning ``CheckpointIO`` that saves each checkpoint as a hyperstate checkpoint.

    Pass it to a ``Trainer`` or to ``Fabric``; ``ModelCheckpoint``, ``trainer.fit(...,
    ckpt_path="last")``, ``trainer.save_checkpoint`` and ``fabric.save``/``fabric.load``
    then go through it::

        trainer = Trainer(plugins=[HyperstateCheckpointIO()], callbacks=[ModelCheckpoint(...)])
        trainer.fit(model, data, ckpt_path="last")

    Each path Lightning names is a directory holding one committed checkpoint, numbered by
    the checkpoint's ``global_step`` (``last.ckpt/step-000000000100/``). Its ``state.ron``
    holds the checkpoint dict as a RON map; its tensors are in
    ``blobs/rank-00000.safetensors``. Only a global rank 0 saves (Lightning calls the
    plugin there), so one blob file holds every tensor.

    Loading gives back the dict that was saved: tensors as tensors (tensors that shared
    memory share it again), numpy arrays as arrays, ints, floats, strings, bytes, bools,
    None, lists, tuples and dicts as themselves, with their keys (int keys such as an
    optimizer state's parameter indices, and any string, such as the state key of a
    callback, ``"ModelCheckpoint{'monitor': None, ...}"``). Other mappings
    (``OrderedDict``, Lightning's ``AttributeDict``) come back as plain dicts, and a
    state dict's ``_metadata`` attribute (module versions) is not kept. A value of any
    other type is refused when saving, with its path in the dict: nothing is pickled.
    """

    def save_checkpoint(
        self,
        checkpoint: dict[str, Any],
        path: str | os.PathLike[str],
        storage_options: Any | None = None,
    ) -> None:
        """Save ``checkpoint`` as the committed checkpoint at ``path`` (a directory).

        A save is atomic: when it fails or is killed at any moment, ``path`` still holds
        what it held before (the previous checkpoint, or nothing), and what the failed
        save had written is never taken for a checkpoint. It goes so:

        * ``path`` is new: on local disk the checkpoint is written and committed in a
          hidden sibling directory, ``.<name>.hyperstate-tmp``, which is then renamed to
          ``path`` (one atomic rename), so ``path`` appears complete or not at all and
          Lightning, which finds checkpoints by name, never sees half a one. On other
          filesystems, which have no atomic rename of a directory, the checkpoint is
          written in place: ``path`` holds nothing loadable until ``COMMITTED`` is written.
        * ``path`` holds a checkpoint (Lightning saves ``last.ckpt`` again): the new one
          is written into a new numbered directory beside the old one and committed;
          only then is the old one deleted (its ``COMMITTED`` first). Until that commit,
          loading ``path`` gives the old checkpoint; from then on, the new one.

        Leftovers of a killed save are removed by the next save to the same path. A
        symbolic link at ``path`` (``ModelCheckpoint(save_last="link")``) is removed and
        the new checkpoint written in its place; the checkpoint it pointed to is left
        alone (a save that fails then leaves no link).

        Args:
            checkpoint: the dict Lightning (or ``fabric.save``) made.
            path: where Lightning saves it: a local path or fsspec URL.
            storage_options: not supported (fsspec's own configuration sets the
                options of a filesystem); must be None.

        Raises:
            ConfigError: a value that cannot be written without pickle, named by its
                path in ``checkpoint``; nothing is written then.
            StorageError: ``path`` is a file (say, a checkpoint ``torch.save`` wrote), or
                the storage failed; ``path`` holds what it held before.
        """
        url = _url(path)
        if storage_options is not None:
            raise StorageError(
                "save",
                url,
                f"expected storage_options=None, found {format_value(storage_options)}: "
                "configure the filesystem through fsspec (its config or environment)",
            )
        issues: list[Issue] = []
        if not isinstance(checkpoint, Mapping):
            issues.append(Issue((), f"expected a dict, found {_type_name(checkpoint)}"))
        else:
            _check_writable(checkpoint, (), set(), issues)
        if issues:
            raise ConfigError(issues, context=f"checkpoint {url}: nothing was saved")
        started = time.monotonic()
        fs, fs_path = _fs.url_to_fs(url)
        if fs.isfile(fs_path):
            raise StorageError(
                "save",
                url,
                "expected a checkpoint directory or nothing, found a file (a checkpoint "
                "torch.save wrote?); remove it or save elsewhere",
            )
        local = _fs.is_local(fs)
        if local and os.path.islink(fs_path):
            # ModelCheckpoint(save_last="link") links last.ckpt to another checkpoint: a
            # save replaces the link, and never writes into the checkpoint it points to.
            try:
                os.unlink(fs_path)
            except OSError as exc:
                raise StorageError("save", url, str(exc) or type(exc).__name__) from exc
        store = CheckpointStore(url)
        if local and not fs.exists(fs_path):
            info = _save_new(checkpoint, store, fs_path, _number(checkpoint, None))
        else:
            info = _write(store, _number(checkpoint, store.latest()), checkpoint)
            store.retain(RetentionPolicy(keep_last=1))
            store.cleanup_uncommitted()
            if local:
                _remove(_staging(fs_path), fs=fs)
        size = sum(entry.size for entry in info.manifest.files.values())
        log.info(
            "saved checkpoint %d (%d bytes) to %s in %.3f s",
            info.number,
            size,
            info.path,
            time.monotonic() - started,
        )

    def load_checkpoint(
        self,
        path: str | os.PathLike[str],
        map_location: Any | None = None,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """The checkpoint dict saved at ``path``.

        Every blob entry read is checked against its checksum. Nothing is unpickled,
        whatever ``weights_only`` says: the file holds no pickle to run.

        Args:
            path: a directory :meth:`save_checkpoint` wrote (a local path or fsspec URL).
            map_location: the device every tensor is loaded to (``"cpu"``,
                ``torch.device("cuda", 1)``); None puts each one back on the device it
                was saved from, or on the CPU when this process has no such device.
            weights_only: accepted for Lightning's sake; has no effect.

        Raises:
            StorageError: ``path`` holds no committed checkpoint (nothing there, or a
                save that never committed), or a file of it is missing.
            BlobError: a tensor's bytes do not match their checksum.
            StateError: ``map_location`` is not a device.
        """
        url = _url(path)
        device = _device(map_location, url)
        info = _newest(url)
        state_url = f"{info.path}/{STATE_FILE}"
        data = _fs.read_bytes(state_url, within=info.path)
        entry = info.manifest.files.get(STATE_FILE)
        if entry is not None and entry.checksum != _fs.checksum(data):
            log.warning("%s was edited since it was committed", state_url)
        tree = ron.loads(_fs.decode_text(data, state_url), path=state_url)
        checksums = {name: e.checksum for name, e in info.manifest.files.items()}
        with reading_blobs(info.path, map_location=device, file_checksums=checksums):
            loaded = decode_plain(tree)
        if not isinstance(loaded, dict):
            found = _type_name(loaded)
            raise StateError(f"expected a map (the checkpoint dict), found {found}", at=state_url)
        return loaded

    def remove_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Delete the checkpoint at ``path``; nothing there is not an error.

        Its ``COMMITTED`` goes first, so a removal that is cut short leaves nothing that
        loads. A file at ``path`` (a checkpoint ``torch.save`` wrote) is deleted too, as
        Lightning's own plugin would; a symbolic link is removed, not what it points to.
        """
        url = _url(path)
        fs, fs_path = _fs.url_to_fs(url)
        if _fs.is_local(fs) and os.path.islink(fs_path):
            # A link (ModelCheckpoint(save_last="link")): the checkpoint it points to is
            # another path's, not this one's to delete.
            try:
                os.unlink(fs_path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise StorageError("delete", url, str(exc) or type(exc).__name__) from exc
            return
        if fs.isdir(fs_path):
            store = CheckpointStore(url)
            for info in store.list():
                store.delete(info.number)
        _remove(fs_path, url=url, fs=fs)
        log.debug("removed checkpoint %s", url)


def load_from_checkpoint(
    cls: type[_Loaded],
    checkpoint_path: str | os.PathLike[str],
    map_location: Any | None = None,
    strict: bool | None = None,
    **kwargs: Any,
) -> _Loaded:
    """``cls.load_from_checkpoint(path)`` for a checkpoint :class:`HyperstateCheckpointIO` saved.

    ``LightningModule.load_from_checkpoint`` opens its path with ``torch.load`` (it does
    not ask the trainer's plugin), which cannot read a directory. This function reads the
    checkpoint with :meth:`HyperstateCheckpointIO.load_checkpoint` and hands it to the
    code behind Lightning's ``load_from_checkpoint``: the module is built from the saved
    hyperparameters (``kwargs`` override them), ``on_load_checkpoint`` is called, the
    state dict loaded (``strict`` as in Lightning), and the module moved to the device
    of its tensors. A ``LightningDataModule`` class works as in Lightning.

    >>> model = load_from_checkpoint(MyModel, "checkpoints/last.ckpt")  # doctest: +SKIP

    Args:
        cls: the ``LightningModule`` (or ``LightningDataModule``) class.
        checkpoint_path: the checkpoint's directory (a local path or fsspec URL).
        map_location: as for :meth:`HyperstateCheckpointIO.load_checkpoint`.
        strict: whether the state dict's keys must match the module's.
        **kwargs: arguments of ``cls`` that replace the saved hyperparameters.
    """
    # Lightning's own steps of LightningModule.load_from_checkpoint after torch.load: the
    # migration of older checkpoints, and the construction and loading of the module.
    from lightning.pytorch import LightningModule
    from lightning.pytorch.core.saving import _load_state
    from lightning.pytorch.utilities.migration.utils import _pl_migrate_checkpoint

    checkpoint = HyperstateCheckpointIO().load_checkpoint(checkpoint_path, map_location)
    checkpoint = _pl_migrate_checkpoint(checkpoint, checkpoint_path=os.fspath(checkpoint_path))
    checkpoint.setdefault(cls.CHECKPOINT_HYPER_PARAMS_KEY, {}).update(kwargs)
    loaded = _load_state(cast(Any, cls), checkpoint, strict=strict, **kwargs)
    if isinstance(loaded, LightningModule):
        tensors = (v for v in checkpoint.get("state_dict", {}).values() if torch.is_tensor(v))
        first = next(tensors, None)
        if first is not None:
            loaded = loaded.to(first.device)
    return cast(_Loaded, loaded)


# ---------------------------------------------------------------------------------------


def _url(path: str | os.PathLike[str]) -> str:
    return os.fspath(path).rstrip("/") or "/"


def _staging(fs_path: str) -> str:
    """The hidden sibling where a new checkpoint directory is written before its rename.

    Not named ``*.ckpt``: Lightning's search for ``last*.ckpt`` passes it over.
    """
    parent, name = posixpath.split(fs_path)
    return posixpath.join(parent, f".{name}.hyperstate-tmp")


def _number(checkpoint: Mapping[str, Any], latest: CheckpointInfo | None) -> int:
    """The trainer's ``global_step``, or one past the checkpoint there now when that is
    not lower (a second save at the same step; a ``fabric.save`` with no step)."""
    step = checkpoint.get("global_step")
    number = step if type(step) is int and step >= 0 else 0
    if latest is not None and number <= latest.number:
        number = latest.number + 1
    return number


def _write(store: CheckpointStore, number: int, checkpoint: Mapping[str, Any]) -> CheckpointInfo:
    """Commit ``checkpoint`` as checkpoint ``number`` of ``store``: the one save path."""
    save = CheckpointSave(Ranks.alone(), store, number)
    save.prepare(lambda: encode_plain(checkpoint))
    return save.finish({})


def _save_new(
    checkpoint: Mapping[str, Any], store: CheckpointStore, fs_path: str, number: int
) -> CheckpointInfo:
    """Write a checkpoint where there is none yet (local disk): commit it in the staging
    sibling, then rename that to ``fs_path`` (the root of ``store``)."""
    staging = _staging(fs_path)
    parent = posixpath.dirname(fs_path)
    try:
        os.makedirs(parent, exist_ok=True)
        _remove(staging)  # left by a save that was killed
        info = _write(CheckpointStore(staging), number, checkpoint)
        os.rename(staging, fs_path)
        _fs.fsync_dir(parent)
    except BaseException as exc:
        with contextlib.suppress(StorageError):  # what _remove raises: keep the first error
            _remove(staging)
        if isinstance(exc, OSError):
            raise StorageError("save", store.url, str(exc) or type(exc).__name__) from exc
        raise
    return CheckpointInfo(info.number, store.path(info.number), info.manifest)


def _remove(fs_path: str, *, url: str | None = None, fs: Any = None) -> None:
    """Delete a file or a directory tree; nothing there is fine."""
    if fs is None:
        fs = _fs.url_to_fs(fs_path)[0]
    try:
        if fs.exists(fs_path):
            fs.rm(fs_path, recursive=True)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StorageError("delete", url or fs_path, str(exc) or type(exc).__name__) from exc


def _newest(url: str) -> CheckpointInfo:
    """The newest committed checkpoint in ``url`` that has all its files."""
    store = CheckpointStore(url)
    problems: list[str] = []
    for info in reversed(store.list()):
        fatal = [str(p) for p in store.quick_check(info) if p.fatal]
        if not fatal:
            return info
        log.warning("skipping checkpoint %s: %s", info.path, "; ".join(fatal))
        problems.extend(fatal)
    fs, fs_path = _fs.url_to_fs(url)
    if problems:
        reason = "no committed checkpoint with all its files: " + "; ".join(problems)
    elif not fs.exists(fs_path):
        reason = "no such checkpoint directory"
    elif fs.isfile(fs_path):
        reason = (
            "expected a checkpoint directory that HyperstateCheckpointIO saved, found a file "
            "(a checkpoint torch.save wrote?)"
        )
    else:
        uncommitted = len(store.uncommitted())
        reason = "expected a committed checkpoint in the directory, found none" + (
            f" ({uncommitted} uncommitted: a save that was killed)" if uncommitted else ""
        )
    raise StorageError("load", url, reason)


def _device(map_location: Any, url: str) -> str | torch.device | None:
    if map_location is None or isinstance(map_location, str | torch.device):
        return map_location
    raise StateError(
        f"expected map_location to be a device (such as 'cpu' or torch.device('cuda', 0)) "
        f"or None, found {format_value(map_location)}",
        at=f"load {url}",
    )


def _type_name(value: Any) -> str:
    cls = type(value)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _check_writable(value: Any, where: ValuePath, open_ids: set[int], issues: list[Issue]) -> None:
    """Add an issue for every value under ``value`` that would not read back as itself.

    ``encode_plain`` writes more than this admits (an enum as its name, a dataclass as a
    struct, a path as a string), since a typed load turns those back; this dict is loaded
    untyped, so they would come back as other types.
    """
    kind = type(value)
    if kind in _PLAIN:
        return
    if kind is list or kind is tuple or isinstance(value, Mapping):
        if len(where) >= ron.MAX_DEPTH:  # RON's own limit: deeper would not read back
            deep = f"expected at most {ron.MAX_DEPTH} levels of nesting, found more"
            issues.append(Issue(where, deep))
            return
        if id(value) in open_ids:
            issues.append(Issue(where, "expected a tree of values, found a container in itself"))
            return
        open_ids.add(id(value))
        items = value.items() if isinstance(value, Mapping) else enumerate(value)
        for key, item in items:  # a list's keys are its indices, always good keys
            if not _is_key(key):
                found = f"{_type_name(key)} {_shown(key)}"
                issues.append(Issue((*where, key), f"{_BAD_KEY}, found {found}", about_key=True))
            _check_writable(item, (*where, key), open_ids, issues)
        open_ids.discard(id(value))
        return
    if isinstance(value, torch.Tensor) or kind is np.ndarray:
        return  # the node of tensors writes it, or says why not
    issues.append(
        Issue(
            where,
            f"expected {_WRITTEN} (hyperstate writes no pickle), "
            f"found {_type_name(value)} {_shown(value)}",
            hint=_hint(value, where),
        )
    )


def _shown(value: Any) -> str:
    """The start of a value's repr, for a message: one line, at most 80 characters."""
    try:
        text = format_value(value)
    except Exception:  # a broken __repr__ must not hide the error being reported
        return "(repr failed)"
    first = text.splitlines()[0] if text else text
    return first if len(first) <= 80 and first == text else first[:77] + "..."


def _is_key(key: Any) -> bool:
    if type(key) in _PLAIN:
        return True
    return type(key) is tuple and all(_is_key(k) for k in key)


def _hint(value: Any, where: ValuePath) -> str | None:
    """What to save instead of ``value``."""
    hint = None
    if isinstance(value, enum.Enum):
        hint = "save its .value (or .name) and turn it back into the enum when loading"
    elif isinstance(value, pathlib.PurePath):
        hint = "save str(path)"
    elif dataclasses.is_dataclass(value):
        hint = "save dataclasses.asdict(...)"
    elif isinstance(value, tuple):
        hint = "save tuple(...)" + (" or ._asdict()" if hasattr(value, "_asdict") else "")
    elif isinstance(value, torch.dtype | torch.device):
        hint = "save str(...)"
    elif isinstance(value, np.generic):
        hint = "save .item(), a Python number"
    elif isinstance(value, set | frozenset):
        hint = "save sorted(...) as a list"
    if len(where) > 1 and where[0] == "hyper_parameters" and isinstance(where[1], str):
        leave = f"self.save_hyperparameters(ignore=[{where[1]!r}])"
        hint = f"{hint}, or leave it out with {leave}" if hint else f"leave it out with {leave}"
    return hint
