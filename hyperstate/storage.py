"""Checkpoint directories on any fsspec filesystem: layout, commit protocol, discovery,
verification, retention.

A checkpoint is a directory ``<root>/step-000000012000/`` holding any files (``config.ron``,
``state.ron``, ``blobs/rank-00000.safetensors``, ...) and, written last, ``COMMITTED``: a
small RON document listing every file with its size and checksum. A directory without
``COMMITTED`` is not a checkpoint, on every backend: object stores have no atomic directory
rename, so the marker is the contract. On local disk every file and directory is fsync'd
before the marker, and the marker itself is written with tmp + rename + fsync.

Several writers (ranks) may contribute files before one commit: each writes its files into
the pending directory and reports ``(path, size, checksum)``; the one that commits records
them all and writes ``COMMITTED``.

>>> import tempfile
>>> store = CheckpointStore(tempfile.mkdtemp())
>>> pending = store.begin(12000)
>>> _ = pending.write_file("state.ron", b"State(step: 12000)")
>>> info = pending.commit()
>>> info.path.endswith("step-000000012000"), sorted(info.manifest.files)
(True, ['state.ron'])
>>> store.latest().number, store.verify(store.latest())
(12000, [])

This module knows nothing of configs, states or tensors; it moves files and keeps books.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime
import errno
import functools
import logging
import math
import os
import platform
import posixpath
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from hyperstate import _fs, ron
from hyperstate._fs import checksum
from hyperstate.errors import HyperstateError, StorageError, format_int, format_value
from hyperstate.tensors import codec

__all__ = [
    "BLOB_FILES",
    "COMMITTED",
    "CONFIG_FILE",
    "DCP_FILE",
    "EDITS_DIR",
    "FORMAT_VERSION",
    "STATE_FILE",
    "CheckpointInfo",
    "CheckpointStore",
    "FileEntry",
    "Manifest",
    "PendingCheckpoint",
    "Problem",
    "RetentionPolicy",
    "RetryPolicy",
    "RunInfo",
    "StorageError",
    "blob_file",
    "blob_file_beside",
    "checkpoint_at",
    "field_metric",
    "probe_file",
    "read_metric",
]

COMMITTED = "COMMITTED"
"""Name of the marker file that makes a directory a checkpoint."""

CONFIG_FILE = "config.ron"
"""The config of a checkpoint, as RON text."""

STATE_FILE = "state.ron"
"""The state of a checkpoint, as RON text with records of the tensors in blob files."""

DCP_FILE = "dcp.ron"
"""What ``torch.distributed.checkpoint`` knows of a checkpoint that it saved through
hyperstate and ``state.ron`` does not say (its entries' key paths), as RON text."""

EDITS_DIR = "edits"
"""The folder of a run directory where live edit requests wait (see ``hyperstate set``)."""


def probe_file(token: str) -> str:
    """The file that rank 0 of a job writes into the run directory, and every rank looks
    for, to check that all of them see it (``distributed/shared_storage.py``); ``token``
    is unique to the check, and rank 0 removes the file right after. Not a checkpoint:
    discovery never lists it.

    >>> probe_file("9f86d081884c7d65")
    '.probe-9f86d081884c7d65'
    """
    if not re.fullmatch(r"[0-9a-f]+", token):
        raise ValueError(f"a probe token is lowercase hex digits, got {token!r}")
    return f".probe-{token}"


BLOB_FILES = "blobs/rank-#####.safetensors"
"""The blob files of every rank, as a ``Grid`` record names them: ``#####`` is the rank."""


def blob_file(rank: int) -> str:
    """The blob file of ``rank`` in a checkpoint directory.

    >>> blob_file(3)
    'blobs/rank-00003.safetensors'
    """
    return codec.rank_file(BLOB_FILES, rank)


def blob_file_beside(text_file: str) -> str:
    """The blob file of a state written to ``text_file`` (a name) by ``hyperstate.dump``.

    >>> blob_file_beside("state.ron"), blob_file_beside("best.ron")
    ('blobs/rank-00000.safetensors', 'blobs/best-rank-00000.safetensors')
    """
    stem = text_file.rsplit(".", 1)[0]
    return blob_file(0) if stem == "state" else f"blobs/{stem}-rank-00000.safetensors"


FORMAT_VERSION = 1
"""Version of the checkpoint layout written into ``COMMITTED``."""

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
_CHUNK = 8 << 20
_MAX_INT = 1 << 63  # no real size or checkpoint number is larger
_PARALLEL_READS = 16  # manifests read at once from an object store (list())
# OSErrors that retrying cannot fix: the caller asked for something that is not there or
# not allowed. Everything else from a remote filesystem (timeouts, throttling, 5xx) is
# treated as transient.
_PERMANENT = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    FileExistsError,
)


@dataclass(frozen=True)
class RetryPolicy:
    """How transient errors of a remote filesystem are retried: exponential backoff.

    ``attempts`` counts the first try; the delay before try ``k`` (from 1) is
    ``min(initial_delay * factor ** (k - 1), max_delay)``.
    """

    attempts: int = 5
    initial_delay: float = 0.1
    factor: float = 2.0
    max_delay: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be at least 1, got {self.attempts}")

    def delays(self) -> Iterable[float]:
        """The sleeps between tries, one fewer than ``attempts``."""
        for k in range(self.attempts - 1):
            yield min(self.initial_delay * self.factor**k, self.max_delay)


@dataclass(frozen=True)
class FileEntry:
    """One file of a checkpoint as recorded in ``COMMITTED``."""

    size: int
    checksum: str


