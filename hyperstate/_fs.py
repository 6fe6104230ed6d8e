"""File primitives over fsspec, each in one place: read a file, write one atomically,
fsync a directory, keep a relative path inside its folder, split a URL, checksum bytes.

Knows nothing of hyperstate's formats. fsspec is imported on first use so that
``import hyperstate`` stays fast.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from typing import IO, Any

import xxhash

from hyperstate.errors import ParseError, StorageError

__all__ = [
    "CHECKSUM_PREFIX",
    "MAX_TEXT_BYTES",
    "check_relpath",
    "decode_text",
    "checksum",
    "digest",
    "fsync_dir",
    "hasher",
    "is_checksum",
    "is_local",
    "open_from",
    "open_regular",
    "read_bytes",
    "read_from",
    "read_text",
    "split_url",
    "url_to_fs",
    "write_atomic",
]

MAX_TEXT_BYTES = 1 << 30
"""The largest text file (``state.ron``, ``config.ron``, ``COMMITTED``, an edit request)
hyperstate reads: 1 GiB, far above the text of any real state (tensors are in blobs)."""

CHECKSUM_PREFIX = "xxh3-64:"
"""How every checksum hyperstate records starts: ``xxh3-64:<16 hex digits>``."""

_CHECKSUM_RE = re.compile(r"xxh3-64:[0-9a-f]{16}")
_DRIVE_RE = re.compile(r"[A-Za-z]:")


def checksum(data: memoryview | bytes | bytearray) -> str:
    """The checksum of some bytes as recorded in refs and manifests.

    >>> checksum(b"")
    'xxh3-64:2d06800538d394c2'
    """
    return CHECKSUM_PREFIX + xxhash.xxh3_64_hexdigest(data)


def hasher() -> Any:
    """A streaming hasher of the same checksum: ``update(bytes)``, then :func:`digest`."""
    return xxhash.xxh3_64()


def digest(h: Any) -> str:
    """The recorded form of a :func:`hasher`'s checksum."""
    return CHECKSUM_PREFIX + str(h.hexdigest())


def is_checksum(text: object) -> bool:
    """Whether ``text`` is a checksum in the recorded form."""
    return isinstance(text, str) and _CHECKSUM_RE.fullmatch(text) is not None


def check_relpath(relpath: object) -> str:
    """``relpath`` if it names a file inside a folder: relative, ``/``-separated, no ``..``.

    Raises ``ValueError`` saying what is wrong otherwise (an absolute path, a URL, a
    backslash or NUL, an empty, ``.`` or ``..`` segment).

    >>> check_relpath("blobs/rank-00000.safetensors")
    'blobs/rank-00000.safetensors'
    """
    if not isinstance(relpath, str) or not relpath:
        raise ValueError(f"expected a relative file path, found {relpath!r}")
    if "\\" in relpath or "\x00" in relpath:
        raise ValueError(
            f"expected a path with '/' separators, found a backslash or NUL in {relpath!r}"
        )
    if (
        relpath.startswith("/")
        or os.path.isabs(relpath)
        or _DRIVE_RE.match(relpath)
        or "://" in relpath
    ):
        raise ValueError(f"expected a path relative to the checkpoint directory, found {relpath!r}")
    if any(part in ("", ".", "..") for part in relpath.split("/")):
        raise ValueError(
            f"expected a path that stays inside the checkpoint directory, found an empty, "
            f"'.' or '..' segment in {relpath!r}"
        )
    return relpath


def split_url(url: str) -> tuple[str, str]:
    """(folder, file name) of a local path or URL; a local folder is made absolute.

    >>> split_url("s3://bucket/run/state.ron")
    ('s3://bucket/run', 'state.ron')
    """
    if "://" in url:
        folder, _, name = url.rstrip("/").rpartition("/")
        return folder, name
    absolute = os.path.abspath(url)
    return os.path.dirname(absolute), os.path.basename(absolute)


def url_to_fs(path: str | os.PathLike[str]) -> tuple[Any, str]:
    """The fsspec filesystem and the path within it for a local path or URL."""
    import fsspec.core

    fs, fs_path = fsspec.core.url_to_fs(os.fspath(path))
    return fs, fs_path