_UNKNOWN = "unknown"
_GIT_TIMEOUT = 10.0  # seconds; `git status` of a huge checkout on a slow disk


@dataclass(frozen=True)
class RunInfo:
    """Who made a checkpoint: the ``run: Run(...)`` field of ``COMMITTED``.

    Attributes:
        hyperstate: the version of hyperstate that committed it.
        torch: the version of torch in that process (``"unknown"`` if none is installed).
        python: the version of Python.
        world_size: how many ranks saved it together.
        hosts: the distinct host names of those ranks, in rank order (rank 0's first).
        argv: rank 0's command line, ``sys.argv``.
        git_commit: the commit of the git checkout that the script runs in, or
            ``"unknown"`` (not in a checkout, no ``git``, or ``git`` failed).
        git_dirty: whether that checkout had uncommitted changes to tracked files; None
            when unknown.
        wall_seconds: seconds from the start of the run's manager to the commit; None when
            no manager saved it (``hyperstate convert``).

    Older checkpoints have no ``run`` field: their :attr:`Manifest.run` is None.
    """

    hyperstate: str
    torch: str
    python: str
    world_size: int
    hosts: tuple[str, ...]
    argv: tuple[str, ...]
    git_commit: str = _UNKNOWN
    git_dirty: bool | None = None
    wall_seconds: float | None = None

    @classmethod
    def of_this_process(
        cls, *, world_size: int = 1, hosts: Sequence[str] = (), started: float | None = None
    ) -> RunInfo:
        """The facts of the running process; ``started`` is a ``time.monotonic()`` reading.

        ``hosts`` defaults to this host; names that repeat (several ranks on a host) are
        kept once. ``git`` runs once per process (with a timeout), on the first call.
        """
        names = list(dict.fromkeys(hosts or [socket.gethostname()]))
        commit, dirty = _git_state()
        return cls(
            hyperstate=_hyperstate_version(),
            torch=_torch_version(),
            python=platform.python_version(),
            world_size=world_size,
            hosts=tuple(names),
            argv=tuple(str(a) for a in getattr(sys, "argv", ())),
            git_commit=commit,
            git_dirty=dirty,
            wall_seconds=None if started is None else round(time.monotonic() - started, 3),
        )

    def to_value(self) -> ron.Struct:
        """The value tree written to ``COMMITTED``."""
        fields: dict[str, Any] = {
            "hyperstate": self.hyperstate,
            "torch": self.torch,
            "python": self.python,
            "world_size": self.world_size,
            "hosts": list(self.hosts),
            "argv": list(self.argv),
            "git_commit": self.git_commit,
            "git_dirty": self.git_dirty,
            "wall_seconds": self.wall_seconds,
        }
        return ron.Struct("Run", fields)

    @classmethod
    def from_value(cls, value: Any, where: str = "<string>") -> RunInfo:
        """Read the ``run`` field of ``COMMITTED``; raises :class:`StorageError` when it is
        malformed. Fields this version does not know are ignored; missing ones are unknown.
        """

        def bad(name: str, expected: str, found: Any) -> StorageError:
            return StorageError(
                "read manifest",
                where,
                f"run.{name}: expected {expected}, found {format_value(found)}",
            )

        if not isinstance(value, ron.Struct) or value.name not in (None, "Run"):
            raise StorageError(
                "read manifest", where, f"run: expected Run(...), found {format_value(value)}"
            )
        f = value.fields

        def text(name: str) -> str:
            v = f.get(name, _UNKNOWN)
            if not isinstance(v, str):
                raise bad(name, "a string", v)
            return v

        def texts(name: str) -> tuple[str, ...]:
            v = f.get(name, [])
            if not isinstance(v, list | tuple) or not all(isinstance(x, str) for x in v):
                raise bad(name, "a list of strings", v)
            return tuple(v)

        world_size = f.get("world_size", 1)
        if (
            not isinstance(world_size, int)
            or isinstance(world_size, bool)
            or not 0 < world_size < _MAX_INT
        ):
            raise bad("world_size", "an int in [1, 2**63)", world_size)
        dirty = f.get("git_dirty")
        if type(dirty) is ron.Some:
            dirty = dirty.value
        if dirty is not None and not isinstance(dirty, bool):
            raise bad("git_dirty", "true, false or None", dirty)
        seconds = f.get("wall_seconds")
        if type(seconds) is ron.Some:
            seconds = seconds.value
        if seconds is not None and (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not 0 <= seconds < math.inf
        ):
            raise bad("wall_seconds", "a number of seconds or None", seconds)
        return cls(
            hyperstate=text("hyperstate"),
            torch=text("torch"),
            python=text("python"),
            world_size=world_size,
            hosts=texts("hosts"),
            argv=texts("argv"),
            git_commit=text("git_commit"),
            git_dirty=dirty,
            wall_seconds=None if seconds is None else float(seconds),
        )


def _hyperstate_version() -> str:
    # The package's __version__ (what `hyperstate --version` says). The package is
    # imported whenever this module is, but importing it here would be an import cycle.
    version = getattr(sys.modules.get("hyperstate"), "__version__", None)
    return version if isinstance(version, str) else _distribution_version("hyperstate")


def _torch_version() -> str:
    # Without importing torch: a state with no tensors never needs it.
    torch = sys.modules.get("torch")
    version = getattr(torch, "__version__", None)
    return str(version) if version is not None else _distribution_version("torch")


def _distribution_version(name: str) -> str:
    from importlib import metadata  # only here: it is slow to import, and rarely needed

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return _UNKNOWN