def is_local(fs: Any) -> bool:
    """Whether ``fs`` is the local disk (where we fsync and rename ourselves)."""
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(fs_path: str, url: str, *, within: str | None = None) -> IO[bytes]:
    """Open a local file for reading if it is a regular file (inside local folder
    ``within``, after following links, when given).

    A FIFO, a device or a socket is refused without blocking on it (it is opened
    non-blocking and checked before anything is read), and so is a link that leads out
    of ``within``. Raises ``FileNotFoundError`` when there is nothing at ``fs_path``, and
    :class:`~hyperstate.errors.StorageError` naming ``url`` otherwise.
    """
    if within is not None:
        root, real = os.path.realpath(within), os.path.realpath(fs_path)
        if os.path.commonpath([root, real]) != root:
            reason = f"expected a file inside {root}, found a link to {real}"
            raise StorageError("read", url, reason)
    try:
        fd = os.open(fs_path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except IsADirectoryError:
        raise StorageError("read", url, "expected a regular file, found a directory") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise StorageError("read", url, f"expected a regular file, found {_kind(mode)}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(
    path: str | os.PathLike[str], *, within: str | None = None, limit: int = MAX_TEXT_BYTES
) -> bytes:
    """The whole content of a file at a local path or fsspec URL, of at most ``limit``
    bytes; a local one must be a regular file, inside folder ``within`` when given (see
    :func:`open_regular`).

    Raises ``FileNotFoundError`` when there is no such file, and
    :class:`~hyperstate.errors.StorageError` for a special file, a link out of
    ``within``, or a file over ``limit``.
    """
    url = os.fspath(path)
    fs, fs_path = url_to_fs(url)
    root = url_to_fs(within)[1] if within is not None else None
    return read_from(fs, fs_path, url, within=root, limit=limit)


def open_from(fs: Any, fs_path: str, url: str, *, within: str | None = None) -> IO[bytes]:
    """``fs_path`` on the fsspec filesystem ``fs``, open for reading; a local file as by
    :func:`open_regular`."""
    if is_local(fs):
        return open_regular(fs_path, url, within=within)
    try:
        f: IO[bytes] = fs.open(fs_path, "rb")
    except IsADirectoryError:
        raise StorageError("read", url, "expected a regular file, found a directory") from None
    return f


def read_from(
    fs: Any, fs_path: str, url: str, *, within: str | None = None, limit: int = MAX_TEXT_BYTES
) -> bytes:
    """:func:`read_bytes` of ``fs_path`` on the fsspec filesystem ``fs`` (``within`` is a
    path on it too); errors name ``url``."""
    with open_from(fs, fs_path, url, within=within) as f:
        data: bytes = f.read(limit + 1)
    if len(data) > limit:
        raise StorageError("read", url, f"expected a text file of at most {limit} bytes")
    return data


def decode_text(data: bytes, url: str) -> str:
    """``data`` as UTF-8 text; bytes that are not are a
    :class:`~hyperstate.errors.ParseError` at their line and column in ``url``."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        start = data.rfind(b"\n", 0, e.start) + 1
        end = data.find(b"\n", e.start)
        line = data.count(b"\n", 0, e.start) + 1
        col = len(data[start : e.start].decode("utf-8", "replace")) + 1
        source = data[start : end if end >= 0 else len(data)].decode("utf-8", "replace")
        found = data[e.start : e.end].hex(" ")
        msg = f"expected UTF-8 text, found the byte(s) {found} (byte offset {e.start})"
        raise ParseError(msg, url, line, col, source) from None


def read_text(
    path: str | os.PathLike[str], *, within: str | None = None, limit: int = MAX_TEXT_BYTES
) -> str:
    """A UTF-8 text file at a local path or fsspec URL, read as by :func:`read_bytes` and
    decoded by :func:`decode_text`."""
    return decode_text(read_bytes(path, within=within, limit=limit), os.fspath(path))


def write_atomic(path: str | os.PathLike[str], data: bytes, *more: bytes) -> None:
    """Write ``data`` (then ``more``) so that readers see the old file or the whole new one.

    On local disk: a temporary file in the same directory, fsync, rename over the
    target, fsync the directory. On object stores a single PUT is already atomic.
    ``more`` saves the caller a copy of a large ``data`` to append a few bytes.
    """
    fs, fs_path = url_to_fs(path)
    if not is_local(fs):
        parent = fs._parent(fs_path)
        if parent:
            fs.makedirs(parent, exist_ok=True)
        fs.pipe_file(fs_path, b"".join((data, *more)) if more else data)
        return
    directory = os.path.dirname(fs_path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(fs_path)}.tmp-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            for chunk in more:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, fs_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def fsync_dir(directory: str) -> None:
    """Make a local directory's entries (a new or renamed file) durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