@functools.cache
def _git_state() -> tuple[str, bool | None]:
    """The commit and dirtiness of the git checkout the script runs in: one ``git status``
    per process, ``("unknown", None)`` when that fails or takes too long."""
    script = os.path.abspath(sys.argv[0]) if getattr(sys, "argv", None) else ""
    directory = os.path.dirname(script) if os.path.isfile(script) else os.getcwd()
    try:
        done = subprocess.run(
            ["git", "status", "--porcelain=v2", "--branch", "--untracked-files=no"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT,
            stdin=subprocess.DEVNULL,
            # Never take the index lock: a `git commit` in that checkout must not fail.
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
            check=False,
        )
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError) as exc:
        _log.debug("no git commit for the run metadata: %s", exc)
        return _UNKNOWN, None
    commit = None
    dirty = False
    for line in done.stdout.splitlines():
        if line.startswith("# branch.oid "):
            commit = line.split()[2]
        elif line and not line.startswith("#"):
            dirty = True
    if done.returncode != 0 or commit is None or not re.fullmatch(r"[0-9a-f]{7,64}", commit):
        return _UNKNOWN, None  # not a checkout, or one with no commit yet
    return commit, dirty


@dataclass(frozen=True)
class Manifest:
    """The content of ``COMMITTED``: every file of the checkpoint, when it was made, and
    by what run.

    ``files`` maps paths relative to the checkpoint directory (``/``-separated) to their
    :class:`FileEntry`; ``run`` is None in checkpoints written before run metadata.
    """

    number: int
    files: Mapping[str, FileEntry]
    created: str
    format: int = FORMAT_VERSION
    run: RunInfo | None = None

    def dumps(self) -> str:
        """The RON text written to ``COMMITTED``."""
        files = {
            name: ron.Struct("File", {"size": e.size, "checksum": e.checksum})
            for name, e in sorted(self.files.items())
        }
        fields: dict[str, Any] = {
            "format": self.format,
            "number": self.number,
            "created": self.created,
        }
        if self.run is not None:
            fields["run"] = self.run.to_value()
        fields["files"] = files
        return ron.dumps(ron.Struct("Committed", fields)) + "\n"

    @classmethod
    def loads(cls, text: str, where: str = "<string>") -> Manifest:
        """Parse ``COMMITTED`` text; a malformed one raises :class:`StorageError`."""

        def bad(reason: str) -> StorageError:
            return StorageError("read manifest", where, reason)

        try:
            value = ron.loads(text, path=where)
        except HyperstateError as exc:
            raise bad(str(exc).partition("\n")[0]) from exc
        if not isinstance(value, ron.Struct) or value.name != "Committed":
            raise bad("expected Committed(...)")
        f = value.fields
        fmt, number, created, files = (f.get(k) for k in ("format", "number", "created", "files"))
        if not isinstance(fmt, int) or isinstance(fmt, bool):
            raise bad(f"expected an integer format, got {format_value(fmt)}")
        if fmt > FORMAT_VERSION:
            found = format_int(fmt)
            raise bad(f"format {found} is newer than this hyperstate reads ({FORMAT_VERSION})")
        if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number < _MAX_INT:
            raise bad(f"expected a checkpoint number in [0, 2**63), got {format_value(number)}")
        if not isinstance(created, str):
            raise bad(f"expected a string created, got {format_value(created)}")
        if not isinstance(files, dict):
            raise bad("expected a map of files")
        entries: dict[str, FileEntry] = {}
        for name, entry in files.items():
            if not isinstance(name, str):
                raise bad(f"expected a file name, got {format_value(name)}")
            try:
                _check_relpath(name)
            except ValueError as exc:
                raise bad(str(exc)) from exc
            ef = entry.fields if isinstance(entry, ron.Struct) else {}
            size, digest = ef.get("size"), ef.get("checksum")
            if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < _MAX_INT:
                found = format_value(size)
                raise bad(f"{name}: expected File(size: <int in [0, 2**63)>, ...), found {found}")
            if not isinstance(digest, str):
                raise bad(f"{name}: expected File(size: <int>, checksum: <str>)")
            entries[name] = FileEntry(size, digest)
        run = RunInfo.from_value(f["run"], where) if "run" in f else None
        return cls(number=number, files=entries, created=created, format=fmt, run=run)


@dataclass(frozen=True)
class CheckpointInfo:
    """A committed checkpoint: its number, its directory (URL or path), its manifest."""

    number: int
    path: str
    manifest: Manifest


@dataclass(frozen=True)
class Problem:
    """One finding of :meth:`CheckpointStore.verify`.

    ``kind`` is ``"edited"`` (a text file changed since commit: allowed, hand edits are
    a feature), ``"corrupted"`` (a binary file differs), ``"missing"`` or ``"unexpected"``
    (a file that ``COMMITTED`` does not list). ``str(problem)`` is the message.
    """

    path: str
    kind: Literal["edited", "corrupted", "missing", "unexpected"]
    message: str

    @property
    def fatal(self) -> bool:
        """Whether loading should refuse the checkpoint (everything but hand edits)."""
        return self.kind in ("corrupted", "missing")

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class RetentionPolicy:
    """Which committed checkpoints to keep; the rest are deleted by ``store.retain``.

    A checkpoint is kept if any rule keeps it: one of the ``keep_last`` newest, a number
    divisible by ``keep_every``, or one of the ``keep_best`` best by a metric the caller
    supplies (``mode="min"``: lower is better; NaN is worst). The newest one is always
    kept. With no rule set, everything is kept.

    >>> RetentionPolicy(keep_last=2, keep_every=100).keep([50, 100, 150, 200, 250])
    [100, 200, 250]
    >>> RetentionPolicy(keep_best=1, mode="max").keep([1, 2, 3], {1: 0.9, 2: 0.5, 3: 0.1})
    [1, 3]
    """

    keep_last: int | None = None
    keep_every: int | None = None
    keep_best: int | None = None
    mode: Literal["min", "max"] = "min"

    def __post_init__(self) -> None:
        for name in ("keep_last", "keep_every", "keep_best"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"RetentionPolicy.{name} must be a positive int, got {value!r}")
        if self.mode not in ("min", "max"):
            raise ValueError(f"RetentionPolicy.mode must be 'min' or 'max', got {self.mode!r}")

    def keep(self, numbers: Sequence[int], metrics: Mapping[int, float] | None = None) -> list[int]:
        """The numbers to keep, sorted, out of the committed ``numbers``.

        ``metrics`` gives the metric of each checkpoint for ``keep_best``; checkpoints
        without one are not candidates for best (other rules may still keep them).
        """
        ordered = sorted(set(numbers))
        if not ordered:
            return []
        if self.keep_last is None and self.keep_every is None and self.keep_best is None:
            return ordered
        kept = {ordered[-1]}
        if self.keep_last is not None:
            kept.update(ordered[-self.keep_last :])
        if self.keep_every is not None:
            kept.update(n for n in ordered if n % self.keep_every == 0)
        if self.keep_best is not None:
            if metrics is None:
                raise ValueError("RetentionPolicy.keep_best needs a metric per checkpoint")
            sign = 1.0 if self.mode == "min" else -1.0

            def badness(n: int) -> tuple[float, int]:
                m = float(metrics[n])
                # Ties go to the newer checkpoint.
                return (math.inf if math.isnan(m) else sign * m, -n)

            candidates = sorted((n for n in ordered if n in metrics), key=badness)
            kept.update(candidates[: self.keep_best])
        return sorted(kept)


def _check_relpath(relpath: str) -> str:
    """A path inside a checkpoint: relative, ``/``-separated, no ``..``; else ValueError."""
    _fs.check_relpath(relpath)
    if relpath == COMMITTED:
        raise ValueError(f"{COMMITTED} is written by commit() only")
    return relpath


def _is_text(relpath: str) -> bool:
    return relpath.endswith(".ron")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _fsync_path(path: str, directory: bool = False) -> None:
    if directory:
        _fs.fsync_dir(path)
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointStore:
    """The checkpoints under one root: a local path or an fsspec URL.

    ``prefix`` names the directories (``<prefix>-<number padded to 12 digits>``);
    ``retry`` says how transient errors of remote filesystems are retried (errors of the
    local disk are not: a full disk does not heal in a second). Every failure is raised as
    a :class:`StorageError` naming the operation and the file.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        prefix: str = "step",
        retry: RetryPolicy | None = None,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.]+", prefix):
            raise ValueError(f"checkpoint prefix must be letters, digits, '_' or '.': {prefix!r}")
        self.url = os.fspath(root).rstrip("/") or "/"
        self.prefix = prefix
        self.retry = retry if retry is not None else RetryPolicy()
        self._fs, root_path = _fs.url_to_fs(self.url)
        self._root = root_path.rstrip("/") or "/"
        self._local = _fs.is_local(self._fs)
        self._pattern = re.compile(re.escape(prefix) + r"-(\d{12,})")

    def __repr__(self) -> str:
        return f"CheckpointStore({self.url!r}, prefix={self.prefix!r})"

    # -- naming -------------------------------------------------------------------

    def dirname(self, number: int) -> str:
        """The directory name of checkpoint ``number``: ``step-000000012000``."""
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise ValueError(f"checkpoint number must be a non-negative int, got {number!r}")
        return f"{self.prefix}-{number:012d}"

    def path(self, number: int) -> str:
        """The URL (or local path) of checkpoint ``number``'s directory."""
        return f"{self.url}/{self.dirname(number)}"

    def _fs_dir(self, number: int) -> str:
        return posixpath.join(self._root, self.dirname(number))

    def _number_of(self, name: str) -> int | None:
        m = self._pattern.fullmatch(name)
        if m is None:
            return None
        number = int(m.group(1))
        # Only the canonical spelling counts, so one number has one directory.
        return number if self.dirname(number) == name else None

    # -- I/O with retries ---------------------------------------------------------

    def _call(self, operation: str, path: str, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn``; retry transient remote errors; wrap failures in StorageError."""
        delays = iter(() if self._local else self.retry.delays())
        while True:
            try:
                return fn(*args)
            except StorageError:
                raise
            except _PERMANENT as exc:
                raise StorageError(operation, self._url_of(path), _reason(exc)) from exc
            except OSError as exc:
                delay = next(delays, None)
                if delay is None:
                    raise StorageError(operation, self._url_of(path), _reason(exc)) from exc
                _log.warning("%s %s failed (%s); retrying in %.2fs", operation, path, exc, delay)
                time.sleep(delay)

    def _url_of(self, fs_path: str) -> str:
        if fs_path.startswith(self._root):
            rest = fs_path[len(self._root) :].lstrip("/")
            return f"{self.url}/{rest}" if rest else self.url
        return fs_path

    def _entry_of(self, fs_path: str, read: Callable[[int], None] | None = None) -> FileEntry:
        """Size and checksum of a stored file, read in chunks; ``read(bytes so far)``."""

        def scan() -> FileEntry:
            h = _fs.hasher()
            size = 0
            with _fs.open_from(self._fs, fs_path, self._url_of(fs_path), within=self._root) as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    if read is not None:
                        read(size)
            return FileEntry(size, _fs.digest(h))

        return self._call("read", fs_path, scan)

    def _exists(self, fs_path: str) -> bool:
        return bool(self._call("check", fs_path, self._fs.exists, fs_path))

    def _rm(self, fs_path: str, recursive: bool = False) -> None:
        def rm() -> None:
            with contextlib.suppress(FileNotFoundError):
                self._fs.rm(fs_path, recursive=recursive)

        self._call("delete", fs_path, rm)
        self._fs.invalidate_cache(self._root)

    def _listdir(self) -> list[tuple[int, str]]:
        """(number, name) of every directory under root that looks like a checkpoint."""
        self._fs.invalidate_cache(self._root)

        def ls() -> list[Any]:
            try:
                entries: list[Any] = self._fs.ls(self._root, detail=True)
            except FileNotFoundError:
                return []
            return entries

        found = []
        for entry in self._call("list", self._root, ls):
            if entry.get("type") != "directory":
                continue
            name = posixpath.basename(entry["name"].rstrip("/"))
            number = self._number_of(name)
            if number is not None:
                found.append((number, name))
        return sorted(found)

    def _manifest(self, number: int) -> Manifest | None:
        marker = posixpath.join(self._fs_dir(number), COMMITTED)

        def read() -> bytes | None:
            try:
                data = _fs.read_from(
                    self._fs, marker, self._url_of(marker), within=self._fs_dir(number)
                )
            except FileNotFoundError:
                return None
            return data

        data = self._call("read manifest", marker, read)
        if data is None:
            return None
        return Manifest.loads(data.decode("utf-8", "replace"), self._url_of(marker))

    # -- discovery ----------------------------------------------------------------

    def list(self) -> builtins.list[CheckpointInfo]:
        """Every committed checkpoint, oldest first.

        A directory whose ``COMMITTED`` is unreadable or malformed is skipped with a
        logged warning: it is neither listed (not a loadable checkpoint) nor reported
        as uncommitted (so cleanup never deletes what a person may want to repair).
        """

        def read(number: int) -> Manifest | None:
            try:
                return self._manifest(number)
            except StorageError as exc:
                _log.warning("skipping checkpoint: %s", exc)
                return None

        numbers = [number for number, _ in self._listdir()]
        if self._local or len(numbers) < 2:
            manifests = list(map(read, numbers))
        else:  # an object store answers many small reads at once, each in its own time
            workers = min(_PARALLEL_READS, len(numbers))
            with ThreadPoolExecutor(workers, thread_name_prefix="hyperstate-list") as pool:
                manifests = list(pool.map(read, numbers))
        return [
            CheckpointInfo(number, self.path(number), manifest)
            for number, manifest in zip(numbers, manifests, strict=True)
            if manifest is not None
        ]

    def get(self, number: int) -> CheckpointInfo | None:
        """Checkpoint ``number`` if it is committed, else None."""
        manifest = self._manifest(number)
        return None if manifest is None else CheckpointInfo(number, self.path(number), manifest)

    def latest(self) -> CheckpointInfo | None:
        """The committed checkpoint with the highest number, or None."""
        for number, _ in reversed(self._listdir()):
            try:
                info = self.get(number)
            except StorageError as exc:
                _log.warning("skipping checkpoint: %s", exc)
                continue
            if info is not None:
                return info
        return None

    def uncommitted(self) -> builtins.list[str]:
        """URLs of checkpoint directories without ``COMMITTED`` (crashed or in progress)."""
        out = []
        for number, _ in self._listdir():
            marker = posixpath.join(self._fs_dir(number), COMMITTED)
            if not self._exists(marker):
                out.append(self.path(number))
        return out

    def cleanup_uncommitted(self, keep_newer_than: int | None = None) -> builtins.list[str]:
        """Delete uncommitted directories; return their URLs.

        With ``keep_newer_than=n``, directories numbered above ``n`` are left alone (a
        save in progress, e.g. pass the newest committed number).
        """
        removed = []
        for number, _ in self._listdir():
            if keep_newer_than is not None and number > keep_newer_than:
                continue
            d = self._fs_dir(number)
            if self._exists(posixpath.join(d, COMMITTED)):
                continue
            self._rm(d, recursive=True)
            removed.append(self.path(number))
        return removed

    # -- saving -------------------------------------------------------------------

    def begin(self, number: int) -> PendingCheckpoint:
        """Start checkpoint ``number``: an empty, uncommitted directory.

        A leftover uncommitted directory of the same number (from a crash) is removed
        first. A committed one is never overwritten: that raises :class:`StorageError`.
        """
        d = self._fs_dir(number)
        if self._manifest(number) is not None:
            raise StorageError("begin", self.path(number), "checkpoint is already committed")
        if self._exists(d):
            self._rm(d, recursive=True)
        self._call("mkdir", d, self._fs.makedirs, d, True)
        if self._local:
            # The new directory's entry in root must be durable before COMMITTED.
            self._call("fsync", self._root, _fsync_path, self._root, True)
        return PendingCheckpoint(self, number)

    def join(self, number: int) -> PendingCheckpoint:
        """Write into checkpoint ``number`` begun elsewhere (another rank), without clearing.

        Each writer writes its files and sends the :class:`FileEntry` of each to the one
        that commits, which passes them to :meth:`PendingCheckpoint.record`.
        """
        d = self._fs_dir(number)
        self._call("mkdir", d, self._fs.makedirs, d, True)
        return PendingCheckpoint(self, number)

    def delete(self, number: int) -> None:
        """Delete checkpoint ``number``: ``COMMITTED`` first, so a half-deleted checkpoint
        is merely uncommitted, never a visible checkpoint with files missing."""
        d = self._fs_dir(number)
        self._rm(posixpath.join(d, COMMITTED))
        if self._local:
            self._call("fsync", d, _fsync_path, d, True)
        self._rm(d, recursive=True)

    def retain(
        self,
        policy: RetentionPolicy,
        metrics: Mapping[int, float] | Callable[[CheckpointInfo], float] | None = None,
        *,
        ignore: Collection[int] = (),
    ) -> builtins.list[int]:
        """Delete the committed checkpoints ``policy`` does not keep; return their numbers.

        ``metrics`` (for ``keep_best``) is a metric per checkpoint number, or a function
        of a :class:`CheckpointInfo`. Only committed checkpoints are deleted, and never
        the newest one. Checkpoints numbered in ``ignore`` (found corrupt on resume)
        neither count nor are deleted: they wait for a person to look at them.
        """
        infos = [i for i in self.list() if i.number not in ignore]
        numbers = [i.number for i in infos]
        values = {i.number: metrics(i) for i in infos} if callable(metrics) else metrics
        kept = set(policy.keep(numbers, values))
        if numbers:
            kept.add(max(numbers))
        doomed = [n for n in numbers if n not in kept]
        for number in doomed:
            self.delete(number)
        return doomed

    def set_aside(self, number: int) -> str:
        """Move committed checkpoint ``number`` out of the way, to ``corrupt-<name>-<time>``
        beside it (never deleted: a person may want to look at it); return its new URL.

        A run that found it corrupt on resume and reaches the same number again saves
        in its place.
        """
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        name = f"corrupt-{self.dirname(number)}-{stamp}"
        source, target = self._fs_dir(number), posixpath.join(self._root, name)
        self._call("move", source, self._fs.mv, source, target, True)
        self._fs.invalidate_cache(self._root)
        return self._url_of(target)

    # -- checking -----------------------------------------------------------------

    def quick_check(self, info: CheckpointInfo) -> builtins.list[Problem]:
        """The cheap part of :meth:`verify`: every file ``COMMITTED`` lists is there with
        its size (one listing, nothing read). Resume runs it on each candidate; the
        checksums of the blob bytes are checked as they are loaded."""
        d = self._dir_of(info)
        self._fs.invalidate_cache(d)

        def sizes() -> dict[str, int]:
            try:
                found: dict[str, Any] = self._fs.find(d, detail=True)
            except FileNotFoundError:
                return {}
            base = d.rstrip("/") + "/"
            return {
                p[len(base) :]: int(e.get("size") or 0)
                for p, e in found.items()
                if p.startswith(base)
            }

        present = self._call("list", d, sizes)
        problems: builtins.list[Problem] = []
        for name, want in sorted(info.manifest.files.items()):
            url = f"{info.path}/{name}"
            if name not in present:
                problems.append(Problem(name, "missing", f"{url}: missing (listed in COMMITTED)"))
            elif present[name] != want.size and not _is_text(name):
                msg = f"{url}: corrupted: expected {want.size} bytes, found {present[name]}"
                problems.append(Problem(name, "corrupted", msg))
        return problems

    def verify(
        self,
        info: CheckpointInfo | int,
        *,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> builtins.list[Problem]:
        """Check every file of a committed checkpoint against its ``COMMITTED``.

        Returns the problems found (empty when all is well). Text files (``.ron``) that
        differ are reported as ``"edited"`` (hand edits are allowed); other files that
        differ as ``"corrupted"``.

        Args:
            info: a checkpoint, or its number in this store. The directory checked is
                the one ``info.path`` names, which must be this store's root or lie
                under it: a store opened on one checkpoint directory, whatever its
                name, verifies that checkpoint.
            progress: called as the files that ``COMMITTED`` lists are checked, in
                order, as ``progress(name, done, size)``: ``done`` bytes of file
                ``name`` checked of the ``size`` that ``COMMITTED`` gives it. For each
                file ``done`` grows and ends at ``size`` exactly once, on the file's
                last call (a missing file, or one of another size, ends there too), so
                the calls add up to the manifest's total, as a progress bar needs.

        >>> import tempfile
        >>> store = CheckpointStore(tempfile.mkdtemp())
        >>> pending = store.begin(1)
        >>> _ = pending.write_file("state.ron", b"State(step: 1)")
        >>> seen = []
        >>> store.verify(pending.commit(), progress=lambda *call: seen.append(call))
        []
        >>> seen
        [('state.ron', 14, 14)]
        """
        if isinstance(info, int):
            got = self.get(info)
            if got is None:
                raise StorageError("verify", self.path(info), "checkpoint is not committed")
            info = got
        d = self._dir_of(info)
        problems: builtins.list[Problem] = []
        present = set(self._files(d))
        for name, want in sorted(info.manifest.files.items()):
            url = f"{info.path}/{name}"
            report = _FileProgress(progress, name, want.size) if progress is not None else None
            try:
                have = self._entry_of(posixpath.join(d, name), report) if name in present else None
            except StorageError as e:  # not a regular file, a link out of the checkpoint
                problems.append(Problem(name, "corrupted", f"{url}: corrupted: {e.reason}"))
                continue
            if report is not None:
                report(want.size)
            if have is None:
                problems.append(Problem(name, "missing", f"{url}: missing (listed in COMMITTED)"))
            elif have != want and _is_text(name):
                msg = f"{url}: edited since commit ({want.size} -> {have.size} bytes)"
                problems.append(Problem(name, "edited", msg))
            elif have != want:
                msg = (
                    f"{url}: corrupted: expected {want.size} bytes {want.checksum}, "
                    f"found {have.size} bytes {have.checksum}"
                )
                problems.append(Problem(name, "corrupted", msg))
        for name in sorted(present - set(info.manifest.files) - {COMMITTED}):
            msg = f"{info.path}/{name}: not listed in COMMITTED"
            problems.append(Problem(name, "unexpected", msg))
        return problems

    def _dir_of(self, info: CheckpointInfo) -> str:
        """The path on this store's filesystem of the directory ``info.path`` names."""
        if info.path == self.url:
            return self._root
        base = self.url.rstrip("/") + "/"
        if not info.path.startswith(base):
            raise ValueError(f"checkpoint {info.path} is not under this store ({self.url})")
        return posixpath.join(self._root, info.path[len(base) :])

    def _sizes(self, fs_dir: str) -> dict[str, int | None]:
        """Every file under a directory (relative, ``/``-separated), with its size as the
        listing gives it (None where it gives none)."""
        self._fs.invalidate_cache(fs_dir)

        def find() -> dict[str, Any]:
            try:
                found: dict[str, Any] = self._fs.find(fs_dir, detail=True)
            except FileNotFoundError:
                return {}
            return found

        base = fs_dir.rstrip("/") + "/"
        sizes: dict[str, int | None] = {}
        for p, info in self._call("list", fs_dir, find).items():
            if p.startswith(base):
                size = info.get("size") if isinstance(info, dict) else None
                sizes[p[len(base) :]] = size if type(size) is int else None
        return sizes

    def _files(self, fs_dir: str) -> builtins.list[str]:
        """Paths (relative, ``/``-separated) of every file under a directory."""
        self._fs.invalidate_cache(fs_dir)

        def find() -> builtins.list[str]:
            try:
                found: builtins.list[str] = self._fs.find(fs_dir)
            except FileNotFoundError:
                return []
            return found

        base = fs_dir.rstrip("/") + "/"
        return [p[len(base) :] for p in self._call("list", fs_dir, find) if p.startswith(base)]


class _FileProgress:
    """Passes one file's bytes read to a ``verify`` progress hook: growing, at most its size."""

    def __init__(self, progress: Callable[[str, int, int], None], name: str, size: int) -> None:
        self.progress = progress
        self.name = name
        self.size = size
        self.done = -1  # so that an empty file is reported once, at 0 of 0

    def __call__(self, nbytes: int) -> None:
        done = min(nbytes, self.size)
        if done > self.done:  # a retried read starts again at 0: not reported twice
            self.done = done
            self.progress(self.name, done, self.size)


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.errno is not None and not str(exc):
        text = errno.errorcode.get(exc.errno, str(exc.errno))
    return text


class PendingCheckpoint:
    """An uncommitted checkpoint directory being written; see :meth:`CheckpointStore.begin`.

    Files are added with :meth:`write_file` (written here) or :meth:`record` (written by
    someone else: a blob writer, another rank); :meth:`commit` then writes ``COMMITTED``
    last. Safe to use from several threads.

    ``name`` is the directory under the store's root, by default
    :meth:`CheckpointStore.dirname` of ``number``; another name serves a checkpoint
    directory that its writer named (``torch.distributed.checkpoint``'s ``checkpoint_id``).
    """

    def __init__(self, store: CheckpointStore, number: int, *, name: str | None = None) -> None:
        self.store = store
        self.number = number
        self.name = store.dirname(number) if name is None else name
        self._entries: dict[str, FileEntry] = {}
        self._synced: set[str] = set()  # written here, so already fsync'd
        self._state: Literal["open", "committed", "aborted"] = "open"
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PendingCheckpoint({self.path!r}, {self._state})"

    @property
    def path(self) -> str:
        """URL (or local path) of the checkpoint directory."""
        return f"{self.store.url}/{self.name}"

    @property
    def entries(self) -> dict[str, FileEntry]:
        """The files recorded so far (a copy), e.g. to report to the committing rank."""
        with self._lock:
            return dict(self._entries)

    @property
    def _fs_dir(self) -> str:
        return posixpath.join(self.store._root, self.name)

    def _fs_path(self, relpath: str) -> str:
        try:
            _check_relpath(relpath)
        except ValueError as exc:
            raise StorageError("write", f"{self.path}/{relpath}", str(exc)) from None
        return posixpath.join(self._fs_dir, relpath)

    def _check_open(self, relpath: str) -> None:
        if self._state != "open":
            raise StorageError("write", f"{self.path}/{relpath}", f"checkpoint is {self._state}")

    def write_file(self, relpath: str, data: bytes | bytearray | memoryview) -> FileEntry:
        """Write a file of the checkpoint and record it; return its entry.

        Local disk: written and fsync'd. Remote: one PUT (retried on transient errors).
        """
        self._check_open(relpath)
        target = self._fs_path(relpath)
        store = self.store
        fs = store._fs
        parent = posixpath.dirname(target)
        if store._local:

            def write_local() -> None:
                os.makedirs(parent, exist_ok=True)
                with open(target, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())

            store._call("write", target, write_local)
        else:
            store._call("mkdir", parent, fs.makedirs, parent, True)
            store._call("write", target, fs.pipe_file, target, bytes(data))
        entry = FileEntry(len(memoryview(data).cast("B")), checksum(data))
        with self._lock:
            self._entries[relpath] = entry
            self._synced.add(relpath)
        return entry

    def record(
        self,
        relpath: str,
        *,
        size: int | None = None,
        checksum: str | None = None,
        synced: bool = False,
    ) -> FileEntry:
        """Add a file written by someone else to the manifest; return its entry.

        With both ``size`` and ``checksum`` given (a rank reporting its own files) the file
        is not read now; otherwise it is read to compute them. ``commit`` checks that every
        recorded file exists with its recorded size, and fsyncs it on local disk unless
        ``synced`` (its writer fsync'd it and its directory: at 4096 ranks, fsyncing every
        file again took rank 0 seconds).
        """
        self._check_open(relpath)
        target = self._fs_path(relpath)
        if size is not None and checksum is not None:
            entry = FileEntry(size, checksum)
        else:
            entry = self.store._entry_of(target)
            if size is not None and size != entry.size:
                raise StorageError(
                    "record", self.store._url_of(target), f"size {entry.size}, reported {size}"
                )
        with self._lock:
            self._entries[relpath] = entry
            if synced:
                self._synced.add(relpath)
        return entry

    def commit(self, run: RunInfo | None = None) -> CheckpointInfo:
        """Make the checkpoint visible: check and sync every file, then write ``COMMITTED``
        (with ``run``, the metadata of the run that made it, if given).

        Raises :class:`StorageError` (and writes no ``COMMITTED``) when a recorded file is
        missing or has another size, or a file in the directory was not recorded.
        """
        store = self.store
        d = self._fs_dir
        with self._lock:
            self._check_open(COMMITTED)
            entries = dict(self._entries)
            synced = set(self._synced)
        # One listing gives every size: a request per 1000 files on an object store, not a
        # HEAD per file (4096 of them one after the other, at 4096 ranks).
        present = store._sizes(d)
        stray = sorted(set(present) - set(entries))
        if stray:
            raise StorageError("commit", self.path, f"files not recorded: {', '.join(stray)}")
        for name, entry in sorted(entries.items()):
            p = posixpath.join(d, name)
            if name not in present:
                raise StorageError("commit", store._url_of(p), "recorded file is missing")
            size = present[name]
            if size is None:  # a listing without sizes
                size = int(store._call("stat", p, store._fs.size, p))
            if size != entry.size:
                msg = f"recorded size {entry.size}, found {size}"
                raise StorageError("commit", store._url_of(p), msg)
        if store._local:
            for name in sorted(set(entries) - synced):
                p = posixpath.join(d, name)
                store._call("fsync", p, _fsync_path, p)
            dirs = {posixpath.dirname(posixpath.join(d, n)) for n in entries} | {d}
            for sub in sorted(dirs, key=len, reverse=True):
                store._call("fsync", sub, _fsync_path, sub, True)
            store._call("fsync", store._root, _fsync_path, store._root, True)
        manifest = Manifest(number=self.number, files=entries, created=_now(), run=run)
        marker = posixpath.join(d, COMMITTED)
        text = manifest.dumps().encode("utf-8")
        if store._local:
            store._call("commit", marker, _fs.write_atomic, marker, text)
        else:
            store._call("commit", marker, store._fs.pipe_file, marker, text)
        store._fs.invalidate_cache(store._root)
        with self._lock:
            self._state = "committed"
        return CheckpointInfo(self.number, self.path, manifest)

    def abort(self) -> None:
        """Remove the uncommitted directory and everything in it."""
        with self._lock:
            if self._state == "committed":
                raise StorageError("abort", self.path, "checkpoint is already committed")
            self._state = "aborted"
        self.store._rm(self._fs_dir, recursive=True)


def checkpoint_at(url: str) -> CheckpointInfo | None:
    """The committed checkpoint whose directory is ``url``, or None when ``url`` holds no
    ``COMMITTED`` (not a checkpoint directory: a run directory, a file, nothing).

    Raises:
        StorageError: ``COMMITTED`` is there but malformed.
    """
    fs, fs_path = _fs.url_to_fs(url)
    marker = f"{fs_path.rstrip('/')}/{COMMITTED}"
    where = f"{url.rstrip('/')}/{COMMITTED}"
    try:
        data = _fs.read_from(fs, marker, where, within=fs_path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise StorageError("read manifest", where, _reason(exc)) from exc
    manifest = Manifest.loads(data.decode("utf-8", "replace"), where)
    return CheckpointInfo(manifest.number, url.rstrip("/") or url, manifest)


def field_metric(tree: Any, field: str) -> float:
    """The number at dotted ``field`` (``"eval.loss"``) of a state's value tree, NaN when
    there is none: what ``keep_best`` ranks checkpoints by. A 0-d tensor counts too.

    >>> field_metric(ron.loads("State(eval: (loss: 0.5))"), "eval.loss")
    0.5
    """
    node: Any = tree
    for name in field.split("."):
        if isinstance(node, ron.Struct):
            node = node.fields.get(name)
        elif isinstance(node, dict):
            node = node.get(name)
        else:
            return math.nan
    if codec.is_record(node) and "value" in node.fields:
        node = node.fields["value"]  # a 0-d tensor written inline
    if isinstance(node, bool) or not isinstance(node, int | float):
        return math.nan
    return float(node)


def read_metric(info: CheckpointInfo, field: str) -> float:
    """:func:`field_metric` of checkpoint ``info``'s ``state.ron`` (NaN if unreadable)."""
    url = f"{info.path}/{STATE_FILE}"
    try:
        tree = ron.loads(_fs.read_text(url), path=url)
    except (HyperstateError, OSError, UnicodeDecodeError):
        return math.nan
    return field_metric(tree, field)
